"""Accuracy of an integer model against its float model on real text: sentence-embedding cosine and neighbour rankings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tstack.errors import TstackError
from tstack.integer.model import IntModel, dequantize, int_forward
from tstack.minilm import encode, sentence_embeddings

TOP_K = 5


@dataclass(frozen=True)
class Accuracy:
    """Integer vs float sentence embeddings of ``n`` texts."""

    n: int
    cos_mean: float  # cosine between the two embeddings of each text
    cos_min: float
    top1: float  # share of texts whose nearest other text is the same under both models
    topk_overlap: float  # mean share of the TOP_K nearest texts that both models agree on
    spearman: float  # rank correlation of all pairwise similarities


def embeddings(model: Any, imodel: IntModel | None, tokenizer: Any, texts: Sequence[str], max_length: int,
               batch: int = 64) -> torch.Tensor:
    """Sentence embeddings (n, H) of the float model (``imodel`` None) or of the integer model."""
    out = []
    for i in range(0, len(texts), batch):
        enc = encode(tokenizer, list(texts[i:i + batch]), max_length)
        if imodel is None:
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
        else:
            hidden = dequantize(imodel, int_forward(imodel, enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")))
        out.append(sentence_embeddings(hidden, enc["attention_mask"]))
    return torch.cat(out)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().to(torch.float64)


def compare(ref: torch.Tensor, test: torch.Tensor) -> Accuracy:
    """Accuracy of L2-normalized embeddings ``test`` against ``ref`` (same texts, same order)."""
    n = ref.shape[0]
    if n < TOP_K + 2:
        raise TstackError(f"accuracy needs at least {TOP_K + 2} texts; got {n}")
    cos = (ref * test).sum(-1)
    sim_r, sim_t = ref @ ref.T, test @ test.T
    eye = torch.eye(n, dtype=torch.bool)
    sim_r, sim_t = sim_r.masked_fill(eye, -2.0), sim_t.masked_fill(eye, -2.0)  # a text is not its own neighbour
    top_r, top_t = sim_r.topk(TOP_K, dim=1).indices, sim_t.topk(TOP_K, dim=1).indices
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top_r, top_t, strict=True)) / (n * TOP_K)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    rr, rt = _ranks(sim_r[upper]), _ranks(sim_t[upper])
    spearman = float(torch.corrcoef(torch.stack([rr, rt]))[0, 1])
    return Accuracy(n, float(cos.mean()), float(cos.min()), float((top_r[:, 0] == top_t[:, 0]).double().mean()),
                    overlap, spearman)


def split_sentences() -> tuple[list[str], list[str]]:
    """The shipped sentences split in two disjoint halves: (calibration, evaluation)."""
    from tstack.data import sentences

    texts = sentences()
    return texts[0::2], texts[1::2]


def read_texts(path: str) -> list[str]:
    """Texts from a file, one per non-empty line; a TstackError for a missing, unreadable or empty file."""
    try:
        with open(path, encoding="utf-8") as f:
            texts = [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise TstackError(f"--calibrate/--texts file {path!r} cannot be read: {e}") from None
    if not texts:
        raise TstackError(f"text file {path!r} holds no non-empty lines")
    return texts
