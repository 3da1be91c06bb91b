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
    cfg = NExtConfig(enable=True, snapshot_every=1, history=3, horizon=1, interval=2, hidden=4, epochs=5)
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
