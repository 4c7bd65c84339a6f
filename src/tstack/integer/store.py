"""Saving and loading integer models: nested dataclasses as plain dicts of tensors and numbers (``weights_only`` loading)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from tstack.errors import TstackError
from tstack.integer import layer, model, nonlinear, ops, quant

FORMAT = "tstack-int/1"
_TYPES = {c.__name__: c for c in (model.IntModel, model.IntEmbeddings, layer.IntLayer, layer.QuantConfig, ops.IntLinear,
                                  quant.Dyadic, nonlinear.GeluParams, nonlinear.SoftmaxParams, nonlinear.LayerNormParams)}


def _encode(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return {"__type__": type(v).__name__, **{f.name: _encode(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x) for x in v]}
    return v


def _decode(v: Any) -> Any:
    if isinstance(v, dict) and "__tuple__" in v:
        return tuple(_decode(x) for x in v["__tuple__"])
    if isinstance(v, dict) and "__type__" in v:
        cls = _TYPES.get(v["__type__"])
        if cls is None:
            raise TstackError(f"integer model file holds unknown record {v['__type__']!r}")
        return cls(**{k: _decode(x) for k, x in v.items() if k != "__type__"})
    return v


def save(m: model.IntModel, path: Path) -> None:
    """Write the integer model to ``path`` (a torch file; caller handles atomicity)."""
    torch.save({"format": FORMAT, "model": _encode(m)}, path)


def load(path: Path) -> model.IntModel:
    """Read an integer model written by ``save``; a TstackError for a missing or foreign file."""
    if not Path(path).is_file():
        raise TstackError(f"integer model file {str(path)!r} does not exist")
    try:
        data = torch.load(path, weights_only=True)
    except Exception as e:
        raise TstackError(f"{str(path)!r} is not a tstack integer model ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TstackError(f"{str(path)!r} is not a tstack integer model (expected format {FORMAT})")
    return _decode(data["model"])
