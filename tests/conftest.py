"""Shared test settings. Unit tests need no Docker daemon; see tests/docker/conftest.py for the rest."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
