"""Model presets (packaged YAML files), tstack YAML files, HuggingFace config.json files and cached hub ids."""

from __future__ import annotations

from pathlib import Path

from tstack.errors import UnknownNameError
from tstack.hfconfig import from_hf_config
from tstack.loader import check_name, hub_config, hub_id_of, is_hub_id, load_spec, presets_in, show
from tstack.spec import ModelSpec, model_from_dict, preset_dir


def model_presets() -> list[str]:
    return presets_in(preset_dir("models"))


def _in_hub_cache(text: str) -> Path | None:
    """A Hugging Face id ``org/name`` in the local hub cache; None for anything else."""
    return hub_config(text) if is_hub_id(text) else None


def load_model(name_or_path: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec by preset name, from a tstack YAML file, a HuggingFace config.json (or the folder holding
    it), or a Hugging Face id ``org/name`` found in the local hub cache (never the network)."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    text = str(name_or_path)
    hub_id = text if isinstance(name_or_path, str) and is_hub_id(text) and not Path(text).exists() else None
    path = Path(text) if isinstance(name_or_path, (str, Path)) and _is_dir(text) else None
    if path is not None:
        if not (path / "config.json").is_file():
            raise UnknownNameError(f"model folder {show(str(path), 200)} holds no config.json")
        name_or_path = path / "config.json"

    def parse(data: dict, where: str, path: Path) -> ModelSpec:
        if "model_type" not in data:
            return model_from_dict(data, where)
        config = f"config {show(str(path), 200)}"
        name = hub_id or hub_id_of(path) or path.absolute().parent.name or path.stem  # the folder names it
        return from_hf_config(data, name=check_name("name", name, config), where=config)

    return load_spec(name_or_path, "model", preset_dir("models"), parse,
                     "or give a path to a config.json, its folder or a .yaml file, or a Hugging Face id org/name",
                     other=_in_hub_cache)


def _is_dir(text: str) -> bool:
    try:
        return 0 < len(text) <= 4096 and "\x00" not in text and Path(text).is_dir()
    except OSError:
        return False
