"""verl's real engine-based actor update on CPU: platform plugin, TrainingWorker, torchrun, tiny model."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.proc_env import clean_env, one_torch_thread
from helpers.paths import REPO_ROOT

ROOT = REPO_ROOT
SCRIPTS = ROOT / "tests" / "scripts"

# One actor update, the same in-process and under torchrun: 4 prompts x 2 responses, one mini-batch
# of 8 sequences, micro-batches of 2 per rank.
STEP = dict(mini_batch_size=4, micro_batch_size_per_gpu=2, rollout_n=2, lr=1e-3)
BATCH = dict(num_prompts=4, rollout_n=2, seed=0)


@pytest.fixture(autouse=True)
def _single_thread():
    with one_torch_thread():
        yield





def _build_actor(model_dir: str, **kwargs):
    """build_cpu_actor_worker, without leaving verl's exported RANK/MASTER_PORT/... in os.environ."""
    from verl_ext.testing.cpu_worker import build_cpu_actor_worker

    saved_env = dict(os.environ)
    try:
        return build_cpu_actor_worker(model_dir, **kwargs)
    finally:
        for k in set(os.environ) - set(saved_env):
            del os.environ[k]
        os.environ.update(saved_env)


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from verl_ext.models.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny_cpu") / "qwen2"))


@pytest.fixture(scope="session")
def cpu_platform():
    from verl_ext.platform import register_cpu_platform

    if not register_cpu_platform():
        pytest.skip("an accelerator is present (set VERL_EXT_FORCE_CPU=1 to run the CPU path anyway)")
    return True


@pytest.fixture(scope="session")
def single_process_step(cpu_platform, tiny_model_dir):
    """Build the real TrainingWorker in this process (world of one) and run one train_mini_batch."""
    from verl_ext.testing.cpu_worker import make_actor_update_batch, max_abs_change, parameter_snapshot

    with one_torch_thread():
        actor = _build_actor(tiny_model_dir, **STEP)
        td = make_actor_update_batch(actor, **BATCH)
        before = parameter_snapshot(actor.module)
        out = actor.worker.train_mini_batch(td)
    return {
        "actor": actor,
        "metrics": out["metrics"],
        "change": max_abs_change(before, parameter_snapshot(actor.module)),
        "batch": td,
    }


# --------------------------------------------------------------------------------------------- (a)


def test_entry_point_and_in_process_registration(cpu_platform):
    from importlib.metadata import entry_points

    import verl  # noqa: F401
    from verl.plugin.platform import PlatformRegistry, get_platform
    from verl.utils.device import get_device_id, get_device_name, get_nccl_backend, get_resource_name, get_torch_device

    from verl_ext.platform import get_platform_class, register_cpu_platform

    eps = {ep.name: ep.value for ep in entry_points(group="verl.plugins")}
    assert eps.get("gxpo") == "verl_ext.plugins"
    assert "verl_ext.plugins" in sys.modules  # loaded by `import verl`

    assert register_cpu_platform() is True  # idempotent
    assert isinstance(get_platform(), get_platform_class())
    assert PlatformRegistry.get("cpu") is get_platform_class()
    assert (get_device_name(), get_nccl_backend(), get_resource_name(), get_device_id()) == ("cpu", "gloo", "GPU", "cpu")
    dev = get_torch_device()
    assert dev.max_memory_allocated() == 0 and dev.current_device() == "cpu"
    dev.empty_cache()
    dev.synchronize()

    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    assert issubclass(EngineRegistry.get_engine_cls("language_model", "fsdp2"), FSDPEngineWithLMHead)


