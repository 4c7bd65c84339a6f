"""Accuracy of an integer model against its float model on real text: sentence-embedding cosine and neighbour rankings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tstack.errors import TstackError
from tstack.integer.model import IntModel, dequantize, int_forward
from tstack.minilm import encode, sentence_embeddings

TOP_K = 5
MAX_TEXT_BYTES = 16 << 20  # a texts file larger than this is refused (the shipped sentences are 40 kB)
MAX_TEXTS = 100_000
COMPARE_BYTES_PER_PAIR = 48  # compare(): similarity matrices, masks, ranks of the upper triangle


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
               batch: int = 64, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Sentence embeddings (n, H) of the float model (``imodel`` None) or of the integer model; ``progress(1)`` per
    batch."""
    out = []
    for i in range(0, len(texts), batch):
        enc = encode(tokenizer, list(texts[i:i + batch]), max_length)
        if imodel is None:
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
        else:
            hidden = dequantize(imodel, int_forward(imodel, enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")))
        out.append(sentence_embeddings(hidden, enc["attention_mask"]))
        if progress is not None:
            progress(1)
    return torch.cat(out)


def compare_bytes(n: int) -> float:
    """Peak bytes of ``compare`` on ``n`` texts: it holds several n × n matrices at once."""
    return float(COMPARE_BYTES_PER_PAIR) * n * n


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
    top1 = float((top_r[:, 0] == top_t[:, 0]).double().mean())
    return Accuracy(n=n, cos_mean=float(cos.mean()), cos_min=float(cos.min()), top1=top1, topk_overlap=overlap,
                    spearman=spearman)


def split_sentences() -> tuple[list[str], list[str]]:
    """The shipped sentences split in two disjoint halves: (calibration, evaluation)."""
    from tstack.data import sentences

    texts = sentences()
    return texts[0::2], texts[1::2]


def read_texts(path: str, option: str = "--texts") -> list[str]:
    """Texts from a UTF-8 file, one per non-empty line; a one-line TstackError naming ``option`` for a missing,
    unreadable, binary, empty or too large file."""
    where = f"{option}={str(path)[:200]!r}"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise TstackError(f"{where} cannot be read: {e.strerror or type(e).__name__}") from None
    if len(raw) > MAX_TEXT_BYTES:
        raise TstackError(f"{where} is larger than {MAX_TEXT_BYTES >> 20} MiB; give at most that much text")
    if b"\0" in raw:
        raise TstackError(f"{where} is a binary file (it holds NUL bytes); give UTF-8 text, one text per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TstackError(f"{where} is not UTF-8 text (byte {e.start}); give UTF-8 text, one text per line") from None
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise TstackError(f"{where} holds no non-empty lines")
    if len(texts) > MAX_TEXTS:
        raise TstackError(f"{where} holds {len(texts)} texts; at most {MAX_TEXTS} are allowed")
    return texts
