"""Shared pytest set-up for the whole suite.

The test tree mirrors the source tree (``tests/core`` for ``verl_ext/core``, ``tests/workers`` for
``verl_ext/workers``, ``tests/launch`` for ``launch``, ...). Helpers shared by several test files
live in ``tests/helpers`` and are imported as ``helpers.<module>``; fixtures shared by several files
are defined here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers.paths import FIXTURES_DIR, REPO_ROOT  # noqa: E402


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root (where ``pyproject.toml`` is)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/fixtures``: small hand-written data and log files."""
    return FIXTURES_DIR


@pytest.fixture
def free_port():
    """A function returning a free loopback TCP port (for process groups and Ray heads)."""
    from verl_ext.testing.cpu_worker import free_port as _free_port

    return _free_port


@pytest.fixture(scope="session")
def embedded_assets_dir(tmp_path_factory) -> str:
    """One ``gxpo_embedded.dir`` for every end-to-end test of the session: the first run builds the
    embedded task's assets (data, tokenizer, warm-started model) there, later runs reuse them (each
    asset's manifest is checked), so the supervised warm start is paid once per test session."""
    return str(tmp_path_factory.mktemp("embedded"))
