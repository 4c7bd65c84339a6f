"""Model presets (packaged YAML files), tstack YAML files, HuggingFace config.json files and cached hub ids."""

from __future__ import annotations

from pathlib import Path

from tstack.errors import UnknownNameError
from tstack.hfconfig import from_hf_config
from tstack.loader import check_name, hub_config, hub_id_of, is_hub_id, read_document, resolve_argument, show
from tstack.spec import ModelSpec, model_from_dict, preset_dir


def model_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir("models").glob("*.yaml"))


def load_model(name_or_path: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec by preset name, from a tstack YAML file, a HuggingFace config.json (or the folder holding
    it), or a Hugging Face id ``org/name`` found in the local hub cache (never the network)."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    presets = model_presets()
    path = resolve_argument(name_or_path, "model", presets, preset_dir("models"))
    hub_id = None
    if path is None:
        text = str(name_or_path)
        if not is_hub_id(text):
            raise UnknownNameError(f"unknown model {show(text, 40)} (presets: {', '.join(presets)}; or give a path "
                                   "to a config.json, its folder or a .yaml file, or a Hugging Face id org/name)")
        path, hub_id = hub_config(text), text
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownNameError(f"model folder {show(str(path), 200)} holds no config.json")
        path = path / "config.json"
    data = read_document(path, "model")
    if "model_type" in data:
        where = f"config {show(str(path), 200)}"
        name = hub_id or hub_id_of(path) or path.absolute().parent.name or path.stem  # the folder names it
        return from_hf_config(data, name=check_name("name", name, where), where=where)
    where = f"model file {show(str(path), 200)}"
    if "name" in data:
        check_name("name", data["name"], where)
    return model_from_dict(data, where)
