"""One bounded reader for tstack's YAML/JSON data files, name checks, and the local Hugging Face cache.

Every failure is one TstackError line naming the file (or the argument) and what is wrong:

- ``read_document`` refuses files over ``MAX_BYTES`` before reading them, YAML aliases (an alias bomb
  expands a few hundred bytes into gigabytes), over-long integer scalars (YAML's base-60 integers
  convert in quadratic time), text that is not UTF-8, parse errors and a top level that is not a mapping.
- ``check_name`` keeps names short, printable and free of rich-markup brackets.
- ``resolve_argument`` turns a command-line model/device/accelerator argument into a preset file or an
  existing path without ever raising a raw OSError, however long or odd the argument.
- ``hub_config`` finds ``config.json`` of a Hugging Face model id in the local hub cache (never the network).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tstack.errors import SpecError, UnknownNameError

MAX_BYTES = 1 << 20  # data files are a few KiB; anything over 1 MiB is refused unread
MAX_NAME = 200
MAX_ARGUMENT = 4096  # longer than any path the OS accepts (PATH_MAX)
MAX_INT_CHARS = 1000  # longest integer scalar a YAML file may hold
SUFFIXES = (".yaml", ".yml", ".json")
_HF_PART = r"[A-Za-z0-9_.\-]{1,96}"
_HF_ID = re.compile(rf"({_HF_PART})/({_HF_PART})")
_REVISION = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

T = TypeVar("T")


def show(value: Any, limit: int = 60) -> str:
    """repr of a value for an error message, cut to about ``limit`` characters (never raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        return f"<{value.bit_length()}-bit integer>"  # repr of a huge int is slow, or refused (> 4300 digits)
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"… ({len(value)} characters)"
    try:
        text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else _short_repr(value)
    except Exception:  # a repr must never turn a clear error into a traceback
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


def label(key: Any) -> str:
    """A mapping key as it appears in a dotted field path: as is when a short printable string, else its repr."""
    return key if isinstance(key, str) and len(key) <= 40 and key.isprintable() else show(key, 40)


def _short_repr(value: Any) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlevel, r.maxlong = 40, 40, 3, 40
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = r.maxfrozenset = 4
    return r.repr(value)


def check_name(field: str, value: Any, where: str = "") -> str:
    """``value`` when it is a valid name, else a SpecError naming the field, the value and what is allowed.

    A name is a non-empty printable string of at most MAX_NAME characters without ``[`` or ``]`` (rich markup)
    and with at most one ``/``, between two non-empty parts (a Hugging Face id ``org/name``).
    """
    ok = (isinstance(value, str) and 0 < len(value) <= MAX_NAME and value.isprintable()
          and "[" not in value and "]" not in value)
    if ok and "/" in value:
        org, _, rest = value.partition("/")
        ok = bool(org.strip()) and bool(rest.strip()) and "/" not in rest
    if not ok:
        raise SpecError([f"{field}={show(value, 40)} must be a printable string of 1 to {MAX_NAME} characters "
                         "without '[' or ']' and with at most one '/' (as in org/name)"], where)
    return value


# --- reading ----------------------------------------------------------------------------------------------

class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader without aliases and without over-long integers."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"found alias *{event.anchor} (aliases are not allowed)",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node: Any) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(None, None, f"integer of {len(node.value)} characters is too long",
                                                    node.start_mark)
        return super().construct_yaml_int(node)


_SafeLoader.add_constructor("tag:yaml.org,2002:int", _SafeLoader.construct_yaml_int)


def _where(error: Exception) -> str:
    line = getattr(error, "lineno", None)
    col = getattr(error, "colno", None)
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if line is None and mark is not None:
        line, col = mark.line + 1, mark.column + 1
    if line is None:
        return ""
    return f" (line {line}, column {col})" if col is not None else f" (line {line})"


