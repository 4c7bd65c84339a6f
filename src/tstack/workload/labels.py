"""Label values, spelled once: the 002 groups (Demystifying BERT Fig. 3/4) and the op names the workload emits.

The workload builder, the profiler's event mapping, the accelerator, the studies and the reports use these
names, so a group or an op is written the same way everywhere.
"""

from __future__ import annotations

# 002 groups (label key "group")
LINEAR_GEMM = "Linear GEMM"  # Q/K/V and output projections
FC_GEMM = "FC GEMM"  # the feed-forward GEMMs
ATTN_BGEMM = "Attn B-GEMM"  # QKᵀ scores and P·V context
SCALE_MASK_SM = "Scale+Mask+DR+SM"  # scale, mask, dropout, softmax between them
DR_RC_LN = "DR+RC+LN"  # dropout, residual add, LayerNorm after a sublayer
GELU = "GeLU"
LAMB = "LAMB"
MASTER_COPY = "Master copy"
EMBEDDING = "Embedding"
ATTENTION_OPS = (ATTN_BGEMM, SCALE_MASK_SM)
LINEAR_FC = (LINEAR_GEMM, FC_GEMM)

# op names (attention and feed-forward)
ATTN_SCORE = "attn.score"
ATTN_CONTEXT = "attn.context"
ATTN_OUT_PROJ = "attn.out_proj"
FFN_FC1 = "ffn.fc1"
FFN_FC2 = "ffn.fc2"

# A fused op joins the differing label values of the kernels it absorbed with this (workload.fusion).
LABEL_JOIN = " | "

# Fused attention, one kernel model for ``--attention sdpa`` and the fusion profiles' attention rule
# (workload.fusion.fuse_attention): the rule's name (label "fusion"), the suffix of the fused op's name
# (``attn.sdpa``: the kernel PyTorch calls scaled_dot_product_attention) and the forward kernel's labels.
FUSED_ATTENTION = "flash-attention"
SDPA = "sdpa"
FUSED_ATTENTION_GROUP = LABEL_JOIN.join((ATTN_BGEMM, SCALE_MASK_SM))
FUSED_ATTENTION_NLPFAST = LABEL_JOIN.join(("dot product", "softmax", "weighted sum"))
