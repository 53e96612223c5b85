"""pytest plugin for mutation runs (tests/benchmarks/mutation.sh; loaded through [tool.mutmut] in pyproject.toml).

- Order: mutmut hands pytest the tests that cover a mutant as an unordered set of node ids, and pytest runs
  them in that order, setting a module-scoped fixture up again each time the run comes back to its module
  (test_findings.py's `plain` run directory cannot be built twice). They are put back in the order the files
  define them, as a plain pytest run has them.
- Warm-up: an optimizer's first step imports torch._dynamo (1.2 s). Done once here, in the process mutmut
  forks its workers from, every worker starts with it instead of paying it per mutant. (One thread: the
  mutation script sets OMP_NUM_THREADS=1, so no thread pool exists to be broken by the fork.)
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:  # the render-stage tests alone need no torch
        return
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).step()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: (str(item.path), item.location[1] or 0))  # stable: parameters keep their order
