"""Integer operation counts of the I-BERT kernels, per element and per row, for hardware models to cost.

Counts follow the algorithms of Kim et al., "I-BERT: Integer-only BERT Quantization" (ICML 2021), Alg. 1-4, as tstack's
integer kernels implement them. ``passes`` is the number of sweeps over a row that the op needs (a reduction must finish
before the values that depend on it can be produced), which is what a normalization unit that reduces over accumulator
rows serializes on. Per-row work (a division for the softmax factor, Newton steps of the integer square root) is counted
separately because it does not scale with the row length.
"""

from __future__ import annotations

from dataclasses import dataclass

from tstack.errors import TstackError

ISQRT_NEWTON_STEPS = 10  # bounded Newton iterations of the integer square root on a 32-bit variance (I-BERT Alg. 4)


@dataclass(frozen=True)
class IntCounts:
    """Integer operations of one kind each: multiplies, adds/subtracts, shifts, comparisons (max/min/abs/sign), divides."""

    mul: int = 0
    add: int = 0
    shift: int = 0
    cmp: int = 0
    div: int = 0

    def __add__(self, other: IntCounts) -> IntCounts:
        return IntCounts(self.mul + other.mul, self.add + other.add, self.shift + other.shift, self.cmp + other.cmp,
                         self.div + other.div)

    def scaled(self, k: int) -> IntCounts:
        return IntCounts(self.mul * k, self.add * k, self.shift * k, self.cmp * k, self.div * k)

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


_REQUANT = IntCounts(mul=1, shift=1, add=1, cmp=2)  # dyadic m*q >> s with round-half-up, saturate to [-128, 127]
_POLY = IntCounts(mul=1, add=2)  # (q + q_b)^2 + q_c  (I-BERT Alg. 1)
_ERF = IntCounts(cmp=2, mul=1) + _POLY  # sign, clip |q| to -q_b, poly, times sign (Alg. 2)
_EXP = IntCounts(mul=2, add=1, shift=2) + _POLY  # z = (-q * inv_ln2) >> k, p = q + z*q_ln2, poly(p) >> z (Alg. 3)

INT_OP_COSTS: dict[str, IntOpCost] = {
    "requant": IntOpCost("requant", _REQUANT, IntCounts(), passes=1),
    "gelu": IntOpCost("gelu", _ERF + IntCounts(mul=1, add=1) + _REQUANT, IntCounts(), passes=1),  # q*(erf + q_1)
    "exp": IntOpCost("exp", _EXP, IntCounts(), passes=1),
    # max pass; subtract max, exp, sum pass; one divide per row for 2^M / sum, then multiply and shift to 8 bits.
    "softmax": IntOpCost("softmax", IntCounts(cmp=1, add=2, mul=1, shift=1) + _EXP, IntCounts(div=1), passes=3),
    # sum pass (mean); subtract mean, square, sum pass (variance); integer sqrt per row; divide by std, affine, requant.
    "layernorm": IntOpCost("layernorm", IntCounts(add=3, mul=1, div=1) + IntCounts(mul=1, add=1) + _REQUANT,
                           IntCounts(div=ISQRT_NEWTON_STEPS + 1, add=2 * ISQRT_NEWTON_STEPS, shift=ISQRT_NEWTON_STEPS,
                                     cmp=ISQRT_NEWTON_STEPS), passes=3),
}


def int_op_cost(name: str) -> IntOpCost:
    """The integer cost record of op ``name``; a TstackError listing the known ops otherwise."""
    try:
        return INT_OP_COSTS[name]
    except KeyError:
        raise TstackError(f"integer op {name!r} unknown; known: {', '.join(sorted(INT_OP_COSTS))}") from None
