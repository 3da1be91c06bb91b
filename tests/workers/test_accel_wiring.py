"""The thin verl glue around CAPO / NExt: the actor worker's RPCs and the trainer's per-step call.

No Ray: the worker and trainer classes are instantiated bare with stand-ins for what verl builds
(the inner TrainingWorker, the worker group), and the real NExtHook runs on a small module.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("verl")

from verl_ext.core.next import NExtConfig  # noqa: E402
from verl_ext.workers.actor_worker import GXPOActorRolloutRefWorker  # noqa: E402
from verl_ext.workers.next_hook import NEXT_STATE_FILE, NExtHook  # noqa: E402
from verl_ext.workers.trainer import GXPOTrainerSync  # noqa: E402


class _Engine:
    def __init__(self, module):
        self.module = module
        self.train_mode_entered = 0

    @contextlib.contextmanager
    def train_mode(self, **kwargs):
        self.train_mode_entered += 1
        yield


class _InnerWorker:
    def __init__(self, module):
        self.engine = _Engine(module)
        self.calls = []

    def save_checkpoint(self, *args):
        self.calls.append(("save", args))

    def load_checkpoint(self, *args):
        self.calls.append(("load", args))


def _worker(cfg):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 3, bias=False), torch.nn.Linear(3, 2))
    w = GXPOActorRolloutRefWorker.__new__(GXPOActorRolloutRefWorker)
    w.role = "actor_rollout_ref"
    w.actor = _InnerWorker(module)
    w.next_hook = NExtHook(module, cfg)
    return w, module


def _train_step(module, k):
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.add_(0.01 * (k + 1) ** 1.5 * torch.ones_like(p) * (i + 1))


def test_worker_next_step_and_checkpoint_round_trip(tmp_path):
    cfg = NExtConfig(enable=True, mode="online", snapshot_every=1, history=3, horizon=1, interval=2, hidden=4, epochs=5)
    w, module = _worker(cfg)
    for step in (1, 2, 3):
        _train_step(module, step)
        m = w.next_step(step)
        assert m["next/window"] == float(min(step, 3))
    assert w.actor.engine.train_mode_entered == 3  # parameters are loaded (offload) for every call
    _train_step(module, 4)
    m4 = w.next_step(4)
    assert m4["next/extrapolated"] == 1.0 and m4["next/events"] == 1.0
    path = str(tmp_path / "actor")
    w.save_checkpoint(path, None, 4, None)
    assert os.path.exists(os.path.join(path, NEXT_STATE_FILE.format(rank=0)))
    assert w.actor.calls[-1][0] == "save"
    state = w.next_hook.state_dict()

    w2, _ = _worker(cfg)
    w2.load_checkpoint(path)
    assert w2.actor.calls[-1][0] == "load"
    assert w2.next_hook.events == 1 and str(w2.next_hook.state_dict()) == str(state)


def test_worker_without_next_hook_is_a_no_op():
    w = GXPOActorRolloutRefWorker.__new__(GXPOActorRolloutRefWorker)
    w.actor = _InnerWorker(torch.nn.Linear(2, 2))
    assert w.next_hook is None and w.next_step(5) == {}


class _WG:
    def __init__(self):
        self.steps = []

    def next_step(self, step):
        self.steps.append(step)
        return [{"next/events": 7.0}, {"next/events": 7.0}]  # ONE_TO_ALL: one result per rank


@pytest.mark.parametrize("enable", [True, False])
def test_trainer_calls_next_after_each_update_only_when_enabled(enable):
    t = GXPOTrainerSync.__new__(GXPOTrainerSync)
    t.config = OmegaConf.create({"actor_rollout_ref": {"actor": {"next": {"enable": enable}}}})
    t.actor_rollout_wg = _WG()
    t.global_steps = 3
    metrics = {"capo/masked_frac": 0.1}
    t._next_after_update(metrics)
    assert t.actor_rollout_wg.steps == ([3] if enable else [])
    assert metrics == ({"capo/masked_frac": 0.1, "next/events": 7.0} if enable else {"capo/masked_frac": 0.1})
    # a config without the section (e.g. verl's own actor config) is "disabled"
    t.config = OmegaConf.create({"actor_rollout_ref": {"actor": {}}})
    t._next_after_update(metrics)
    assert t.actor_rollout_wg.steps == ([3] if enable else [])


def test_capo_metrics_are_renamed_like_the_rule_metrics():
    from verl_ext.workers import trainer

    assert "actor/capo/" in trainer._RULE_PREFIXES


class _AuthorsWG:
    """The actor group at a next.mode=authors event: step 5 is the event; validation accuracy per coef."""

    def __init__(self, log):
        self.log = log

    def next_step(self, step):
        return [{"next/events": 1.0, "next/event_pending": 1.0 if step == 5 else 0.0}]

    def next_set_coef(self, coef):
        self.log.append(("set", coef))
        return [{"next/coef": coef}]


def test_trainer_chooses_the_authors_coefficient_on_validation():
    """At the event the trainer tries every coefficient of the grid -- set, sync to the rollout,
    verl's validation -- and keeps the best validation accuracy (ties: the smaller coefficient)."""
    log = []
    acc = {0.5: 0.30, 1.0: 0.42, 1.5: 0.42, 2.0: 0.10}
    state = {}

    class _CkptMgr:
        def update_weights(self, step):
            log.append(("sync", step))

    t = GXPOTrainerSync.__new__(GXPOTrainerSync)
    t.config = OmegaConf.create({"actor_rollout_ref": {"actor": {"next": {"enable": True, "coef_grid": list(acc)}}}})
    t.actor_rollout_wg = _AuthorsWG(log)
    t.checkpoint_manager = _CkptMgr()
    t.global_steps = 5

    def _validate():
        coef = [c for kind, c in log if kind == "set"][-1]
        log.append(("val", coef))
        return {"val-core/arithmetic/acc/mean@4": acc[coef], "val-aux/arithmetic/reward/mean@4": 0.0}

    t._validate = _validate
    metrics = {}
    t._next_after_update(metrics)
    want = []
    for c in acc:
        want += [("set", c), ("sync", 5), ("val", c)]
    assert log == want + [("set", 1.0)]
    assert metrics["next/coef"] == 1.0 and metrics["next/coef_val_best"] == 0.42
    assert {k: v for k, v in metrics.items() if k.startswith("next/coef_val/")} == {
        "next/coef_val/0.5": 0.30, "next/coef_val/1": 0.42, "next/coef_val/1.5": 0.42, "next/coef_val/2": 0.10}
    # not the event step: no validation, no coefficient
    log.clear()
    t.global_steps = 6
    t._next_after_update(metrics := {})
    assert log == [] and "next/coef" not in metrics
