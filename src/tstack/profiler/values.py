"""The value calibrator (NLP-Perf, 003 §IV): random inputs in ranges where no op yields inf, NaN or denormals.

Why: a subnormal (denormal) float operand or result takes a microcode assist on x86 CPUs, so an
op on subnormals runs many times slower than the same op on normal numbers (003 §IV: "hundreds
of times"; ``benchmarks/denormals.py`` prints the ratio: on this machine, 1 thread, a
256×256×256 fp32 GEMM whose results are subnormal ran 190-340× slower, a scale 19-31×, a softmax
backward 14×, and FTZ/DAZ brought each back to its calibrated time). Random weights drawn
at the wrong scale, or a chain of ops that shrinks values, would time the assist instead of the
kernel; values that overflow to inf or NaN take other slow paths and make the output meaningless.
GPUs run denormals at full speed (003 §IV, footnote 2).

How: each op's inputs are drawn so that its outputs are O(1), whatever its shapes:

- GEMM operands: A ~ N(0, 1/K) and B ~ N(0, 1), so each output (a sum of K products) is ~N(0, 1)
  at any reduction depth K, in fp32 and within fp16's range (max 65504); int8 operands in [-8, 8]
  (int32 accumulation cannot overflow below K = 2^25).
- activations, gradients, softmax scores: N(0, 1); softmax's largest-minus-smallest score stays
  far below the 87 where exp() would reach the subnormal range. Additive attention masks are 0 or
  -10000: exp(-10000) is exactly 0, not subnormal.
- softmax-backward's y: softmax of N(0, 1) scores (rows sum to 1, every entry positive).
- LayerNorm/RMSNorm inputs: N(0, 1) scaled per row by [0.5, 2] and shifted per row by [-1, 1], so
  every row has a non-trivial variance (rstd is finite and normal); γ in [0.5, 1.5], β ~ N(0, 0.1).
- optimizer state: weights N(0, 0.05²), gradients N(0, 0.01²), m ~ N(0, 0.001²), v (second
  moment) positive in [1e-6, 1e-4], so √v and v's updates stay normal; learning rate 1e-4 and a
  fixed step 1, so repeating an in-place update thousands of times drifts nothing to inf.
- mixed-precision copies: loss-scaled fp16 gradients N(0, 1) unscaled by 2^-10.

``Values(scale=...)`` multiplies every data tensor (not γ, masks, probabilities or indices):
scale 1 is the calibrated draw; a tiny or huge scale reproduces what uncalibrated weights do
(tests/test_values.py). ``check_finite_normal`` counts inf, NaN and subnormal values by
inspecting the bits (exponent field), not by arithmetic: with DAZ on, a comparison would read a
subnormal as zero and miss it.

fp16 has a narrow exponent range (smallest normal 6.1e-5), so some fp16 *outputs* are
subnormal whatever the inputs: softmax probabilities below 6.1e-5 (rows longer than a few
thousand, e.g. a vocabulary) or GeLU's far negative tail. They are counted and reported, not
treated as calibration failures: the CPU kernels compute in fp32, where these values are normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tstack.profiler.runtime import load_torch
from tstack.records import Addable

MASK_VALUE = -10000.0  # additive attention mask: exp(MASK_VALUE) underflows to exactly 0
INT8_RANGE = 8  # int8 GEMM operands in [-INT8_RANGE, INT8_RANGE]


@dataclass(frozen=True)
class Problems(Addable):
    """Counts of inf, NaN and subnormal values among ``elements`` floating-point values; adding Problems adds each count."""

    elements: int = 0
    inf: int = 0
    nan: int = 0
    subnormal: int = 0

    @property
    def finite(self) -> bool:
        return self.inf == 0 and self.nan == 0

    @property
    def ok(self) -> bool:
        return self.finite and self.subnormal == 0

    def __str__(self) -> str:
        return f"{self.inf} inf, {self.nan} NaN, {self.subnormal} subnormal of {self.elements} values"


def _bit_layout(dtype):
    torch = load_torch()
    return {
        torch.float32: (torch.int32, 0x7F800000, 0x007FFFFF),
        torch.float16: (torch.int16, 0x7C00, 0x03FF),
        torch.bfloat16: (torch.int16, 0x7F80, 0x007F),
        torch.float64: (torch.int64, 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    }.get(dtype)


def check_finite_normal(tensor) -> Problems:
    """Count inf, NaN and subnormal values of a floating-point tensor (other dtypes: no problems)."""
    layout = _bit_layout(tensor.dtype)
    if layout is None:
        return Problems(tensor.numel())
    int_dtype, exp_mask, mant_mask = layout
    bits = tensor.detach().contiguous().view(int_dtype)
    exponent = bits & exp_mask
    mantissa_set = (bits & mant_mask) != 0
    zero_exp = exponent == 0
    max_exp = exponent == exp_mask
    return Problems(tensor.numel(), int((max_exp & ~mantissa_set).sum()), int((max_exp & mantissa_set).sum()),
                    int((zero_exp & mantissa_set).sum()))


@dataclass(frozen=True)
class Values:
    """The calibrated distributions; ``scale`` multiplies every data tensor (1: calibrated)."""

    scale: float = 1.0


class Draw:
    """Random tensors for one op: drawn on the CPU from one seeded generator (the same values on
    every device), converted to the target dtype and moved to the device."""

    def __init__(self, seed: int, device, values: Values | None = None) -> None:
        torch = load_torch()
        self.torch = torch
        self.gen = torch.Generator().manual_seed(seed)
        self.device = device
        self.values = values or Values()

    def _to(self, t, dtype, normal_in=None):
        """float64 draw → target dtype on the device; values too small to be normal in the target
        dtype (or in ``normal_in``, a dtype the values are cast to later) become 0: an N(0, 1) draw
        in fp16 has ~5 subnormals per 10⁵ values otherwise."""
        if dtype.is_floating_point and t.is_floating_point():
            tiny = max(self.torch.finfo(dtype).tiny, self.torch.finfo(normal_in).tiny if normal_in else 0.0)
            t = t.masked_fill(t.abs() < tiny, 0.0)
        return t.to(dtype=dtype).to(self.device)

    def normal(self, shape, dtype, std: float = 1.0, mean: float = 0.0, data: bool = True,
               normal_in=None):
        """N(mean, std²); a data tensor is multiplied by ``Values.scale``."""
        t = self.torch.randn(shape, generator=self.gen, dtype=self.torch.float64) * std + mean
        if data:
            t = t * self.values.scale
        return self._to(t, dtype, normal_in)

    def uniform(self, shape, dtype, lo: float, hi: float, data: bool = False):
        t = self.torch.rand(shape, generator=self.gen, dtype=self.torch.float64) * (hi - lo) + lo
        if data:
            t = t * self.values.scale
        return self._to(t, dtype)

    def integers(self, shape, dtype, lo: int, hi: int):
        """Integers in [lo, hi)."""
        return self.torch.randint(lo, hi, shape, generator=self.gen, dtype=self.torch.int64).to(dtype).to(self.device)

    def bernoulli(self, shape, keep: float):
        """A bool mask, True with probability ``keep``."""
        return (self.torch.rand(shape, generator=self.gen) < keep).to(self.device)

    # --- the calibrated roles -------------------------------------------------------------------------
    def gemm_a(self, shape, dtype, K: int):
        if dtype == self.torch.int8:
            return self.integers(shape, dtype, -INT8_RANGE, INT8_RANGE + 1)
        return self.normal(shape, dtype, 1.0 / math.sqrt(max(K, 1)))

    def gemm_b(self, shape, dtype):
        if dtype == self.torch.int8:
            return self.integers(shape, dtype, -INT8_RANGE, INT8_RANGE + 1)
        return self.normal(shape, dtype)

    def activation(self, shape, dtype):
        return self.normal(shape, dtype)

    def norm_input(self, rows: int, cols: int, dtype):
        """Rows with spread in [0.5, 2] and offset in [-1, 1]: non-trivial variance per row."""
        torch = self.torch
        base = torch.randn((rows, cols), generator=self.gen, dtype=torch.float64)
        spread = torch.rand((rows, 1), generator=self.gen, dtype=torch.float64) * 1.5 + 0.5
        offset = torch.rand((rows, 1), generator=self.gen, dtype=torch.float64) * 2 - 1
        return self._to((base * spread + offset) * self.values.scale, dtype)

    def gamma(self, cols: int, dtype):
        return self.uniform((cols,), dtype, 0.5, 1.5)

    def beta(self, cols: int, dtype):
        return self.normal((cols,), dtype, 0.1, data=False)

    def attention_mask(self, cols: int, dtype):
        """Additive mask over keys: the last quarter (at least one key kept) set to MASK_VALUE."""
        m = self.torch.zeros(cols, dtype=self.torch.float64)
        keep = max(1, cols - cols // 4)
        m[keep:] = MASK_VALUE
        return self._to(m, dtype)

    def probabilities(self, rows: int, cols: int, dtype):
        scores = self.torch.randn((rows, cols), generator=self.gen, dtype=self.torch.float64)
        return self._to(self.torch.softmax(scores, dim=-1), dtype)


class Pool:
    """Pre-drawn fp32 samples (N(0, 1) and U[0, 1)) that ``PooledDraw`` hands out as scaled slices.

    Drawing a large tensor element by element in float64 (``Draw``) costs ~25 ns per value, more than
    timing most kernels; the calibration grid prepares thousands of ops, so it draws once and reuses.
    N(0, 1) samples smaller than ``FLOOR`` in magnitude are set to 0 (so ``x·std`` stays normal for
    any std ≥ ``MIN_STD``); uniform samples are multiples of 2⁻²⁴, so affine maps of them stay normal.
    """

    FLOOR = 1e-20
    MIN_STD = 1e-17

    def __init__(self, size: int, seed: int = 0) -> None:
        torch = load_torch()
        gen = torch.Generator().manual_seed(seed)
        self.size = int(size)
        normal = torch.randn(self.size, generator=gen, dtype=torch.float32)
        self.normal = normal.masked_fill_(normal.abs() < self.FLOOR, 0.0)
        self.uniform = torch.rand(self.size, generator=gen, dtype=torch.float32)


def pool_size(ops, limit: int = (1 << 26) + (1 << 22)) -> int:
    """Pool values for ``ops``: their largest tensor (GEMM operands, rows × cols, parameters) and a margin, at most
    ``limit`` (larger tensors fall back to ``Draw``)."""
    need = 1
    for op in ops:
        M, N, K, batch = op.gemm_shape
        need = max(need, batch * max(M * K, K * N, M * N), op.dim("rows", 0) * op.dim("cols", 0), op.dim("params", 0),
                   op.dim("table", 0) * op.dim("cols", 0))
    return min(limit, need + max(need // 16, 1024))


class PooledDraw(Draw):
    """``Draw`` with the same calibrated distributions, served from a ``Pool`` (CPU, fp32 pool; tensors up
    to the pool's size): each tensor is a randomly placed slice of the pool, scaled and shifted into a new
    tensor. Tensors larger than the pool, other devices and tiny scales fall back to ``Draw``. Used by
    ``tstack calibrate``; a kernel's speed does not depend on which normal values it reads."""

    def __init__(self, seed: int, device, values: Values | None = None, pool: Pool | None = None) -> None:
        super().__init__(seed, device, values)
        self.pool = pool

    def _slice(self, kind: str, shape):
        n = int(math.prod(shape)) if shape else 1
        if self.pool is None or n > self.pool.size or self.torch.device(self.device).type != "cpu":
            return None
        off = int(self.torch.randint(0, self.pool.size - n + 1, (1,), generator=self.gen))
        return getattr(self.pool, kind)[off:off + n].view(shape)

    def _finish(self, t, dtype, normal_in=None):
        if dtype != self.torch.float32 or normal_in is not None:
            return self._to(t, dtype, normal_in)
        return t.to(self.device)

    def normal(self, shape, dtype, std: float = 1.0, mean: float = 0.0, data: bool = True, normal_in=None):
        scale = std * (self.values.scale if data else 1.0)
        base = self._slice("normal", shape) if abs(scale) >= Pool.MIN_STD and abs(scale) < 1e30 else None
        if base is None:
            return super().normal(shape, dtype, std, mean, data, normal_in)
        t = base * scale
        if mean:
            t += mean
        return self._finish(t, dtype, normal_in)

    def uniform(self, shape, dtype, lo: float, hi: float, data: bool = False):
        base = self._slice("uniform", shape) if self.values.scale == 1.0 else None
        if base is None:
            return super().uniform(shape, dtype, lo, hi, data)
        return self._finish(base * (hi - lo) + lo, dtype)

    def bernoulli(self, shape, keep: float):
        base = self._slice("uniform", shape)
        return super().bernoulli(shape, keep) if base is None else (base < keep).to(self.device)

    def norm_input(self, rows: int, cols: int, dtype):
        base = self._slice("normal", (rows, cols)) if self.values.scale == 1.0 else None
        if base is None:
            return super().norm_input(rows, cols, dtype)
        spread = self.uniform((rows, 1), self.torch.float32, 0.5, 2.0)
        offset = self.uniform((rows, 1), self.torch.float32, -1.0, 1.0)
        return self._finish(base * spread + offset, dtype)

    def probabilities(self, rows: int, cols: int, dtype):
        base = self._slice("normal", (rows, cols))
        if base is None:
            return super().probabilities(rows, cols, dtype)
        return self._to(self.torch.softmax(base, dim=-1), dtype)
