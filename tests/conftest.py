"""Shared fixtures: tiny datasets in their real on-disk formats (helpers in support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import make_cifar10, make_imagefolder


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the golden files under tests/golden/ from what the code produces now",
    )


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    return make_cifar10(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("folder"))


# --------------------------------------------------------------------------- the dense tasks' default runs

DENSE_QUICK = ["--epochs", "1", "--max-steps-per-epoch", "2", "--quiet"]


def _dense_run(tmp_path_factory, task: str, probe: str) -> Path:
    """`sftreport run --task TASK` in a fresh process (one thread: the two cores are shared), its run
    directory `run/` and reports r.html, r.pdf and r.md; once per session, read by the task's tests and by
    the browser's (tests/report/test_browser_dense.py)."""
    from support import cli

    out = tmp_path_factory.mktemp(task)
    r = cli(
        "run", "--task", task, *DENSE_QUICK, "--probe-size", probe, "--run-dir", "run",
        "--out", "r.html", "--out", "r.pdf", "--out", "r.md", cwd=out, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def segment_cli_run(tmp_path_factory) -> Path:
    return _dense_run(tmp_path_factory, "segment", "16")


@pytest.fixture(scope="session")
def detect_cli_run(tmp_path_factory) -> Path:
    return _dense_run(tmp_path_factory, "detect", "8")
