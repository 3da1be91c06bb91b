"""The transactional snapshot (``TorchOptimizerState``) owns a deep copy of the optimizer state:
mutating the live state after ``save()`` -- tensors in place, nested containers, plain values --
never reaches the snapshot, and ``restore()`` brings every value back (docs/algorithm.md#active-update)."""

from __future__ import annotations

import torch

from verl_ext.core import TorchOptimizerState


def _opt_with_nested_state():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p] = {"step": torch.tensor(1.0), "nested": {"buffer": torch.tensor([2.0]), "counter": 3},
                    "history": [torch.tensor([5.0]), 7]}
    return p, opt


def _mutate(st):
    st["step"].add_(10)
    st["nested"]["buffer"].fill_(99.0)
    st["nested"]["counter"] = 100
    st["history"][0].fill_(-1.0)
    st["history"][1] = -7


def _assert_original(st):
    assert st["step"].item() == 1.0
    assert st["nested"]["buffer"].tolist() == [2.0] and st["nested"]["counter"] == 3
    assert st["history"][0].tolist() == [5.0] and st["history"][1] == 7


def test_nested_optimizer_state_is_restored_not_aliased():
    p, opt = _opt_with_nested_state()
    hooks = TorchOptimizerState(opt)
    snap = hooks.save()
    _mutate(opt.state[p])
    hooks.restore(snap)
    _assert_original(opt.state[p])
    _mutate(opt.state[p])  # the snapshot can be restored more than once
    hooks.restore(snap)
    _assert_original(opt.state[p])
