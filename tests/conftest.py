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
