"""The GXPO TrainingWorker inside verl 0.9.1's real FSDP2 engine on CPU (tiny Qwen2, local tokenizer)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

from verl_ext.core import GXPORule  # noqa: E402
from verl_ext.testing.cpu_worker import (  # noqa: E402
    _clone_td,
    build_cpu_actor_worker,
    compose_trainer_config,
    make_actor_update_batch,
    parameter_snapshot,
)
from verl_ext.workers.training_worker import GXPOTrainingWorker  # noqa: E402

def _actor(model_path, rule="gxpo", overrides=(), worker_cls=GXPOTrainingWorker, **kw):
    cfg = compose_trainer_config(
        model_path, config_module="recipe.gxpo.config", config_name="gxpo_trainer", mini_batch_size=4, lr=1e-3,
        overrides=["~experiment", f"actor_rollout_ref.actor.update_rule={rule}", *overrides], **kw,
    )
    actor = build_cpu_actor_worker(config=cfg, worker_cls=worker_cls)
    if worker_cls is GXPOTrainingWorker:
        ac = actor.actor_config
        actor.worker.configure_update_rule(ac.update_rule, ac.gxpo, ac.sfpo)
    return actor


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


def _params_equal(a, b, exact=True):
    pa, pb = parameter_snapshot(a.module), parameter_snapshot(b.module)
    assert pa.keys() == pb.keys()
    for k in pa:
        if exact:
            assert torch.equal(pa[k], pb[k]), k
        else:
            torch.testing.assert_close(pa[k], pb[k], rtol=1e-6, atol=1e-7, msg=k)


def test_three_passes_while_active_one_after_shutoff_and_same_as_core(model_path):
    # 4 prompts x 2 responses = one mini-batch per call; fixed shutoff at update 1 -> call 1 active, call 2 not
    ov = ["actor_rollout_ref.actor.gxpo.shutoff=fixed", "actor_rollout_ref.actor.gxpo.shutoff_at=1"]
    a = _actor(model_path, overrides=ov)
    counter = _count_passes(a)
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=0)
    td_core, td_fresh = _clone_td(td), _clone_td(td)  # train_mini_batch pops its keys
    out = a.worker.train_mini_batch(td)
    assert counter["train"] == 3
    assert out["metrics"]["gxpo/active"] == [1.0]
    td2 = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=1)
    out2 = a.worker.train_mini_batch(td2)
    assert counter["train"] == 3 + 1
    assert out2["metrics"]["gxpo/active"] == [0.0]
    assert out2["metrics"]["gxpo/backward_passes"] == [4.0]  # cumulative
    assert out2["metrics"]["gxpo/shutoff_update"] == [1.0]

    # the same first call, driving the core rule directly on a stock TrainingWorker's engine primitives
    from verl.workers.engine_workers import TrainingWorker

    b = _actor(model_path, worker_cls=TrainingWorker)
    rule = GXPORule(lambda: [p for p in b.module.parameters() if p.requires_grad], a.actor_config.gxpo)
    # stock train_mini_batch / train_batch; only the engine's train_batch is replaced by the core rule
    stock_train_batch = b.worker.train_batch

    def rule_train_batch(data):
        def engine_train_batch(d, loss_function):
            outs = {}

            def cg(phase="plain"):
                b.engine.optimizer_zero_grad()
                outs["o"] = b.engine.forward_backward_batch(d, loss_function, forward_only=False)

            def st():
                outs["n"] = b.engine.optimizer_step()
                return outs["n"]

            rule.step(cg, st)
            outs["o"]["metrics"]["grad_norm"] = outs["n"]
            return outs["o"]

        b.engine.train_batch = engine_train_batch
        return stock_train_batch(data)

    b.worker.train_batch = rule_train_batch
    before = parameter_snapshot(b.module)
    b.worker.train_mini_batch(td_core)
    assert any(not torch.equal(v, parameter_snapshot(b.module)[k]) for k, v in before.items())
    a2 = _actor(model_path, overrides=ov)  # a fresh worker for exactly that one call
    a2.worker.train_mini_batch(td_fresh)
    _params_equal(a2, b, exact=True)
    assert rule.backward_passes == 3


def test_grpo_rule_is_identical_to_stock_training_worker(model_path):
    from verl.workers.engine_workers import TrainingWorker

    a = _actor(model_path, rule="grpo")
    b = _actor(model_path, worker_cls=TrainingWorker)
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=3)
    out_a = a.worker.train_mini_batch(_clone_td(td))
    out_b = b.worker.train_mini_batch(_clone_td(td))
    _params_equal(a, b, exact=True)
    assert out_a["metrics"]["grad_norm"] == out_b["metrics"]["grad_norm"]
    assert out_a["metrics"]["grpo/backward_passes"] == [1.0]


def test_lora_only_adapters_move(model_path):
    a = _actor(model_path, lora_rank=4, lora_alpha=8, overrides=["actor_rollout_ref.actor.gxpo.shutoff=never"])
    before = parameter_snapshot(a.module, only_trainable=False)
    trainable = {n for n, p in a.module.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    td = make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=4)
    out = a.worker.train_mini_batch(td)
    after = parameter_snapshot(a.module, only_trainable=False)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and moved <= trainable
    assert out["metrics"]["gxpo/backward_passes"] == [3.0]


@pytest.mark.parametrize("split_call", [1, 4])  # one update per call: 1 = mid-warm-up, 4 = after the shutoff at 3
def test_save_load_continue_matches_uninterrupted(model_path, tmp_path, split_call):
    ov = [
        "actor_rollout_ref.actor.gxpo.warmup=2", "actor_rollout_ref.actor.gxpo.window=4",
        "actor_rollout_ref.actor.gxpo.shutoff=fixed", "actor_rollout_ref.actor.gxpo.shutoff_at=3",
    ]
    n_calls = 5
    batches = None

    def run(resume: bool):
        nonlocal batches
        a = _actor(model_path, overrides=ov)
        if batches is None:
            batches = [make_actor_update_batch(a, num_prompts=4, rollout_n=2, seed=10 + i) for i in range(n_calls)]
        for i in range(n_calls):
            if resume and i == split_call:
                ck = str(tmp_path / f"ck{split_call}")
                a.worker.save_checkpoint(ck, global_step=i)
                a = _actor(model_path, overrides=ov)
                a.worker.load_checkpoint(ck)
            a.worker.train_mini_batch(_clone_td(batches[i]))
        return a

    full, resumed = run(False), run(True)
    assert min(full.worker.rule.gate.buffer) > 0  # real gradients reached the gate
    _params_equal(full, resumed, exact=True)
    assert str(full.worker.rule.state_dict()) == str(resumed.worker.rule.state_dict())  # NaN-safe
    assert full.worker.rule.gate.shutoff_update == 3 and not full.worker.rule.gate.active


# the multi-process tests (gate agreement for every gate option, HSDP) are in tests/workers/test_worker_distributed.py
