"""The GXPO worker's GPU-only and worker-level paths, driven on verl 0.9.1's real FSDP2 engine on CPU.

fp16 with verl's grad scaler, verl's actor metrics from the first pass, ``mfu`` over every pass,
the budget counters across a change of ``update_rule``, ``recompute_old_log_probs``,
``optimizer_state=transactional`` (also with optimizer offload), ``degenerate_skip_frac``,
``gate_signal=entropy`` and ``gate_granularity=step``; and the pin on the verl methods the
worker relies on instead of copying them.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import math
import textwrap

import pytest
import torch

pytest.importorskip("verl")

from verl_ext.testing.cpu_worker import (  # noqa: E402
    _clone_td,
    build_cpu_actor_worker,
    compose_trainer_config,
    make_actor_update_batch,
    parameter_snapshot,
)
from verl_ext.workers.training_worker import GXPOTrainingWorker, response_scores  # noqa: E402


def _actor(model_path, rule="gxpo", overrides=(), worker_cls=GXPOTrainingWorker, **kw):
    cfg = compose_trainer_config(
        model_path, config_module="recipe.gxpo.config", config_name="gxpo_trainer",
        mini_batch_size=kw.pop("mini_batch_size", 4), lr=1e-3,
        overrides=["~experiment", f"actor_rollout_ref.actor.update_rule={rule}", *overrides], **kw,
    )
    actor = build_cpu_actor_worker(config=cfg, worker_cls=worker_cls)
    if worker_cls is GXPOTrainingWorker:
        ac = actor.actor_config
        actor.worker.configure_update_rule(ac.update_rule, ac.gxpo, ac.sfpo)
    return actor


def _gx(**knobs) -> list[str]:
    return [f"actor_rollout_ref.actor.gxpo.{k}={v}" for k, v in knobs.items()]


def _m(out, key):
    v = out["metrics"][key]
    return float(v[-1] if isinstance(v, list) else v)


def _count_passes(actor):
    engine = actor.engine
    orig = engine.forward_backward_batch
    counter = {"train": 0}

    def counting(data, loss_function, forward_only=False):
        if not forward_only:
            counter["train"] += 1
        return orig(data, loss_function, forward_only=forward_only)

    engine.forward_backward_batch = counting
    return counter


# ---------------------------------------------------------------------------------------------
# verl's methods are inherited, not copied
# ---------------------------------------------------------------------------------------------

# ast of verl 0.9.1's BaseEngine.train_batch (docstring dropped): the worker's _engine_train_batch
# takes exactly its place (maybe_fix_3d_position_ids, zero_grad -> forward_backward -> optimizer_step,
# grad_norm into the metrics of the rank with outputs). If verl changes it, re-read and update both.
BASE_ENGINE_TRAIN_BATCH_AST_SHA256 = "0755ecfc1d221cd6e84c0eda9e210efda33c13ca8b9ca2f6456ab11bbad5f129"


def _ast_sha(fn) -> str:
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
        node.body = node.body[1:]
    return hashlib.sha256(ast.dump(node).encode()).hexdigest()


def test_train_batch_is_verls_own_and_the_engine_step_is_pinned():
    from verl.workers.engine.base import BaseEngine
    from verl.workers.engine_workers import TrainingWorker

    # no copy: verl's train_batch (with its @register and DistProfiler "train_batch" annotation) is used as is
    assert GXPOTrainingWorker.train_batch is TrainingWorker.train_batch
    assert "@DistProfiler.annotate" in inspect.getsource(TrainingWorker.train_batch)
    src = inspect.getsource(TrainingWorker.train_batch)
    assert "self.engine.train_batch(data, loss_function=self.loss_fn)" in src  # the one call the rule replaces
    assert "self._postprocess_output(" in src  # where the worker scales mfu by the passes run
    assert _ast_sha(BaseEngine.train_batch) == BASE_ENGINE_TRAIN_BATCH_AST_SHA256, (
        "verl's BaseEngine.train_batch changed: GXPOTrainingWorker._engine_train_batch mirrors it"
    )


def test_engine_train_batch_is_the_rule(model_path):
    a = _actor(model_path, overrides=_gx(shutoff="never"))
    assert a.engine.train_batch.__func__ is GXPOTrainingWorker._engine_train_batch
    counter = _count_passes(a)
    a.worker.train_mini_batch(make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=0))
    assert counter["train"] == 3


# ---------------------------------------------------------------------------------------------
# fp16: verl's ShardedGradScaler
# ---------------------------------------------------------------------------------------------

RATIO_TOL = 0.03  # absolute, retention-ratio mean and scale mean (a scaled g0 gives r ~ 1e-5, s ~ 1)


def test_fp16_ratio_metrics_match_fp32(model_path):
    outs, td = {}, None
    for prec in ("fp32", "fp16"):
        a = _actor(model_path, overrides=_gx(shutoff="never"), precision=prec)
        if prec == "fp16":
            assert a.worker._grad_scaler() is not None and a.engine.scaler.get_scale() == 2.0 ** 16
        td = td if td is not None else make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=0)
        outs[prec] = a.worker.train_mini_batch(_clone_td(td))
    f32, f16 = outs["fp32"], outs["fp16"]
    assert 0.1 < _m(f32, "gxpo/retention_ratio_mean") < 1.0 and _m(f32, "gxpo/scale_mean") > 1.1
    for key in ("gxpo/retention_ratio_mean", "gxpo/scale_mean"):
        assert abs(_m(f16, key) - _m(f32, key)) < RATIO_TOL, (key, _m(f16, key), _m(f32, key))
    for key in ("gxpo/probe_grad_norm_0", "gxpo/probe_grad_norm_1"):  # unscaled norms
        assert _m(f16, key) == pytest.approx(_m(f32, key), rel=2e-2)
    assert _m(f16, "gxpo/skipped_updates") == 0.0


def test_fp16_scaler_skip_counts_as_a_non_finite_probe(model_path):
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    a = _actor(model_path, overrides=_gx(shutoff="never"), precision="fp16")
    a.engine.scaler = ShardedGradScaler(device="cpu", init_scale=2.0 ** 40, growth_interval=400)  # fp16 grads overflow
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=0)
    before = parameter_snapshot(a.module)
    out = a.worker.train_mini_batch(td)
    assert _m(out, "gxpo/skipped_updates") == 1.0
    assert not math.isfinite(_m(out, "gxpo/probe_grad_norm_0"))
    assert a.engine.scaler.get_scale() < 2.0 ** 40  # the scaler backed off: it skipped the step
    after = parameter_snapshot(a.module)
    assert all(torch.equal(before[k], after[k]) for k in before)  # theta0 kept, nothing extrapolated


# ---------------------------------------------------------------------------------------------
# verl's metrics: first pass, corrective pass, mfu
# ---------------------------------------------------------------------------------------------

FIRST_PASS_KEYS = ("actor/pg_loss", "actor/ppo_kl", "actor/pg_clipfrac", "actor/entropy_loss", "loss", "grad_norm")


def _fixed_flops(actor):
    """mfu = tokens x passes: replace the wall-clock-based estimate by a token count."""
    actor.worker.flops_counter.estimate_flops = lambda tokens, dt, **kw: (float(sum(tokens)), 1.0)


def test_actor_metrics_from_the_first_pass_corrective_under_gxpo_and_mfu_counts_every_pass(model_path):
    from verl.workers.engine_workers import TrainingWorker

    ov = ["actor_rollout_ref.actor.calculate_entropy=True"]
    g = _actor(model_path, overrides=[*ov, *_gx(shutoff="never")])
    s = _actor(model_path, overrides=ov, worker_cls=TrainingWorker)  # stock verl, GRPO
    _fixed_flops(g), _fixed_flops(s)
    td = make_actor_update_batch(g, num_prompts=4, rollout_n=2, seed=5)
    out_g, out_s = g.worker.train_mini_batch(_clone_td(td)), s.worker.train_mini_batch(_clone_td(td))
    for key in FIRST_PASS_KEYS:  # measured at theta0: identical to the GRPO update on the same batch
        assert _m(out_g, key) == pytest.approx(_m(out_s, key), rel=1e-6, abs=1e-9), key
    corr = {k: _m(out_g, f"gxpo/corrective_{k}") for k in ("pg_loss", "ppo_kl", "pg_clipfrac", "entropy_loss", "loss")}
    assert corr["ppo_kl"] != _m(out_g, "actor/ppo_kl")  # the corrective pass is at theta~, far from theta0
    assert corr["loss"] == pytest.approx(g.worker.last_passes[-1]["loss"])
    assert [p["phase"] for p in g.worker.last_passes] == ["probe1", "probe2", "corrective"]
    assert _m(out_g, "mfu") == pytest.approx(3 * _m(out_s, "mfu"))


def test_sfpo_slow_pass_metrics_and_plain_update_has_none(model_path):
    a = _actor(model_path, rule="sfpo", overrides=["actor_rollout_ref.actor.sfpo.K=2", "actor_rollout_ref.actor.sfpo.shutoff=never"])
    out = a.worker.train_mini_batch(make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=1))
    assert "sfpo/slow_pg_loss" in out["metrics"] and "sfpo/slow_loss" in out["metrics"]
    b = _actor(model_path, rule="grpo")
    out = b.worker.train_mini_batch(make_actor_update_batch(b, num_prompts=4, rollout_n=2, seed=1))
    assert not [k for k in out["metrics"] if "_pg_loss" in k and k != "actor/pg_loss"]


# ---------------------------------------------------------------------------------------------
# budget counters across a change of update_rule
# ---------------------------------------------------------------------------------------------


def test_resume_with_another_rule_keeps_the_budget_counters(model_path, tmp_path):
    a = _actor(model_path, rule="grpo")
    for i in range(2):
        a.worker.train_mini_batch(make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=20 + i))
    ck = str(tmp_path / "ck")
    a.worker.save_checkpoint(ck, global_step=2)
    b = _actor(model_path, rule="gxpo", overrides=_gx(shutoff="never"))
    b.worker.load_checkpoint(ck)
    out = b.worker.train_mini_batch(make_actor_update_batch(b, num_prompts=4, rollout_n=2, seed=22))
    assert _m(out, "gxpo/backward_passes") == 2 + 3
    assert _m(out, "gxpo/optimizer_steps") == 2 + 3
    assert _m(out, "gxpo/updates") == 1.0 and _m(out, "gxpo/active") == 1.0  # the gate starts fresh
    # and back: a checkpoint written by the gxpo run carries its counters into a grpo run
    ck2 = str(tmp_path / "ck2")
    b.worker.save_checkpoint(ck2, global_step=3)
    c = _actor(model_path, rule="grpo")
    c.worker.load_checkpoint(ck2)
    out = c.worker.train_mini_batch(make_actor_update_batch(c, num_prompts=4, rollout_n=2, seed=23))
    assert _m(out, "grpo/backward_passes") == 5 + 1


# ---------------------------------------------------------------------------------------------
# worker-level knobs (docs/algorithm.md#variants)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recompute", [True, False])
def test_recompute_old_log_probs_starts_probe2_and_corrective_at_ratio_one(model_path, recompute):
    a = _actor(model_path, overrides=_gx(shutoff="never", recompute_old_log_probs=recompute))
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=3)
    old = td["old_log_probs"].clone()
    forwards = {"n": 0}
    orig = a.engine.infer_batch

    def counting(data, loss_function=None):
        forwards["n"] += 1
        return orig(data, loss_function=loss_function)

    a.engine.infer_batch = counting
    a.worker.train_mini_batch(td)
    passes = {p["phase"]: p["metrics"] for p in a.worker.last_passes}
    assert passes["probe1"]["actor/ppo_kl"] == pytest.approx(0.0, abs=1e-7)  # old log-probs were taken at theta0
    for phase in ("probe2", "corrective"):
        kl, clip = passes[phase]["actor/ppo_kl"], passes[phase]["actor/pg_clipfrac"]
        if recompute:
            assert abs(kl) < 1e-7 and clip == 0.0, (phase, kl, clip)
        else:
            assert abs(kl) > 1e-5, (phase, kl)
    assert forwards["n"] == (2 if recompute else 0)
    assert torch.equal(td["old_log_probs"], old)  # the rollout's values are back after the update


def _local_state(optimizer):
    out = []
    for grp in optimizer.param_groups:
        for p in grp["params"]:
            st = optimizer.state.get(p, {})
            out.append({k: (v.to_local() if hasattr(v, "to_local") else v).detach().clone().float()
                        for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


def _same_state(a, b) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


@pytest.mark.parametrize("offload", [False, True])
def test_transactional_restores_verls_optimizer_state_before_the_corrective_step(model_path, offload):
    ov = _gx(shutoff="never", optimizer_state="transactional")
    if offload:
        ov.append("actor_rollout_ref.actor.fsdp_config.optimizer_offload=True")
    a = _actor(model_path, overrides=ov)
    assert a.engine.is_optimizer_offload_enabled == offload
    seen = []
    orig = a.engine.optimizer_step

    def recording():
        seen.append(_local_state(a.engine.optimizer))
        return orig()

    a.engine.optimizer_step = recording
    for i in range(2):
        a.worker.train_mini_batch(make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=30 + i))
    assert len(seen) == 6
    probe1, probe2, corrective = seen[3:6]  # update 2
    assert probe1 and _same_state(corrective, probe1) and not _same_state(probe2, probe1)
    assert seen[2] == [{} for _ in seen[2]]  # update 1: no state before probe 1 -> none before the corrective step
    steps = {float(st["step"]) for st in a.engine.optimizer.state.values()}
    assert steps == {2.0}  # the step count advanced once per update


def test_carry_runs_the_optimizer_state_through_all_three_steps(model_path):
    a = _actor(model_path, overrides=_gx(shutoff="never"))
    a.worker.train_mini_batch(make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=30))
    assert {float(st["step"]) for st in a.engine.optimizer.state.values()} == {3.0}


def test_response_scores_nested_and_padded():
    from tensordict import TensorDict

    nested = torch.nested.as_nested_tensor([torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0]), torch.tensor([0.5, 0.5])],
                                           layout=torch.jagged)
    td = TensorDict({"rm_scores": nested}, batch_size=[3])
    assert response_scores(td).tolist() == [1.0, 0.0, 1.0]
    td = TensorDict({"token_level_scores": torch.tensor([[0.0, 1.0], [0.0, 0.0]])}, batch_size=[2])
    assert response_scores(td).tolist() == [1.0, 0.0]
    assert response_scores(TensorDict({}, batch_size=[2])) is None


def test_degenerate_skip_frac_reads_the_mini_batch_scores(model_path):
    a = _actor(model_path, overrides=_gx(shutoff="never", degenerate_skip_frac=0.5))
    counter = _count_passes(a)
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=40)  # one right, one wrong per prompt
    assert float((response_scores(td) == 0).float().mean()) == 0.5  # not more than 0.5: a normal GXPO update
    out = a.worker.train_mini_batch(_clone_td(td))
    assert counter["train"] == 3 and _m(out, "gxpo/degenerate_skips") == 0.0
    td["token_level_scores"] = torch.zeros_like(td["token_level_scores"])  # every response scored 0
    out = a.worker.train_mini_batch(td)
    assert counter["train"] == 3 + 1
    assert _m(out, "gxpo/degenerate_skips") == 1.0 and _m(out, "gxpo/active") == 1.0


def test_entropy_gate_reads_the_corrective_pass_entropy(model_path):
    a = _actor(model_path, overrides=_gx(shutoff="adaptive", gate_signal="entropy", warmup=2, window=4))
    out = a.worker.train_mini_batch(make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=50))
    passes = a.worker.last_passes
    assert [p["phase"] for p in passes] == ["probe1", "probe2", "corrective"]
    assert "actor/entropy_loss" not in passes[0]["metrics"]  # entropy is computed for the corrective pass only
    ent = passes[-1]["metrics"]["actor/entropy_loss"]
    assert _m(out, "gxpo/gate_signal") == pytest.approx(ent, rel=1e-9)
    assert ent != pytest.approx(_m(out, "gxpo/corrective_grad_norm"))
    assert list(a.worker.rule.gate.state_dict()["buffer"])[-1] == pytest.approx(ent, rel=1e-9)


def test_step_granularity_decides_once_per_training_step(model_path):
    ov = _gx(shutoff="adaptive", gate_granularity="step", warmup=2, window=4, z_threshold="1e-9", two_sided=True)
    a = _actor(model_path, overrides=ov)
    counter = _count_passes(a)
    per_step, actives = [], []
    for i in range(5):  # 8 prompts x 2 responses = 2 mini-batches of 4 prompts per training step
        before = counter["train"]
        a.worker.train_mini_batch(make_actor_update_batch(a, num_prompts=8, rollout_n=2, seed=60 + i))
        per_step.append(counter["train"] - before)
        actives.append(a.worker.rule.gate.active)
    assert set(per_step) <= {6, 2}, per_step  # never a step with one active and one plain mini-batch
    assert per_step[:3] == [6, 6, 6] and per_step[-1] == 2, per_step  # 2 warm-up steps, decided at the 3rd step's end
    assert a.worker.rule.gate.shutoff_update >= 0 and not actives[-1]
