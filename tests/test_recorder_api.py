"""The Recorder is public API: the README's own-loop example runs as shown and needs five added lines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sftreport.store import read_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_loop.py"


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- example: examples/own_loop.py -->\s*```python\n(.*?)```", text, re.S)
    assert m, "the README shows examples/own_loop.py"
    return m.group(1)


def test_readme_shows_the_example_file_verbatim_with_at_most_five_added_lines():
    code = EXAMPLE.read_text()
    body = code.split('"""', 2)[2].lstrip("\n")  # the file without its docstring
    assert _readme_block() == body
    assert sum(1 for line in body.splitlines() if line.rstrip().endswith("# sftreport")) <= 5


@pytest.mark.slow
def test_the_example_runs_and_records_every_epoch(tmp_path: Path):
    r = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    run = read_run(tmp_path / "runs" / "own-loop")
    assert [e.epoch for e in run.epochs] == [0, 1, 2]
    assert run.info.status == "completed"
    last = run.epochs[-1]
    assert last.weights and last.gradients and last.activations and last.features and last.val
    assert (tmp_path / "own-loop.html").stat().st_size > 10_000
