"""The layers of docs/architecture.md stay one-way: core (pure torch) <- verl adapters <- recipe <- launch.

An import from a higher layer would tie, e.g., the framework-free core to verl or the recipe to the
launch tooling; this test reads every module's imports (statically, nothing is imported).
"""

from __future__ import annotations

import ast

import pytest

from helpers.paths import REPO_ROOT

# package (path prefix) -> top-level names its modules must not import
FORBIDDEN = {
    "verl_ext/core": ("verl", "verl_ext.workers", "verl_ext.platform", "verl_ext.rollout", "recipe", "launch"),
    "verl_ext": ("recipe", "launch"),
    "recipe": ("launch",),
}


def _imports(path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_higher_layer(package):
    bad = []
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            for top in FORBIDDEN[package]:
                if name == top or name.startswith(top + "."):
                    bad.append(f"{path.relative_to(REPO_ROOT)}:{line}: imports {name}")
    assert not bad, f"{package} must not import {FORBIDDEN[package]}:\n" + "\n".join(bad)
