"""The worker's ``EngineOptimizerState`` (host or device snapshots of a verl engine's optimizer) owns a
deep copy of nested optimizer state, like the core's ``TorchOptimizerState``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")

from verl_ext.workers.training_worker import EngineOptimizerState  # noqa: E402


@pytest.mark.parametrize("host", [False, True])
def test_engine_snapshot_restores_nested_state(host):
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p] = {"step": torch.tensor(1.0), "nested": {"buffer": torch.tensor([2.0]), "counter": 3}}
    hooks = EngineOptimizerState(opt, host=host)
    snap = hooks.save()
    for _ in range(2):  # restorable more than once
        st = opt.state[p]
        st["step"].add_(10)
        st["nested"]["buffer"].fill_(99.0)
        st["nested"]["counter"] = 100
        hooks.restore(snap)
        st = opt.state[p]
        assert st["step"].item() == 1.0
        assert st["nested"]["buffer"].tolist() == [2.0] and st["nested"]["counter"] == 3
