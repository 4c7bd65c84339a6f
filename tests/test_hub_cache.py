"""Models by Hugging Face id, resolved offline from a (fake) local hub cache; folders holding a config.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import tstack
from conftest import HF_CONFIGS
from tstack.loader import check_name, hub_cache_dir, is_hub_id
from tstack.models import load_model

REV_OLD = "0" * 40
REV_NEW = "f" * 40


def _cache_model(cache: Path, model_id: str, config: dict, rev: str, ref: bool = True, mtime: float | None = None
                 ) -> Path:
    """Lay out one model as huggingface_hub does: blobs/<hash>, snapshots/<rev>/config.json -> blob, refs/main."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    blob = repo / "blobs" / f"{rev}-config"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_text(json.dumps(config), encoding="utf-8")
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    link = snap / "config.json"
    try:
        link.symlink_to(os.path.relpath(blob, snap))
    except OSError:  # no symlinks here: a copy works the same
        link.write_text(blob.read_text(encoding="utf-8"), encoding="utf-8")
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(rev, encoding="utf-8")
    if mtime is not None:
        os.utime(snap, (mtime, mtime))
    return snap


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)  # no relative path named like the id exists
    return path


def test_model_id_resolves_from_the_cache_and_is_named_by_it(cache):
    _cache_model(cache, "TinyLlama/TinyLlama-1.1B-Chat-v1.0", HF_CONFIGS["TinyLlama-1.1B-Chat-v1.0"], REV_NEW)
    m = load_model("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    assert m.name == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert (m.layers, m.hidden, m.heads, m.kv_heads) == (22, 2048, 32, 4)


def test_refs_main_picks_the_revision(cache):
    bert = HF_CONFIGS["bert-base-uncased"]
    _cache_model(cache, "org/model", {**bert, "num_hidden_layers": 6}, REV_OLD, mtime=1_000)
    _cache_model(cache, "org/model", {**bert, "num_hidden_layers": 24}, REV_NEW, ref=False, mtime=2_000)
    # refs/main names the older snapshot: it wins over the newer one
    assert load_model("org/model").layers == 6


def test_without_refs_main_the_newest_snapshot_is_used(cache):
    bert = HF_CONFIGS["bert-base-uncased"]
    _cache_model(cache, "org/model", {**bert, "num_hidden_layers": 6}, REV_OLD, ref=False, mtime=1_000)
    _cache_model(cache, "org/model", {**bert, "num_hidden_layers": 24}, REV_NEW, ref=False, mtime=2_000)
    assert load_model("org/model").layers == 24


def test_refs_main_to_a_missing_snapshot_falls_back_to_one_that_exists(cache):
    _cache_model(cache, "org/model", HF_CONFIGS["gpt2"], REV_OLD, ref=False)
    refs = cache / "models--org--model" / "refs"
    refs.mkdir()
    (refs / "main").write_text("../../../../etc", encoding="utf-8")  # never followed outside snapshots/
    assert load_model("org/model").name == "org/model"


def test_hf_home_is_used_when_hf_hub_cache_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    _cache_model(tmp_path / "hf" / "hub", "openai-community/gpt2", HF_CONFIGS["gpt2"], REV_NEW)
    assert load_model("openai-community/gpt2").hidden == 768


def test_default_cache_is_under_the_home_folder(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub_cache_dir() == tmp_path / ".cache" / "huggingface" / "hub"


def test_missing_id_names_the_cache_folder_and_how_to_fetch_it(cache):
    with pytest.raises(tstack.TstackError) as info:
        load_model("meta-llama/Llama-2-7b-hf")
    msg = str(info.value)
    assert "meta-llama/Llama-2-7b-hf" in msg
    assert str(cache / "models--meta-llama--Llama-2-7b-hf") in msg
    assert "huggingface-cli download meta-llama/Llama-2-7b-hf config.json" in msg
    assert "\n" not in msg


def test_a_snapshot_without_config_json_is_missing(cache):
    (cache / "models--org--empty" / "snapshots" / REV_NEW).mkdir(parents=True)
    with pytest.raises(tstack.TstackError, match="not in the local Hugging Face cache"):
        load_model("org/empty")


def test_folder_holding_config_json_loads_named_by_the_folder(cache, write_hf_config):
    path = write_hf_config(HF_CONFIGS["opt-125m"], "opt-125m")
    m = load_model(path.parent)
    assert (m.name, m.layers, m.ffn) == ("opt-125m", 12, 3072)
    assert load_model(str(path.parent)) == m


def test_relative_folder_loads(cache, tmp_path):
    folder = tmp_path / "some_dir"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIGS["gpt2"]), encoding="utf-8")
    m = load_model("./some_dir")
    assert (m.name, m.hidden) == ("some_dir", 768)


def test_snapshot_folder_is_named_by_its_id(cache):
    snap = _cache_model(cache, "org/model", HF_CONFIGS["gpt2"], REV_NEW)
    assert load_model(snap).name == "org/model"
    assert load_model(snap / "config.json").name == "org/model"


def test_folder_without_config_json_is_one_line(cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(tstack.TstackError, match="holds no config.json"):
        load_model(tmp_path / "empty")


def test_an_existing_path_wins_over_an_id(cache, tmp_path):
    (tmp_path / "org" / "model").mkdir(parents=True)
    (tmp_path / "org" / "model" / "config.json").write_text(json.dumps(HF_CONFIGS["gpt2"]), encoding="utf-8")
    _cache_model(cache, "org/model", HF_CONFIGS["bert-base-uncased"], REV_NEW)
    assert load_model("org/model").arch == "decoder"  # the folder ./org/model, not the cached BERT


@pytest.mark.parametrize("text", ["org/name", "meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-0.5B", "a_b/c.d"])
def test_hub_ids(text):
    assert is_hub_id(text)
    assert check_name("name", text) == text


@pytest.mark.parametrize("text", ["name", "a/b/c", "/abs", "org/", "/name", "org/..", "../x", "a--b/c", "org/na me",
                                  "org/" + "x" * 97, "org/[bold]"])
def test_not_hub_ids(text):
    assert not is_hub_id(text)


@pytest.mark.parametrize("text", ["a/b/c", "/abs", "org/", "/name", " /x", "x/ "])
def test_slash_only_between_two_parts_of_a_name(text):
    with pytest.raises(tstack.SpecError, match="at most one '/'"):
        check_name("name", text)


@pytest.mark.parametrize("text", ["a/b/c", "org/", "org/na me", "-org/x"])
def test_arguments_that_are_no_id_nor_path_fail_as_unknown_models(cache, text):
    with pytest.raises(tstack.TstackError) as info:
        load_model(text)
    assert "unknown model" in str(info.value) and "bert-large" in str(info.value)


def test_a_name_field_with_a_slash_in_a_model_file(tmp_path):
    import dataclasses

    import yaml

    data = dataclasses.asdict(load_model("bert-base"))
    data["name"] = "my-org/bert"
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_model(path).name == "my-org/bert"
    data["name"] = "a/b/c"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(tstack.SpecError, match="name='a/b/c'"):
        load_model(path)
