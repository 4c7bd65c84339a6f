"""Saving and loading integer models: nested dataclasses as plain dicts of tensors and numbers (``weights_only`` loading).

A file is read with ``torch.load(weights_only=True)`` (no code runs while unpickling), then checked record by record
against the dataclasses' annotated field types (exact field names, ints, floats, tensors, tuples of the right length),
and finally run on two tokens, so that a file that is not a tstack integer model ends in one ``TstackError`` line
rather than a failure deep in the forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import torch

from tstack.errors import TstackError
from tstack.integer import layer, model, nonlinear, ops, quant

FORMAT = "tstack-int/1"
MAX_NAME = 200
_TYPES = {c.__name__: c for c in (model.IntModel, model.IntEmbeddings, layer.IntLayer, layer.QuantConfig, ops.IntLinear,
                                  quant.Dyadic, nonlinear.GeluParams, nonlinear.SoftmaxParams, nonlinear.LayerNormParams)}


class _Bad(Exception):
    """A structural problem at a path inside the file."""


def _encode(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return {"__type__": type(v).__name__, **{f.name: _encode(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x) for x in v]}
    return v


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(v: Any) -> str:
    return type(v).__name__


def _decode(v: Any, expected: Any, where: str) -> Any:
    """``v`` decoded as ``expected`` (an annotation of the record types); ``_Bad`` naming ``where`` otherwise."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _decode(v, option, where)
            except _Bad:
                continue
        raise _Bad(f"{where} is a {_kind(v)}; expected {' or '.join(getattr(a, '__name__', str(a)) for a in args)}")
    if origin is tuple:
        items = v.get("__tuple__") if isinstance(v, dict) and set(v) == {"__tuple__"} else None
        if not isinstance(items, list):
            raise _Bad(f"{where} is a {_kind(v)}; expected a tuple")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(x, args[0], f"{where}[{i}]") for i, x in enumerate(items))
        if len(items) != len(args):
            raise _Bad(f"{where} has {len(items)} entries; expected {len(args)}")
        return tuple(_decode(x, a, f"{where}[{i}]") for i, (x, a) in enumerate(zip(items, args, strict=True)))
    if dataclasses.is_dataclass(expected):
        if not isinstance(v, dict) or v.get("__type__") != expected.__name__:
            found = v.get("__type__") if isinstance(v, dict) else _kind(v)
            raise _Bad(f"{where} is {str(found)[:40]!r}; expected a {expected.__name__} record")
        names = [f.name for f in dataclasses.fields(expected)]
        keys = set(v) - {"__type__"}
        if keys != set(names):
            missing, extra = sorted(set(names) - keys), sorted(str(k)[:40] for k in keys - set(names))
            raise _Bad(f"{where} ({expected.__name__}) has " + "; ".join(
                ([f"missing fields {', '.join(missing)}"] if missing else []) +
                ([f"unknown fields {', '.join(extra[:5])}"] if extra else [])))
        hints = _hints(expected)
        fields = {n: _decode(v[n], hints[n], f"{where}.{n}") for n in names}
        try:
            return expected(**fields)
        except (TstackError, TypeError, ValueError) as e:
            raise _Bad(f"{where} ({expected.__name__}): {e}") from None
    if expected is torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise _Bad(f"{where} is a {_kind(v)}; expected a tensor")
        return v
    if expected is bool:
        if not isinstance(v, bool):
            raise _Bad(f"{where} is a {_kind(v)}; expected true or false")
        return v
    if expected is int:
        if isinstance(v, bool) or not isinstance(v, int) or not -(2**63) <= v < 2**63:
            raise _Bad(f"{where} is {str(v)[:40] if isinstance(v, int) else 'a ' + _kind(v)}; expected a 64-bit integer")
        return v
    if expected is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"{where} is a {_kind(v)}; expected a number")
        return float(v)
    if expected is str:
        if not isinstance(v, str) or not 0 < len(v) <= MAX_NAME or not v.isprintable():
            raise _Bad(f"{where} must be a printable string of 1 to {MAX_NAME} characters")
        return v
    raise _Bad(f"{where}: cannot check a field of type {expected!r}")  # a record type this reader does not know


def save(m: model.IntModel, path: Path) -> None:
    """Write the integer model to ``path`` (a torch file; caller handles atomicity)."""
    torch.save({"format": FORMAT, "model": _encode(m)}, path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else "")[:200]


def _probe(m: model.IntModel) -> None:
    """Run the model on two tokens: tensors of the wrong shape or dtype fail here, not in the caller's forward pass."""
    vocab = m.embeddings.word.shape[0] if m.embeddings.word.dim() == 2 else 0
    if vocab < 1 or m.embeddings.position.dim() != 2 or m.embeddings.position.shape[0] < 2:
        raise ValueError("the embedding tables must be 2-D with at least one token and two positions")
    ids = torch.tensor([[0, min(1, vocab - 1)]])
    model.int_forward(m, ids, torch.ones_like(ids))


def load(path: Path) -> model.IntModel:
    """Read an integer model written by ``save``; one-line TstackError for a missing, foreign or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise TstackError(f"integer model file {str(path)!r} does not exist or is not a regular file")
    from tstack.profiler.memory import HEADROOM, available_bytes
    from tstack.report import units

    size, free = path.stat().st_size, available_bytes("cpu")
    if size == 0:
        raise TstackError(f"integer model file {str(path)!r} is empty")
    if 2 * size > HEADROOM * free:
        raise TstackError(f"integer model file {str(path)!r} holds {units.si(size, 'B')}; loading it needs about twice "
                          f"that, and {units.si(free, 'B')} of memory is available")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the weights-only unpickler's notes on foreign pickle protocols
            data = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise TstackError(f"{str(path)!r} is not a tstack integer model: it holds objects other than tensors and plain "
                          "values, or is not a torch file at all (tstack never runs code from a model file)") from None
    except Exception as e:  # whatever the unpickler makes of foreign bytes, one line
        raise TstackError(f"{str(path)!r} is not a tstack integer model ({type(e).__name__}: {_first_line(e)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "model" not in data:
        raise TstackError(f"{str(path)!r} is not a tstack integer model (expected format {FORMAT})")
    try:
        m = _decode(data["model"], model.IntModel, "model")
    except _Bad as e:
        raise TstackError(f"{str(path)!r} is not a valid tstack integer model: {e}") from None
    try:
        _probe(m)
    except Exception as e:  # the tensors of a crafted file may break any kernel, in any way
        raise TstackError(f"{str(path)!r} is not a valid tstack integer model: a two-token forward pass fails "
                          f"({type(e).__name__}: {_first_line(e)})") from None
    return m