def test_bare_import_verl_registers_and_unregisters():
    """In a fresh interpreter: `import verl` alone activates the platform; hooks, patch and undo."""
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(SCRIPTS / "check_cpu_plugin.py")],
        capture_output=True, text=True, timeout=180, env=clean_env(), cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _last_json(proc.stdout)
    if not out["active"]:
        pytest.skip("an accelerator is present")
    assert out["plugin_loaded"] and out["device"] == "cpu" and out["platform_cls"] == "PlatformCPU"
    assert (out["device_id"], out["backend"], out["resource"]) == ("cpu", "gloo", "GPU")
    assert out["registered"] and out["lazy"]
    assert all(out["after_imports"][k] for k in ("lm_fsdp2", "lm_fsdp", "value_fsdp2", "pg_patched",
                                                 "pg_global_patched", "engine_workers_bound", "ckpt_engine_bound"))
    assert out["engine_cls"] == "CPUFSDPEngineWithLMHead" and out["register_again"] and out["engines_once"]
    undone = out["after_unregister"]
    assert not any(undone[k] for k in ("lm_fsdp2", "lm_fsdp", "value_fsdp2", "pg_patched", "pg_global_patched", "registered"))
    assert undone["engine_workers_bound"] and undone["ckpt_engine_bound"] and undone["device"] != "cpu"
    assert out["reregister"] and all(v for k, v in out["after_reregister"].items() if k != "device")
    assert out["after_reregister"]["device"] == "cpu"


def test_other_platform_requested_leaves_verl_alone():
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c",
         "import json, verl, verl_ext.platform as p; from verl.utils.device import get_device_name;"
         "print(json.dumps([p.is_active(), p.should_activate(), get_device_name()]))"],
        capture_output=True, text=True, timeout=120, env=clean_env(VERL_PLATFORM="nvidia"), cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _last_json(proc.stdout) == [False, False, "cuda"]


def test_process_group_backend_is_plain_gloo(single_process_step):
    assert torch.distributed.is_initialized()
    assert torch.distributed.get_backend() == "gloo"


# --------------------------------------------------------------------------------------------- (b)


def test_training_worker_update_changes_params(single_process_step):
    from verl.workers.engine_workers import TrainingWorker

    actor = single_process_step["actor"]
    m = single_process_step["metrics"]
    assert type(actor.worker) is TrainingWorker
    assert type(actor.actor_config).__name__ == "FSDPActorConfig"
    assert actor.actor_config.strategy == "fsdp2" and actor.training_config.engine_config.strategy == "fsdp2"
    assert actor.model_config.hf_config._attn_implementation == "sdpa"
    assert actor.loss_fn.keywords["config"] is actor.actor_config
    assert len(m["grad_norm"]) == 1 and math.isfinite(m["grad_norm"][0]) and m["grad_norm"][0] > 0
    assert math.isfinite(m["loss"][0])
    # Adam's first step moves parameters by ~lr
    assert 1e-4 < single_process_step["change"] < 1e-2


def test_direct_train_batch(single_process_step):
    """TrainingWorker.train_batch itself (what a GXPO subclass overrides), on one whole mini-batch."""
    from verl_ext.testing.cpu_worker import as_train_batch, make_actor_update_batch, max_abs_change, parameter_snapshot

    actor = single_process_step["actor"]
    td = as_train_batch(make_actor_update_batch(actor, num_prompts=4, rollout_n=2, seed=1), actor.worker)
    before = parameter_snapshot(actor.module)
    out = actor.worker.train_batch(td)
    metrics = out["metrics"]
    assert math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    assert "actor/pg_loss" in metrics and math.isfinite(metrics["loss"])
    assert max_abs_change(before, parameter_snapshot(actor.module)) > 1e-4


def test_builder_accepts_training_worker_subclass(cpu_platform, tiny_model_dir):
    """The hook a multi-pass update uses: a TrainingWorker subclass overriding train_batch."""
    from verl.workers.engine_workers import TrainingWorker

    from verl_ext.testing.cpu_worker import make_actor_update_batch

    class CountingWorker(TrainingWorker):
        calls = 0

        def train_batch(self, data):
            type(self).calls += 1
            return super().train_batch(data)

    actor = _build_actor(tiny_model_dir, worker_cls=CountingWorker, **{**STEP, "mini_batch_size": 2})
    assert type(actor.worker) is CountingWorker
    out = actor.worker.train_mini_batch(make_actor_update_batch(actor, **BATCH))
    assert CountingWorker.calls == 2  # 8 sequences, mini-batches of 2 prompts x 2 responses
    assert len(out["metrics"]["grad_norm"]) == 2


