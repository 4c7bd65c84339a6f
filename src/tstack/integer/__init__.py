"""Integer-only (I-BERT) inference: integer kernels, their int64 oracles, model conversion and per-op integer costs."""
