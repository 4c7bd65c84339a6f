"""Shipped English texts (original, CC0 1.0) for measuring attention sparsity and embedding accuracy on real inputs."""

from __future__ import annotations

import functools
from importlib import resources

from tstack.errors import TstackError

SEPARATOR = "---"


def _read(name: str) -> str:
    """The text of the packaged file ``name``; a TstackError if it is missing or unreadable."""
    try:
        return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError, UnicodeDecodeError) as e:
        raise TstackError(f"tstack data file {name!r} is missing or unreadable ({e}): reinstall tstack") from e


@functools.cache
def _sentences() -> tuple[str, ...]:
    lines = tuple(s for s in (line.strip() for line in _read("sentences.txt").splitlines()) if s)
    if not lines:
        raise TstackError("tstack data file 'sentences.txt' holds no sentences: reinstall tstack")
    return lines


@functools.cache
def _documents() -> tuple[str, ...]:
    docs: list[str] = []
    current: list[str] = []
    for line in _read("documents.txt").splitlines() + [SEPARATOR]:
        if line.strip() == SEPARATOR:
            text = "\n".join(current).strip()
            if text:
                docs.append(text)
            current = []
        else:
            current.append(line.rstrip())
    if not docs:
        raise TstackError("tstack data file 'documents.txt' holds no documents: reinstall tstack")
    return tuple(docs)


def sentences() -> list[str]:
    """The shipped sentences, one string each (whitespace stripped, empty lines skipped); a new list on every call."""
    return list(_sentences())


def documents() -> list[str]:
    """The shipped multi-paragraph documents (paragraphs kept, separated by blank lines); a new list on every call."""
    return list(_documents())
