"""Integer operation counts of the I-BERT kernels, per element and per row, for hardware models to cost.

Counts follow the algorithms of Kim et al., "I-BERT: Integer-only BERT Quantization" (ICML 2021), Alg. 1-4, exactly as
tstack's integer kernels (tstack.integer.nonlinear, .ops) implement them; tests run the element-by-element oracle on
counting integers and compare its tally with these records. ``passes`` is the number of sweeps over a row that the op
needs (a reduction must finish before the values that depend on it can be produced), which is what a normalization
unit that reduces over accumulator rows serializes on. Per-row work (divisions for the mean and the softmax or
LayerNorm factor, Newton steps of the integer square root) is counted separately: it does not scale with the row length.
"""

from __future__ import annotations

from dataclasses import dataclass

from tstack.errors import TstackError
from tstack.records import Addable

ISQRT_NEWTON_STEPS = 6  # Newton steps of the integer square root: exact for n < 2**48 from 2**ceil(bits/2) (Alg. 4)


@dataclass(frozen=True)
class IntCounts(Addable):
    """Integer operations of one kind each: multiplies, adds/subtracts, shifts, comparisons (max/min/abs/sign), divides.

    Adding IntCounts adds each count; ``scaled(k)`` (or ``* k``) multiplies each.
    """

    mul: int = 0
    add: int = 0
    shift: int = 0
    cmp: int = 0
    div: int = 0

    def scaled(self, k: int) -> IntCounts:
        return self * k

    @property
    def total(self) -> int:
        return self.mul + self.add + self.shift + self.cmp + self.div


@dataclass(frozen=True)
class IntOpCost:
    """Integer work of one nonlinear op on a (rows, cols) tensor whose reductions run along cols."""

    name: str
    per_element: IntCounts
    per_row: IntCounts
    passes: int

    def counts(self, rows: int, cols: int) -> IntCounts:
        """All integer operations for ``rows`` rows of ``cols`` elements."""
        if rows < 0 or cols < 0:
            raise TstackError(f"rows and cols must be >= 0 for {self.name}; got rows={rows}, cols={cols}")
        return self.per_element.scaled(rows * cols) + self.per_row.scaled(rows)


_REQUANT = IntCounts(mul=1, add=1, shift=1, cmp=2)  # (x*m + 2**(e-1)) >> e, then saturate (I-BERT Eq. 4, dyadic)
# i-exp with q_ln2 = 2**m (Alg. 3): z = (-x) >> m; r = x + (z << m); ((r + q_b)^2 + q_c) >> z
_EXP = IntCounts(mul=1, add=4, shift=3)
# i-GELU (Alg. 2): requant in; t = q >> k; sgn (2 cmp); |t| (1 cmp); min(|t|, -q_b); (. + q_b)^2 + q_c; * sgn;
# (. + q_1) >> k2; * q; requant out
_GELU = _REQUANT + IntCounts(shift=1, cmp=4, add=1, mul=1) + IntCounts(add=1, mul=1) + IntCounts(add=1, shift=1, mul=1) \
    + _REQUANT
# i-Softmax: + mask, max (pass 1); - max, requant, i-exp, sum (pass 2); * factor, round, >> (F - bits), min (pass 3)
_SOFTMAX = IntCounts(add=1, cmp=1) + IntCounts(add=1) + _REQUANT + _EXP + IntCounts(add=1) + IntCounts(mul=1, add=1, shift=1,
                                                                                                      cmp=1)
# i-LayerNorm: sum (pass 1); y = x - mean, sum y^2 (pass 2); (y * factor) >> (F - P), * gamma + beta, requant (pass 3)
_LAYERNORM = IntCounts(add=1) + IntCounts(add=2, mul=1) + IntCounts(mul=2, shift=1, add=1) + _REQUANT
# per row: mean = sum // H; max(var, 1); isqrt: leading-zero count, 2**((bits + 1) >> 1), then per Newton step
# x = min(x, (x + n // x) >> 1); factor = 2**F // std
_LN_ROW = IntCounts(div=2, cmp=1) + IntCounts(cmp=1, add=1, shift=2) + IntCounts(div=1, add=1, shift=1,
                                                                                  cmp=1).scaled(ISQRT_NEWTON_STEPS)

INT_OP_COSTS: dict[str, IntOpCost] = {
    "requant": IntOpCost("requant", _REQUANT, IntCounts(), passes=1),
    "residual": IntOpCost("residual", _REQUANT.scaled(2) + IntCounts(add=1), IntCounts(), passes=1),
    "gelu": IntOpCost("gelu", _GELU, IntCounts(), passes=1),
    "exp": IntOpCost("exp", _EXP, IntCounts(), passes=1),
    "softmax": IntOpCost("softmax", _SOFTMAX, IntCounts(div=1), passes=3),  # one divide per row: 2**F // sum
    "layernorm": IntOpCost("layernorm", _LAYERNORM, _LN_ROW, passes=3),
}


def int_op_cost(name: str) -> IntOpCost:
    """The integer cost record of op ``name``; a TstackError listing the known ops otherwise."""
    try:
        return INT_OP_COSTS[name]
    except KeyError:
        raise TstackError(f"integer op {name!r} unknown; known: {', '.join(sorted(INT_OP_COSTS))}") from None
