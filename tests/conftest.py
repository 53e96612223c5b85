"""Shared fixtures: tiny datasets in their real on-disk formats (helpers in support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import make_cifar10, make_imagefolder


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    return make_cifar10(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("folder"))
