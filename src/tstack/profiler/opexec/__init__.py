"""One PyTorch implementation per Op kind / registered kernel, at the Op's shapes and dtype.

``prepare(op, cfg)`` allocates every buffer once (calibrated inputs from ``values``, outputs,
scratch) and returns a ``PreparedOp`` whose ``run()`` launches the kernel on those buffers with
``out=`` variants or in place, so a timed loop of ``run()`` does no allocation (see
``runtime`` for why). ``reference(op, inputs)`` computes the same outputs with explicit
formulas in float64, for the tests.

Shapes (002 Table 2b convention, see ``workload.formulas``):

- ``gemm``: C (M×N) = A (M×K) · B (K×N), ``torch.mm(out=)``; ``bgemm`` the same per batch entry,
  ``torch.bmm(out=)``. The Op's name (which Linear, which B-GEMM) does not change the kernel.
  int8: ``torch._int_mm`` (int8 × int8 → int32; the requantization the cost model assumes to be
  fused is not run); an int8 ``bgemm`` launches one ``_int_mm`` per batch entry, as PyTorch has
  no batched int8 GEMM. On CUDA ``_int_mm`` needs M > 16 and K, N multiples of 8: other shapes
  raise TstackError.
- element-wise and reduction kernels (``formulas.KERNELS``): a rows×cols tensor at the Op's
  dtype; per-column vectors (bias, γ, β) of cols; LayerNorm statistics as PyTorch keeps them.
  Kernels that the cost model counts as one fused kernel but that eager PyTorch has no single
  kernel for run as the fewest in-place launches: bias+activation is an add into the output
  then the activation in place; gated activations are the activation then a multiply in place;
  RMSNorm is a row norm, a few row-sized ops and two multiplies; rotary embedding is a multiply
  and two ``addcmul`` on the halves (rotate-half over the whole row, angles per column).
- fused attention (``attn.sdpa``, label ``fusion`` = flash-attention): ``F.scaled_dot_product_attention`` at the
  fused op's dims, forward or (any other pass) its backward through autograd; see ``attention``.
- ``gather``: an embedding lookup (0 FLOPs) is ``index_select(out=)`` from a table of ``table``
  rows (the forward Op does not record its table size today: the table then has ``rows`` rows,
  which reads the same bytes); its backward (FLOPs > 0, dims with ``table``) zero-fills the table
  gradient and ``index_add_``s the rows into it.
- optimizer stages on flat fp32 tensors of ``params`` elements: LAMB stage 1 and 2 and the
  norms with torch ops (no fused LAMB in PyTorch), Adam as ``torch._fused_adamw_``, SGD with
  momentum as ``torch._fused_sgd_`` (fixed step 1, learning rate 1e-4).
- copies: ``grad-to-master`` unscales a half-precision gradient into fp32 (one ``mul(out=)``),
  ``master-to-model`` casts fp32 weights to half (``copy_``). The Op records only fp32, so the
  half type is fp16 (bf16 would move the same bytes).
"""

from tstack.profiler.opexec import attention, copies, gemm, norms, optimizer, pointwise  # noqa: F401  (each registers its builders)
from tstack.profiler.opexec.core import (
    BUILDERS,
    DROPOUT_P,
    DTYPES,
    REFERENCES,
    PreparedOp,
    has_implementation,
    implementation_key,
    prepare,
    reference,
)

__all__ = ["BUILDERS", "DROPOUT_P", "DTYPES", "REFERENCES", "PreparedOp", "has_implementation", "implementation_key",
           "prepare", "reference"]
