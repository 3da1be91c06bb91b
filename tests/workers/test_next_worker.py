"""NExt's hook on verl 0.9.1's real FSDP2 engine on CPU (tiny Qwen2 with LoRA adapters)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

from verl_ext.core.config import ConfigError  # noqa: E402
from verl_ext.core.next import NExtConfig  # noqa: E402
from verl_ext.testing.cpu_worker import (  # noqa: E402
    _clone_td,
    build_cpu_actor_worker,
    compose_trainer_config,
    make_actor_update_batch,
    parameter_snapshot,
)
from verl_ext.workers.next_hook import NExtHook, build_next_hook  # noqa: E402
from verl_ext.workers.training_worker import GXPOTrainingWorker  # noqa: E402

# a snapshot every step, 3-snapshot window, target 1 snapshot ahead, an event every 2 steps
FAST = dict(enable=True, mode="online", snapshot_every=1, history=3, horizon=1, interval=2, hidden=8, epochs=30, lr=1e-2, coef=2.0)
N_STEPS = 6


def _actor(model_path, lora=True):
    kw = dict(lora_rank=4, lora_alpha=8) if lora else {}
    cfg = compose_trainer_config(
        model_path, config_module="recipe.gxpo.config", config_name="gxpo_trainer", mini_batch_size=4, lr=1e-2,
        overrides=["~experiment", "actor_rollout_ref.actor.update_rule=grpo"], **kw,
    )
    torch.manual_seed(0)  # same LoRA initialisation for every actor
    actor = build_cpu_actor_worker(config=cfg, worker_cls=GXPOTrainingWorker)
    ac = actor.actor_config
    actor.worker.configure_update_rule(ac.update_rule, ac.gxpo, ac.sfpo)
    return actor


@pytest.fixture(scope="module")
def batches(model_path):
    a = _actor(model_path)
    return [make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=20 + i) for i in range(N_STEPS)]


def _run(actor, hook, batches, steps, start=1):
    metrics = []
    for step in range(start, start + steps):
        actor.worker.train_mini_batch(_clone_td(batches[step - 1]))
        if hook is not None:
            metrics.append(hook.step(step))
    return metrics


def _params_equal(a, b):
    pa, pb = parameter_snapshot(a.module), parameter_snapshot(b.module)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def test_disabled_or_not_yet_due_reproduces_plain_lora_grpo(model_path, batches):
    plain = _actor(model_path)
    assert build_next_hook(plain.worker, NExtConfig(enable=False), plain.model_config) is None
    _run(plain, None, batches, 3)
    # enabled, snapshotting every step, but the first event would be at step 10: weights untouched
    quiet = _actor(model_path)
    cfg = NExtConfig(**{**FAST, "interval": 10})
    hook = build_next_hook(quiet.worker, cfg, quiet.model_config)
    ms = _run(quiet, hook, batches, 3)
    _params_equal(plain, quiet)
    assert [m["next/extrapolated"] for m in ms] == [0.0, 0.0, 0.0] and ms[-1]["next/window"] == 3.0


def test_event_adds_coef_times_the_predicted_delta_and_is_scored_later(model_path, batches):
    a = _actor(model_path)
    hook = build_next_hook(a.worker, NExtConfig(**FAST), a.model_config)
    trainable = {n for n, p in a.module.named_parameters() if p.requires_grad}
    assert set(hook.anchor) == trainable and all("lora" in n for n in trainable)
    ms = _run(a, hook, batches, 2)  # steps 1, 2: window of 2 < horizon + 2 -> no event yet
    assert ms[-1]["next/extrapolated"] == 0.0
    a.worker.train_mini_batch(_clone_td(batches[2]))
    m3 = hook.step(3)  # odd step: not due
    a.worker.train_mini_batch(_clone_td(batches[3]))
    before = hook.snapshot()
    # what step 4 will snapshot is `before`; the event then adds coef * prediction
    m4 = hook.step(4)
    after = hook.snapshot()
    assert m3["next/extrapolated"] == 0.0 and m4["next/extrapolated"] == 1.0 and m4["next/events"] == 1.0
    pred = hook.pending["pred"]
    for k in before:
        torch.testing.assert_close(after[k] - before[k], FAST["coef"] * pred[k], rtol=1e-5, atol=1e-7)
    assert m4["next/delta_norm"] > 0
    assert m4["next/predictor_params"] > 0 and m4["next/predictor_flops"] > 0 and m4["next/predictor_seconds"] > 0
    assert m4["next/predictor_flops_total"] == m4["next/predictor_flops"]
    assert hook.window and hook.window[0][0] == 4 and len(hook.window) == 1  # the window restarts after the jump
    # one snapshot later the prediction is scored against the realised trajectory
    a.worker.train_mini_batch(_clone_td(batches[4]))
    m5 = hook.step(5)
    for key in ("next/realised_cos", "next/realised_norm_ratio", "next/realised_after_jump_cos"):
        assert key in m5 and m5[key] == m5[key]  # present and not NaN
    assert m5["next/realised_steps"] == 1.0 and hook.pending is None
    # the jump reached the engine's own (FSDP2-sharded, here one shard) parameters
    a2 = _actor(model_path)
    hook2 = build_next_hook(a2.worker, NExtConfig(**{**FAST, "interval": 100}), a2.model_config)
    _run(a2, hook2, batches, 5)  # the same run without the event
    live, live2 = parameter_snapshot(a.module), parameter_snapshot(a2.module)
    assert any(not torch.equal(live[k], live2[k]) for k in live)


@pytest.mark.parametrize("split", [3, 5])  # 3: mid-window before the first event; 5: with a pending event
def test_resume_mid_run_continues_identically(model_path, batches, tmp_path, split):
    cfg = NExtConfig(**FAST)
    full = _actor(model_path)
    hook_full = build_next_hook(full.worker, cfg, full.model_config)
    m_full = _run(full, hook_full, batches, N_STEPS)

    first = _actor(model_path)
    hook1 = build_next_hook(first.worker, cfg, first.model_config)
    _run(first, hook1, batches, split)
    ck = str(tmp_path / f"global_step_{split}" / "actor")
    first.worker.save_checkpoint(ck, global_step=split)
    hook1.save(ck)

    resumed = _actor(model_path)
    hook2 = build_next_hook(resumed.worker, cfg, resumed.model_config)
    resumed.worker.load_checkpoint(ck)
    assert hook2.load(ck)
    m_rest = _run(resumed, hook2, batches, N_STEPS - split, start=split + 1)
    _params_equal(full, resumed)
    assert hook2.events == hook_full.events == 2  # events at steps 4 and 6
    strip = ("next/predictor_seconds", "next/predictor_seconds_total")
    clean = lambda m: {k: v for k, v in m.items() if k not in strip}  # noqa: E731
    assert [clean(m) for m in m_rest] == [clean(m) for m in m_full[split:]]


def test_next_refuses_a_model_without_lora(model_path):
    a = _actor(model_path, lora=False)
    with pytest.raises(ConfigError) as e:
        build_next_hook(a.worker, NExtConfig(**FAST), a.model_config)
    assert e.value.key == "actor_rollout_ref.actor.next.enable"
    with pytest.raises(ValueError):
        NExtHook(a.module, NExtConfig(enable=False))


# the authors' procedure, scaled: checkpoints every step from 0, the event at step 4, 1 step ahead
AUTHORS = dict(enable=True, mode="authors", snapshot_every=1, horizon=1, extend_at=4, hidden=8, epochs=30, lr=1e-2)


def _merged(actor):
    """{layer: base_weight + scaling * B A} of the engine's LoRA layers (full tensors)."""
    from verl_ext.workers.next_hook import _full, lora_layers

    out = {}
    for name, mod in lora_layers(actor.module):
        W = _full(mod.base_layer.weight).float()
        B, A = _full(mod.lora_B["default"].weight).float(), _full(mod.lora_A["default"].weight).float()
        out[name] = W + float(mod.scaling["default"]) * B @ A
    return out


