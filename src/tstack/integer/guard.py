"""A guard that proves a region is integer-only: every aten op inside must take and return integer or bool tensors only.

It is a ``TorchDispatchMode``, so it sees every op PyTorch dispatches on tensors (views, copies, ``torch._int_mm``,
reductions), not just the Python-level calls. It admits no exceptions: no floating-point dtype, no quantized dtype
(whose kernels requantize with float multipliers), no float scalar argument. Python ints used as shifts and constants
are fine: they are integers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tstack.errors import TstackError

_INTEGER = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}


class FloatOpError(TstackError):
    """An op with a floating-point (or quantized) operand or result ran inside an integer-only region."""


def _offender(values: list[Any]) -> str | None:
    for v in values:
        if isinstance(v, torch.Tensor) and v.dtype not in _INTEGER:
            return f"a {v.dtype} tensor"
        if isinstance(v, float):
            return f"the float scalar {v!r}"
        if isinstance(v, torch.dtype) and v not in _INTEGER:
            return f"the dtype {v}"
    return None


class IntegerOnly(TorchDispatchMode):
    """Raise FloatOpError at the first op that touches a non-integer value; ``ops`` lists every op that ran."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = str(func.overloadpacket.__name__)
        self.ops.append(name)
        bad = _offender(tree_flatten((args, kwargs))[0])
        if bad is None:
            out = func(*args, **kwargs)
            bad = _offender(tree_flatten(out)[0])
            if bad is None:
                return out
            raise FloatOpError(f"integer-only region: aten.{name} returned {bad}")
        raise FloatOpError(f"integer-only region: aten.{name} was called with {bad}")