def test_lora_worker_trains_only_adapters(cpu_platform, tiny_model_dir):
    from verl_ext.testing.cpu_worker import make_actor_update_batch, parameter_snapshot

    actor = _build_actor(tiny_model_dir, lora_rank=4, **STEP)
    trainable = parameter_snapshot(actor.module)
    frozen_before = {k: v for k, v in parameter_snapshot(actor.module, only_trainable=False).items() if k not in trainable}
    assert trainable and all("lora_" in k for k in trainable) and frozen_before
    out = actor.worker.train_mini_batch(make_actor_update_batch(actor, **BATCH))
    assert math.isfinite(out["metrics"]["grad_norm"][0]) and out["metrics"]["grad_norm"][0] > 0
    after = parameter_snapshot(actor.module, only_trainable=False)
    assert any(not torch.equal(after[k], trainable[k]) for k in trainable)
    assert all(torch.equal(after[k], v) for k, v in frozen_before.items())


# --------------------------------------------------------------------------------------------- (c)


@pytest.mark.slow
def test_torchrun_two_ranks_match_single_process(tiny_model_dir, single_process_step, tmp_path):
    out_dir = tmp_path / "ranks"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(SCRIPTS / "cpu_train_step.py"), tiny_model_dir, str(out_dir),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=clean_env(OMP_NUM_THREADS="1"), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r0, r1 = (json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1))
    for r in (r0, r1):
        assert (r["world_size"], r["device"], r["backend"], r["local_batch"]) == (2, "cpu", "gloo", 4)
        assert math.isfinite(r["grad_norm"][0]) and r["max_param_change"] > 1e-4
    assert r0["loss"] == r1["loss"] and r0["grad_norm"] == r1["grad_norm"]
    assert r0["param_checksum"] == r1["param_checksum"]
    # data parallelism over 2 ranks gives the single-process mini-batch gradient
    single = single_process_step["metrics"]
    assert r0["grad_norm"][0] == pytest.approx(single["grad_norm"][0], rel=1e-4)
    assert r0["loss"][0] == pytest.approx(single["loss"][0], rel=1e-4, abs=1e-7)


# --------------------------------------------------------------------------------------------- (d)


def test_tiny_model_builder_caches_and_is_deterministic(tmp_path, tiny_model_dir):
    from verl_ext.models.tiny import MANIFEST, build_tiny_model

    weights = Path(tiny_model_dir) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir
    assert weights.stat().st_mtime_ns == mtime  # cached, not rebuilt

    same = build_tiny_model(str(tmp_path / "same"))
    other = build_tiny_model(str(tmp_path / "other"), seed=1)
    assert (Path(same) / "model.safetensors").read_bytes() == weights.read_bytes()
    assert (Path(other) / "model.safetensors").read_bytes() != weights.read_bytes()

    # different arguments rebuild in place; a directory we did not build is never overwritten
    rebuilt = build_tiny_model(same, num_layers=1)
    assert json.loads((Path(rebuilt) / MANIFEST).read_text())["args"]["num_layers"] == 1
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(ValueError):
        build_tiny_model(str(foreign))

    llama = build_tiny_model(str(tmp_path / "llama"), arch="llama")
    assert json.loads((Path(llama) / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_tiny_tokenizer_round_trips_arithmetic_prompt(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert json.loads((Path(tiny_model_dir) / "tokenizer_config.json").read_text())["chat_template"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert (tok.eos_token_id, tok.pad_token_id) == (cfg.eos_token_id, cfg.pad_token_id)
    assert len(tok) <= cfg.vocab_size

    question = "What is 3+4? Answer in \\boxed{}"
    ids = tok(question, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(question)  # one token per character
    assert tok.decode(ids) == question
    # byte-level symbols: space is "Ġ"
    assert tok.convert_ids_to_tokens(tok("(12 * 3) - 5 = 31", add_special_tokens=False)["input_ids"])[:4] == ["(", "1", "2", "Ġ"]

    text = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)
    assert text == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    enc = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    chat_ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    assert tok.decode(chat_ids) == text
    assert tok.decode(chat_ids, skip_special_tokens=True) == f"user\n{question}\nassistant\n"
