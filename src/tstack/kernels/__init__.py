"""NLP-Opt kernels: reference models, holistic partitioning, zero skipping and the drop-in ``optimize`` API (003 §III-§IV)."""

from tstack.kernels.api import (
    Params,
    PartitionedAttention,
    PartitionedMemoryAttention,
    SplitFeedForward,
    attention,
    feed_forward,
    optimize,
    self_attention,
)
from tstack.kernels.partition import Plan, lazy_softmax_attention, mha, split_ffn
from tstack.kernels.reference import DecoderLayer, EncoderLayer, MemoryNetwork

__all__ = [
    "DecoderLayer", "EncoderLayer", "MemoryNetwork", "Params", "PartitionedAttention", "PartitionedMemoryAttention", "Plan",
    "SplitFeedForward", "attention", "feed_forward", "lazy_softmax_attention", "mha", "optimize", "self_attention",
    "split_ffn",
]
