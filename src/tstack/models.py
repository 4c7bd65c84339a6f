"""Model presets (packaged YAML files), tstack YAML files and HuggingFace config.json files."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tstack.errors import SpecError, UnknownNameError
from tstack.hfconfig import from_hf_config
from tstack.spec import ModelSpec, model_from_dict, preset_dir


def model_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir("models").glob("*.yaml"))


def _read(path: Path) -> object:
    where = f"model file {str(path)!r}"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([f"cannot be read ({type(e).__name__})"], where) from None
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, RecursionError, yaml.YAMLError) as e:  # JSONDecodeError is a ValueError
        line = getattr(e, "lineno", None) or getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" near line {line}" if line else ""
        raise SpecError([f"is not valid {'JSON' if path.suffix == '.json' else 'YAML'}{at}"], where) from None


def load_model(name_or_path: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec by preset name, from a tstack YAML file, or from a HuggingFace config.json."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    path = Path(name_or_path)
    if path.suffix not in (".json", ".yaml", ".yml"):
        preset = preset_dir("models") / f"{name_or_path}.yaml"
        if not preset.exists():
            raise UnknownNameError(f"unknown model {str(name_or_path)!r} (presets: {', '.join(model_presets())}; "
                                   "or give a path to a config.json or .yaml file)")
        path = preset
    elif not path.exists():
        raise UnknownNameError(f"model file {str(path)!r} does not exist")
    data = _read(path)
    if isinstance(data, dict) and "model_type" in data:
        return from_hf_config(data, name=path.parent.name or path.stem, where=f"config {str(path)!r}")
    return model_from_dict(data, f"model file {str(path)!r}")
