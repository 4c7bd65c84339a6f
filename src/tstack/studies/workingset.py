"""Peak intermediate memory of a call: the working-set side of 003 Table III, measured rather than assumed.

``peak_intermediate_bytes(fn)`` runs ``fn`` under a ``TorchDispatchMode`` that sees every tensor an ATen op returns.
A storage is counted from the op that first returns a tensor on it until the last Python tensor on it is collected
(``weakref`` callbacks; views keep their base alive; a view of an input or a parameter is no new memory), so the
peak is the most bytes of tensors created inside the call that were alive at once. Inputs and parameters,
allocated before the call, are not counted; the output is. Allocator slack (glibc's size classes, freed but
unreturned pages) is not memory the algorithm holds, so it is left out on purpose.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class WorkingSet:
    """Peak and total bytes of tensors created during one call (byte)."""

    peak: int
    allocated: int
    tensors: int


class _Tracker(TorchDispatchMode):
    """Counts live bytes per storage; a storage is freed when its last tracked tensor is collected."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}  # storage data_ptr -> live tracked tensors on it
        self.sizes: dict[int, int] = {}
        self.seen: set[int] = set()  # id() of tracked tensors still alive
        self.live = self.peak = self.allocated = self.tensors = 0

    def _release(self, ptr: int, ident: int) -> None:
        self.seen.discard(ident)
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.live -= self.sizes.pop(ptr)
            del self.refs[ptr]

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        if id(t) in self.seen:  # in-place ops return their input
            return
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or (ptr in inputs and ptr not in self.refs):  # a view of an input or a parameter: not new memory
            return
        self.seen.add(id(t))
        if ptr not in self.refs:
            self.refs[ptr], self.sizes[ptr] = 0, storage.nbytes()
            self.live += storage.nbytes()
            self.allocated += storage.nbytes()
            self.tensors += 1
            self.peak = max(self.peak, self.live)
        self.refs[ptr] += 1
        weakref.finalize(t, self._release, ptr, id(t))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out


def peak_intermediate_bytes(fn: Callable[[], object]) -> WorkingSet:
    """Run ``fn`` once under the tracker (no autograd) and return its peak and total intermediate bytes."""
    tracker = _Tracker()
    with torch.no_grad(), tracker:
        result = fn()
    del result
    return WorkingSet(tracker.peak, tracker.allocated, tracker.tensors)