def _problem(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    text = getattr(error, "msg", None) if isinstance(error, json.JSONDecodeError) else None
    text = text or getattr(error, "problem", None) or str(error) or type(error).__name__
    return " ".join(str(text).split())[:120]


def parse_text(text: str, fmt: str) -> Any:
    """The value of a YAML or JSON text (``fmt`` is "yaml" or "json"); raises what the parser raises."""
    if fmt == "json":
        return json.loads(text)
    loader = _SafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_document(path: str | Path, what: str) -> dict:
    """The mapping a YAML (or, for ``.json``, JSON) file holds; one SpecError naming the file otherwise.

    ``what`` names the kind of file in messages ("model", "device", "accelerator"): every problem reads
    ``{what} file '{path}': {problem}``.
    """
    path = Path(path)
    where = f"{what} file {show(str(path), 200)}"
    try:
        if not path.is_file():
            raise SpecError(["is not a regular file" if path.exists() else "does not exist"], where)
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SpecError([f"is {size} bytes, over the limit of {MAX_BYTES} bytes for a {what} file"], where)
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise SpecError([f"cannot be read ({e.strerror or type(e).__name__})"], where) from None
    if len(raw) > MAX_BYTES:  # it grew after stat
        raise SpecError([f"is over the limit of {MAX_BYTES} bytes for a {what} file"], where)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError([f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"], where) from None
    fmt = "json" if path.suffix.lower() == ".json" else "yaml"
    try:
        data = parse_text(text, fmt)
    # PyYAML's constructors raise more than YAMLError on crafted tags (`!!int` with no digits: IndexError)
    except (ValueError, IndexError, TypeError, OverflowError, RecursionError, MemoryError, yaml.YAMLError) as e:
        raise SpecError([f"is not valid {fmt.upper()}: {_problem(e)}{_where(e)}"], where) from None
    if not isinstance(data, dict):
        got = "an empty document" if data is None else type(data).__name__
        raise SpecError([f"expected a mapping of {what} fields, got {got}"], where)
    return data


def unknown_fields(keys: Any, known: set[str], label: Any = repr, limit: int = 5) -> list[str]:
    """Problems for the keys not in ``known``: at most ``limit`` named (``label`` formats each), then a count."""
    unknown = [k for k in keys if k not in known]
    allowed = ", ".join(sorted(known))
    out = [f"unknown field {label(k)} (allowed: {allowed})" for k in unknown[:limit]]
    if len(unknown) > limit:
        out.append(f"and {len(unknown) - limit} more unknown fields")
    return out


# --- arguments --------------------------------------------------------------------------------------------

def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # name too long, embedded NUL, ...
        return False


def resolve_argument(arg: Any, what: str, presets: list[str], folder: Path) -> Path | None:
    """The file a model/device/accelerator argument names: a preset (by name), or an existing path.

    None when it is neither (the caller may try other forms, such as a Hugging Face id). Raises one
    UnknownNameError line for an argument that cannot be a name or a path, or names a missing data file.
    """
    if not isinstance(arg, (str, os.PathLike)):
        raise UnknownNameError(f"{what} must be a preset name or a path, got {type(arg).__name__}")
    text = os.fspath(arg)
    if not isinstance(text, str):
        raise UnknownNameError(f"{what} must be a preset name or a path, got {type(text).__name__}")
    if not text or len(text) > MAX_ARGUMENT or "\x00" in text:
        raise UnknownNameError(f"unknown {what} {show(text, 40)} (presets: {', '.join(presets)}): "
                               f"not a preset, and not a path (empty, over {MAX_ARGUMENT} characters or holding NUL)")
    if isinstance(arg, str) and text in presets:
        return folder / f"{text}.yaml"
    path = Path(text)
    if _exists(path):
        return path
    if text in presets:
        return folder / f"{text}.yaml"
    if path.suffix.lower() in SUFFIXES:
        raise UnknownNameError(f"{what} file {show(text, 200)} does not exist")
    return None


def presets_in(folder: Path) -> list[str]:
    """The preset names of a folder of packaged data files."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_spec(name_or_path: Any, what: str, folder: Path, parse: Callable[[dict, str, Path], T], hint: str,
              other: Callable[[str], Path | None] | None = None) -> T:
    """The one loader of models, devices and accelerators: a preset name or a file (``other`` may resolve more
    forms, e.g. a Hugging Face id), read with ``read_document``, its name checked, then
    ``parse(data, where, path)``.

    Unknown arguments end in one UnknownNameError line naming the presets and ``hint`` (the other forms).
    """
    presets = presets_in(folder)
    path = resolve_argument(name_or_path, what, presets, folder)
    if path is None and other is not None:
        path = other(str(name_or_path))
    if path is None:
        raise UnknownNameError(f"unknown {what} {show(str(name_or_path), 40)} (presets: {', '.join(presets)}; {hint})")
    data = read_document(path, what)
    where = f"{what} file {show(str(path), 200)}"
    if "name" in data:
        check_name("name", data["name"], where)
    return parse(data, where, path)


# --- Hugging Face hub cache -------------------------------------------------------------------------------

def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the form of a Hugging Face model id ``org/name``."""
    m = _HF_ID.fullmatch(text)
    return bool(m) and not any(p in (".", "..") or "--" in p or p.startswith(("-", ".")) or p.endswith(".")
                               for p in m.groups())


def hub_cache_dir() -> Path:
    """The local hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (as huggingface_hub)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HUGGINGFACE_HUB_CACHE"):  # the older name of HF_HUB_CACHE
        return Path(env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _snapshot(repo: Path) -> Path | None:
    """config.json of the revision refs/main points to, else of the newest snapshot holding one."""
    snapshots = repo / "snapshots"
    try:
        ref = (repo / "refs" / "main").read_bytes()[:256].decode("ascii", "replace").strip()
    except OSError:
        ref = ""
    if _REVISION.fullmatch(ref) and ref not in (".", "..") and (snapshots / ref / "config.json").is_file():
        return snapshots / ref / "config.json"
    try:
        candidates = [d for d in snapshots.iterdir() if (d / "config.json").is_file()]
    except OSError:
        return None
    if not candidates:
        return None
    return max(candidates, key=lambda d: (d.stat().st_mtime, d.name)) / "config.json"


def hub_config(model_id: str) -> Path:
    """The cached config.json of Hugging Face model ``org/name``; one TstackError line when it is not cached."""
    if not is_hub_id(model_id):
        raise UnknownNameError(f"{show(model_id, 40)} is not a Hugging Face model id (org/name)")
    org, name = model_id.split("/")
    cache = hub_cache_dir()
    repo = cache / f"models--{org}--{name}"
    try:
        found = _snapshot(repo)
    except OSError:
        found = None
    if found is None:
        raise UnknownNameError(
            f"model {model_id!r} is not in the local Hugging Face cache (searched {str(repo)!r}; tstack never "
            f"downloads): fetch it with `huggingface-cli download {model_id} config.json`, set HF_HUB_CACHE or "
            "HF_HOME to the cache that holds it, or give the path of its config.json")
    return found


def hub_id_of(path: Path) -> str | None:
    """``org/name`` when ``path`` lies in a hub cache snapshot (models--org--name/snapshots/<rev>/...)."""
    parts = path.absolute().parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            pieces = parts[i - 1][len("models--"):].split("--")
            if len(pieces) == 2 and is_hub_id("/".join(pieces)):
                return "/".join(pieces)
            return None
    return None

