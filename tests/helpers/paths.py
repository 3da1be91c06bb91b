"""Where things are, for tests that run the project's commands or read its files."""

from __future__ import annotations

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
FIXTURES_DIR = TESTS_DIR / "fixtures"
SCRIPTS_DIR = TESTS_DIR / "scripts"
CONF_DIR = REPO_ROOT / "conf"
