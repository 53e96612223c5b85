"""pytest plugin for mutation runs (tests/benchmarks/mutation.sh; loaded by [tool.mutmut] in pyproject.toml).

mutmut hands pytest the tests that cover a mutant as an unordered set of node ids; pytest would run them in
that order, setting a module-scoped fixture up again each time the run comes back to its module (and
test_findings.py's `plain` run directory cannot be built twice). This puts them back in the order the files
define them, as a plain pytest run has them."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: (str(item.path), item.location[1] or 0))  # stable: parameters keep their order
