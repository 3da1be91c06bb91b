"""Counting host-device synchronisations of a piece of torch code, on any device (pure torch).

On a GPU a scalar read (``.item()``, ``float(t)``, ``bool(t)``), a copy to the host (``.tolist()``,
``.cpu()``, ``.numpy()``) or an op whose output shape depends on the data (boolean-mask indexing,
``nonzero``, ``repeat_interleave`` without ``output_size``) stalls the host until the stream has
drained. On CPU nothing stalls, so :class:`SyncCounter` counts the CALLS that would: dispatched
ops by name, and the host-copy methods (which a CPU tensor answers without dispatch) by patching
them while the counter is active.

    with SyncCounter() as c:
        rule.step(c.closure(compute_grads), c.closure(optimizer_step))   # closures are not counted
    c.count, c.ops           # the syncs
    c.dispatched             # every op dispatched outside the closures, by name (views included)
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ops that wait for the device on a GPU: a scalar read, or an output whose shape depends on the data
_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "repeat_interleave"}
_SYNC_METHODS = ("tolist", "numpy", "cpu")  # CPU tensors answer these without dispatch: count the calls


class SyncCounter(TorchDispatchMode):
    """Counts the calls that would stall a GPU stream (on CPU nothing stalls, so the calls are counted)."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.dispatched: Counter[str] = Counter()  # every op dispatched outside the closures, by name
        self.paused = 0
        self.ops: list[str] = []
        self._orig = {}

    def _hit(self, what):
        if not self.paused:
            self.count += 1
            self.ops.append(what)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused:
            self.dispatched[name] += 1
        if name == "repeat_interleave" and (kwargs or {}).get("output_size") is not None:
            pass  # its output size given: no sync (torch.repeat_interleave's documented contract)
        elif name in _SYNC_OPS or (name == "index" and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()))):
            self._hit(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for m in _SYNC_METHODS:
            orig = getattr(torch.Tensor, m)
            self._orig[m] = orig

            def wrapped(t, *a, _orig=orig, _m=m, **kw):
                self._hit(_m)
                return _orig(t, *a, **kw)

            setattr(torch.Tensor, m, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        for m, orig in self._orig.items():
            setattr(torch.Tensor, m, orig)
        return super().__exit__(*exc)

    def closure(self, fn):
        """The engine's closures are not the rule's work: their syncs are not counted."""

        def run(*a):
            self.paused += 1
            try:
                return fn(*a)
            finally:
                self.paused -= 1

        return run
