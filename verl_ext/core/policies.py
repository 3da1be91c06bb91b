"""Optimizer-state and failure policies of GXPO (docs/algorithm.md#faults, #variants), each a small named piece.

* :class:`TorchOptimizerState` -- the :class:`OptimizerStateHooks` for a ``torch.optim.Optimizer``:
  ``save()`` deep-copies the state (every tensor, nested dicts/lists and plain values),
  ``restore(snapshot)`` copies it back, tensors IN PLACE (so a snapshot is never aliased by the
  live state and can be restored more than once), and
  ``lr_wd(param)`` reads the learning rate and weight decay of the param group holding ``param``
  (needed by ``ratio_source: adam_direction``).
* :class:`OptimizerStatePolicy` -- ``carry`` (Adam moments and the step count run through all three
  steps: nothing is saved) or ``transactional`` (snapshot before probe 1, restored before the
  corrective step, so the corrective step starts from the pre-probe moments and the step count
  advances once per update). Extra memory of ``transactional``: one copy of the optimizer state
  (for AdamW two fp32 tensors per trainable parameter plus the step counts), held from probe 1 to
  the corrective step, wherever the hooks keep it (the device for :class:`TorchOptimizerState`).
* :class:`FailurePolicy` -- ``skip`` (a failed probe restores theta0 and skips the update) or
  ``standard_step`` (a failed probe restores theta0 and runs one plain step on the same mini-batch;
  a non-finite corrective norm restores theta0). A probe fails when its norm is not finite, or,
  when ``min_probe_norm > 0``, when probe 1's norm is ``<= min_probe_norm``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional, Protocol

import torch


class OptimizerStateHooks(Protocol):
    """Save/restore of optimizer state (transactional state, the true-K diagnostic)."""

    def save(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...


def clone_state(v):
    """A deep copy owning its tensors: nested dicts/lists/tuples are copied too (never aliased)."""
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, dict):
        return {k: clone_state(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(clone_state(x) for x in v)
    return copy.deepcopy(v)


@torch.no_grad()
def restore_into(cur, saved):
    """The live value restored from ``saved``: tensors of the same shape are copied IN PLACE into the
    live tensor (references held elsewhere stay valid), nested dicts and lists are restored member by
    member, anything else is replaced by a fresh copy (so the snapshot stays restorable)."""
    if isinstance(saved, torch.Tensor):
        if isinstance(cur, torch.Tensor) and cur.shape == saved.shape:
            return cur.copy_(saved)
        return clone_state(saved)
    if isinstance(saved, dict) and isinstance(cur, dict):
        for k in [k for k in cur if k not in saved]:
            del cur[k]
        for k, v in saved.items():
            cur[k] = restore_into(cur.get(k), v)
        return cur
    if isinstance(saved, list) and isinstance(cur, list) and len(cur) == len(saved):
        cur[:] = [restore_into(c, v) for c, v in zip(cur, saved)]
        return cur
    return clone_state(saved)


class TorchOptimizerState:
    """:class:`OptimizerStateHooks` for a ``torch.optim.Optimizer`` (also FSDP2 DTensor state)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def save(self) -> dict:
        opt = self.optimizer
        return {
            "state": {p: {k: clone_state(v) for k, v in st.items()} for p, st in opt.state.items()},
            "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups],
        }

    @torch.no_grad()
    def restore(self, snapshot: dict) -> None:
        opt = self.optimizer
        saved = snapshot["state"]
        for p in list(opt.state.keys()):
            if p not in saved:  # state created after the snapshot (first step): back to "no state"
                del opt.state[p]
        for p, st in saved.items():
            restore_into(opt.state.setdefault(p, {}), st)
        for g, sg in zip(opt.param_groups, snapshot["groups"]):
            g.update({k: clone_state(v) for k, v in sg.items()})

    def lr_wd(self, param: torch.Tensor) -> tuple[float, float]:
        """(lr, weight_decay) of the param group that holds ``param``."""
        for g in self.optimizer.param_groups:
            if any(q is param for q in g["params"]):
                lr = g["lr"]
                return float(lr.item() if isinstance(lr, torch.Tensor) else lr), float(g.get("weight_decay", 0.0))
        raise KeyError("parameter is not in any param group of the optimizer")


class OptimizerStatePolicy:
    """``carry`` | ``transactional`` (see the module docstring). Holds at most one snapshot per update."""

    def __init__(self, mode: str):
        self.mode = mode
        self._snap = None

    @property
    def transactional(self) -> bool:
        return self.mode == "transactional"

    def begin(self, hooks: Optional[OptimizerStateHooks], need_snapshot: bool = False) -> None:
        """Before probe 1: snapshot when transactional (or when the caller needs one, e.g. the diagnostic)."""
        self._snap = None
        if self.transactional or need_snapshot:
            if hooks is None:
                raise ValueError(
                    "gxpo.optimizer_state=transactional and gxpo.diagnose_every need optimizer_state hooks "
                    "(save/restore) passed to rule.step()"
                )
            self._snap = hooks.save()

    @property
    def snapshot(self):
        """The pre-probe snapshot of this update (None under carry without a diagnostic)."""
        return self._snap

    def before_corrective(self, hooks: Optional[OptimizerStateHooks]) -> None:
        """transactional: the corrective step starts from the pre-probe state."""
        if self.transactional:
            hooks.restore(self._snap)

    def on_failure(self, hooks: Optional[OptimizerStateHooks]) -> None:
        """transactional: a failed update leaves the optimizer state as it was before probe 1."""
        if self.transactional and self._snap is not None:
            hooks.restore(self._snap)

    def end(self) -> None:
        self._snap = None


class FailurePolicy:
    """``skip`` | ``standard_step``: when a probe counts as failed, and what follows."""

    def __init__(self, mode: str, min_probe_norm: float):
        self.mode, self.min_probe_norm = mode, float(min_probe_norm)

    def probe_failed(self, norm: float, first: bool) -> bool:
        if norm is None or not math.isfinite(norm):
            return True
        return first and self.min_probe_norm > 0 and norm <= self.min_probe_norm

    @property
    def plain_step_after_failed_probe(self) -> bool:
        return self.mode == "standard_step"

    @property
    def restore_after_failed_corrective(self) -> bool:
        return self.mode == "standard_step"