def test_authors_mode_moves_the_merged_weights_by_coef_times_the_rank1_prediction(model_path, batches):
    from verl_ext.workers.next_hook import NExtAuthorsHook

    a = _actor(model_path)
    hook = build_next_hook(a.worker, NExtConfig(**AUTHORS), a.model_config)
    assert isinstance(hook, NExtAuthorsHook) and 0 in hook.checkpoints and len(hook.layers) > 0
    ms = _run(a, hook, batches, 4)
    assert [m["next/event_pending"] for m in ms] == [0.0, 0.0, 0.0, 1.0] and ms[-1]["next/events"] == 1.0
    assert ms[-1]["next/predictor_params"] > 0 and ms[-1]["next/delta_norm"] > 0
    assert hook.checkpoints == {}  # one event: the history is released
    adapters = {n: p.detach().clone() for n, p in a.module.named_parameters() if p.requires_grad}
    w0 = _merged(a)
    for coef in (2.5, 0.5, 1.5):  # the trainer's grid search: each coefficient from the same point
        assert hook.set_coef(coef) == {"next/coef": coef}
        w = _merged(a)
        for name, part in hook.pred.items():
            jump = w[name] - w0[name]
            want = coef * part["s"] * torch.outer(part["u"], part["v"])
            torch.testing.assert_close(jump, want, rtol=1e-4, atol=1e-6)
            S = torch.linalg.svdvals(jump.double())
            assert float(S[1] / S[0]) < 1e-2  # rank 1 up to float32 rounding of W + jump
    for n, p in a.module.named_parameters():  # adapters untouched: training resumes from the jump
        if p.requires_grad:
            assert torch.equal(p.detach(), adapters[n]), n
    # later steps do nothing more; training continues from the chosen point
    a.worker.train_mini_batch(_clone_td(batches[4]))
    m5 = hook.step(5)
    assert m5["next/event_pending"] == 0.0 and m5["next/events"] == 1.0 and hook.chosen == 1.5


def test_authors_mode_before_the_event_is_plain_lora_grpo_and_resumes(model_path, batches, tmp_path):
    plain = _actor(model_path)
    _run(plain, None, batches, 3)
    a = _actor(model_path)
    hook = build_next_hook(a.worker, NExtConfig(**AUTHORS), a.model_config)
    _run(a, hook, batches, 3)
    _params_equal(plain, a)
    ck = str(tmp_path / "actor")
    hook.save(ck)
    b = _actor(model_path)
    hook_b = build_next_hook(b.worker, NExtConfig(**AUTHORS), b.model_config)
    assert hook_b.load(ck) and sorted(hook_b.checkpoints) == [0, 1, 2, 3]
    online = build_next_hook(b.worker, NExtConfig(**FAST), b.model_config)
    with pytest.raises(ValueError, match="next.mode=authors"):
        online.load(ck)
