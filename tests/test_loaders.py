"""Loaders: packaged presets, tstack YAML files, HuggingFace config.json import, device YAML; fuzzed bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

import tstack
from conftest import HF_CONFIGS
from tstack.hardware.device import DeviceSpec, device_presets, load_device
from tstack.models import load_model, model_presets
from tstack.spec import ModelSpec

# --- presets ----------------------------------------------------------------------------------------------

def test_preset_lists_are_not_empty_and_hold_the_papers_models():
    assert {"bert-base", "bert-large", "gpt2", "transformer-base"} <= set(model_presets())
    assert {"mi100", "v100", "a100"} <= set(device_presets())


@pytest.mark.parametrize("name", model_presets())
def test_every_model_preset_loads(name):
    m = load_model(name)
    assert isinstance(m, ModelSpec)
    assert m.name == name  # the file's name field matches the preset name users type
    assert m.head_dim * m.heads == m.hidden


@pytest.mark.parametrize("name", model_presets())
def test_model_preset_round_trips_through_a_yaml_file(name, tmp_path):
    m = load_model(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dataclasses.asdict(m)), encoding="utf-8")
    assert load_model(path) == m


@pytest.mark.parametrize("name", device_presets())
def test_every_device_preset_loads(name):
    d = load_device(name)
    assert isinstance(d, DeviceSpec)
    assert d.name == name
    assert d.peak("vector", "fp32") > 0 and d.memory_bandwidth > 0


@pytest.mark.parametrize("name", device_presets())
def test_device_preset_round_trips_through_a_yaml_file(name, tmp_path):
    d = load_device(name)
    data = dataclasses.asdict(d)
    data["sources"] = list(data["sources"])
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert load_device(path) == d


def test_golden_presets():
    # Devlin et al. 2019: BERT-Large L=24, H=1024, A=16, d_ff = 4H = 4096 (002 §3.3.2 configuration C2).
    bl = load_model("bert-large")
    assert (bl.layers, bl.hidden, bl.heads, bl.ffn, bl.vocab) == (24, 1024, 16, 4096, 30522)
    # AMD MI100 datasheet: 23.1 TFLOP/s FP32 vector, 46.1 FP32 matrix, 1.2288 TB/s HBM2.
    mi = load_device("mi100")
    assert mi.peak("vector", "fp32") == 23.1e12
    assert mi.peak("matrix", "fp32") == 46.1e12
    assert mi.memory_bandwidth == 1.2288e12


def test_spec_objects_pass_through_the_loaders():
    m, d = load_model("bert-base"), load_device("a100")
    assert load_model(m) is m and load_device(d) is d


def test_unknown_presets_name_the_input_and_the_choices():
    with pytest.raises(tstack.TstackError) as info:
        load_model("bert-huge")
    assert "'bert-huge'" in str(info.value) and "bert-large" in str(info.value)
    with pytest.raises(tstack.TstackError) as info:
        load_device("tpu-v9")
    assert "'tpu-v9'" in str(info.value) and "mi100" in str(info.value)


def test_missing_files_are_tstack_errors(tmp_path):
    with pytest.raises(tstack.TstackError, match="does not exist"):
        load_model(tmp_path / "nope" / "config.json")
    with pytest.raises(tstack.TstackError, match="does not exist"):
        load_device(tmp_path / "nope.yaml")


# --- HuggingFace config.json ------------------------------------------------------------------------------

def test_hf_bert_base_uncased(hf_config, write_hf_config):
    m = load_model(write_hf_config(hf_config("bert-base-uncased"), "bert-base-uncased"))
    assert m.name == "bert-base-uncased"  # the folder a config.json lives in names the model
    assert (m.arch, m.layers, m.hidden, m.heads, m.kv_heads, m.ffn) == ("encoder", 12, 768, 12, 12, 3072)
    assert (m.vocab, m.max_positions, m.type_vocab, m.activation) == (30522, 512, 2, "gelu")
    # the head follows "architectures": BertForMaskedLM has no pooler and no NSP head
    assert (m.norm, m.norm_position, m.position, m.head) == ("layernorm", "post", "learned", "mlm")


def test_hf_bert_base_matches_the_preset(hf_config, write_hf_config):
    config = hf_config("bert-base-uncased")
    config["architectures"] = ["BertForPreTraining"]
    m = load_model(write_hf_config(config))
    same = dict(name="x", description="", source="")
    assert dataclasses.replace(m, **same) == dataclasses.replace(load_model("bert-base"), **same)


def test_hf_roberta_base_drops_padding_positions(hf_config, write_hf_config):
    m = load_model(write_hf_config(hf_config("roberta-base"), "roberta-base"))
    assert (m.arch, m.layers, m.hidden, m.heads, m.ffn, m.vocab, m.type_vocab) == ("encoder", 12, 768, 12, 3072,
                                                                                  50265, 1)
    # 514 position rows = 512 usable + pad_token_id (1) + 1 (RoBERTa numbers positions from pad_token_id + 1)
    assert m.max_positions == 512


def test_hf_gpt2(hf_config, write_hf_config):
    m = load_model(write_hf_config(hf_config("gpt2"), "gpt2"))
    assert (m.arch, m.layers, m.hidden, m.heads, m.vocab, m.max_positions) == ("decoder", 12, 768, 12, 50257, 1024)
    assert m.ffn == 4 * 768  # n_inner absent: GPT-2's MLP is 4·n_embd wide
    assert (m.activation, m.norm_position, m.head) == ("gelu-tanh", "pre", "lm")  # gelu_new is the tanh GeLU
    same = dict(name="x", description="", source="")
    assert dataclasses.replace(m, **same) == dataclasses.replace(load_model("gpt2"), **same)


def test_hf_gpt2_null_and_explicit_n_inner(hf_config, write_hf_config):
    cfg = hf_config("gpt2")
    cfg["n_inner"] = None  # newer transformers write "n_inner": null
    assert load_model(write_hf_config(cfg, "a")).ffn == 3072
    cfg["n_inner"] = 2048
    assert load_model(write_hf_config(cfg, "b")).ffn == 2048


def test_hf_opt(hf_config, write_hf_config):
    m = load_model(write_hf_config(hf_config("opt-125m"), "opt-125m"))
    assert (m.arch, m.layers, m.hidden, m.heads, m.ffn, m.vocab) == ("decoder", 12, 768, 12, 3072, 50272)
    assert (m.max_positions, m.activation, m.norm_position, m.head) == (2048, "relu", "pre", "lm")
    # opt-350m is the one OPT model with post-LayerNorm (do_layer_norm_before: false)
    m350 = load_model(write_hf_config(hf_config("opt-350m"), "opt-350m"))
    assert (m350.layers, m350.hidden, m350.heads, m350.ffn, m350.norm_position) == (24, 1024, 16, 4096, "post")


def test_hf_tinyllama_gqa(hf_config, write_hf_config):
    m = load_model(write_hf_config(hf_config("TinyLlama-1.1B-Chat-v1.0"), "TinyLlama-1.1B-Chat-v1.0"))
    assert m.name == "TinyLlama-1.1B-Chat-v1.0"
    assert (m.arch, m.layers, m.hidden, m.heads, m.kv_heads, m.ffn, m.vocab) == ("decoder", 22, 2048, 32, 4, 5632,
                                                                                32000)
    assert (m.head_dim, m.kv_hidden) == (64, 256)  # 2048/32; 4 K/V heads × 64
    assert (m.gated_ffn, m.norm, m.position, m.activation) == (True, "rmsnorm", "rotary", "silu")
    assert (m.norm_position, m.bias, m.tie_embeddings, m.head) == ("pre", False, False, "lm")
    assert m.max_positions == 2048


def test_hf_llama_without_kv_heads_is_multi_head(hf_config, write_hf_config):
    cfg = hf_config("TinyLlama-1.1B-Chat-v1.0")
    del cfg["num_key_value_heads"]  # LLaMA-1 configs predate grouped-query attention
    assert load_model(write_hf_config(cfg)).kv_heads == 32


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_hf_llama_family_types(hf_config, write_hf_config, model_type):
    cfg = hf_config("TinyLlama-1.1B-Chat-v1.0")
    cfg["model_type"] = model_type
    m = load_model(write_hf_config(cfg))
    assert (m.kv_heads, m.gated_ffn, m.norm) == (4, True, "rmsnorm")


def test_hf_configs_written_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cases = {
        # BertConfig() defaults are bert-base-uncased's shapes
        "bert": (transformers.BertConfig(), (12, 768, 12, 12, 3072, 30522)),
        "gpt2": (transformers.GPT2Config(), (12, 768, 12, 12, 3072, 50257)),
        "llama": (transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                           num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                                           max_position_embeddings=2048),
                  (22, 2048, 32, 4, 5632, 32000)),
    }
    for folder, (config, want) in cases.items():
        path = tmp_path / folder / "config.json"
        path.parent.mkdir()
        config.to_json_file(str(path))
        m = load_model(path)
        assert (m.layers, m.hidden, m.heads, m.kv_heads, m.ffn, m.vocab) == want, folder


def test_hf_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "bert", "hidden_size": 768,', encoding="utf-8")
    with pytest.raises(tstack.SpecError) as info:
        load_model(path)
    assert "config.json" in str(info.value) and "JSON" in str(info.value)


def test_hf_unknown_model_type_names_it(hf_config, write_hf_config):
    cfg = hf_config("bert-base-uncased")
    cfg["model_type"] = "t5"
    with pytest.raises(tstack.SpecError) as info:
        load_model(write_hf_config(cfg))
    assert "model_type='t5'" in str(info.value) and "llama" in str(info.value)


HF_BAD_FIELDS = [
    ("bert-base-uncased", "hidden_size", None, "missing field 'hidden_size'"),
    ("bert-base-uncased", "num_attention_heads", "12", "num_attention_heads='12'"),
    ("bert-base-uncased", "num_hidden_layers", True, "num_hidden_layers=True"),
    ("bert-base-uncased", "intermediate_size", 3072.0, "intermediate_size=3072.0"),
    ("bert-base-uncased", "vocab_size", [30522], "vocab_size=[30522]"),
    ("bert-base-uncased", "hidden_act", "tanh", "hidden_act='tanh'"),
    ("bert-base-uncased", "hidden_size", -768, "hidden=-768"),
    ("bert-base-uncased", "num_attention_heads", 7, "heads=7"),
    ("gpt2", "n_embd", None, "missing field 'n_embd'"),
    ("gpt2", "n_head", "twelve", "n_head='twelve'"),
    ("gpt2", "activation_function", "gelu_x", "activation_function='gelu_x'"),
    ("opt-125m", "ffn_dim", None, "missing field 'ffn_dim'"),
    ("opt-125m", "ffn_dim", {"a": 1}, "ffn_dim={'a': 1}"),
    ("TinyLlama-1.1B-Chat-v1.0", "num_key_value_heads", 3, "num_key_value_heads=3 must be a positive integer dividing"),
    ("TinyLlama-1.1B-Chat-v1.0", "num_key_value_heads", 0, "num_key_value_heads=0 must be a positive integer"),
    ("TinyLlama-1.1B-Chat-v1.0", "num_key_value_heads", -4, "num_key_value_heads=-4"),
    ("TinyLlama-1.1B-Chat-v1.0", "num_key_value_heads", 64, "num_key_value_heads=64"),
    ("TinyLlama-1.1B-Chat-v1.0", "attention_bias", "false", "attention_bias='false' must be true or false"),
    ("opt-125m", "do_layer_norm_before", 0, "do_layer_norm_before=0 must be true or false"),
    ("TinyLlama-1.1B-Chat-v1.0", "num_key_value_heads", "4", "num_key_value_heads='4'"),
    ("TinyLlama-1.1B-Chat-v1.0", "intermediate_size", None, "missing field 'intermediate_size'"),
    ("TinyLlama-1.1B-Chat-v1.0", "hidden_size", 2**40, "hidden=1099511627776"),
]


@pytest.mark.parametrize(("base", "key", "value", "named"), HF_BAD_FIELDS,
                         ids=[f"{b}-{k}={v!r}" for b, k, v, _ in HF_BAD_FIELDS])
def test_hf_bad_field_is_a_spec_error_naming_it(hf_config, write_hf_config, base, key, value, named):
    cfg = hf_config(base)
    if value is None:
        del cfg[key]
    else:
        cfg[key] = value
    with pytest.raises(tstack.SpecError) as info:
        load_model(write_hf_config(cfg))
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_hf_errors_are_collected(hf_config, write_hf_config):
    cfg = hf_config("bert-base-uncased")
    del cfg["hidden_size"]
    cfg["vocab_size"] = "big"
    with pytest.raises(tstack.SpecError) as info:
        load_model(write_hf_config(cfg))
    assert "missing field 'hidden_size'" in str(info.value) and "vocab_size='big'" in str(info.value)


# --- tstack model YAML ------------------------------------------------------------------------------------

def _write_yaml(tmp_path: Path, data, name: str = "model.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _preset_dict(name: str = "bert-base") -> dict:
    return dataclasses.asdict(load_model(name))


def test_yaml_model_unknown_field_names_it(tmp_path):
    data = _preset_dict()
    data["hiden"] = data.pop("hidden")
    with pytest.raises(tstack.SpecError) as info:
        load_model(_write_yaml(tmp_path, data))
    assert "unknown field 'hiden'" in str(info.value) and "missing field 'hidden'" in str(info.value)


def test_yaml_model_heads_not_dividing_hidden(tmp_path):
    data = _preset_dict()
    data["heads"] = 5
    del data["head_dim"]  # 0: hidden / heads
    with pytest.raises(tstack.SpecError) as info:
        load_model(_write_yaml(tmp_path, data))
    assert "heads=5 must divide hidden=768" in str(info.value)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "42\n", "just text\n", "", "null\n"])
def test_yaml_model_not_a_mapping(tmp_path, text):
    with pytest.raises(tstack.SpecError) as info:
        load_model(_write_yaml(tmp_path, text))
    assert "expected a mapping" in str(info.value)


def test_yaml_model_invalid_yaml_names_the_file(tmp_path):
    with pytest.raises(tstack.SpecError) as info:
        load_model(_write_yaml(tmp_path, "name: [unclosed\nlayers: 2\n", "broken.yaml"))
    assert "broken.yaml" in str(info.value) and "YAML" in str(info.value)


# --- device YAML ------------------------------------------------------------------------------------------

def _device_dict(name: str = "mi100") -> dict:
    return yaml.safe_load((tstack.spec.preset_dir("devices") / f"{name}.yaml").read_text())


DEVICE_BAD = [
    (lambda d: d.pop("memory_bandwidth"), "missing field 'memory_bandwidth'"),
    (lambda d: d.update(kind="tpu"), "kind='tpu'"),
    (lambda d: d.update(compute_units=0), "compute_units=0"),
    (lambda d: d.update(compute_units=1.5), "compute_units=1.5"),
    (lambda d: d["peak_flops"]["vector"].pop("fp32"), "peak_flops.vector.fp32 is required"),
    (lambda d: d["peak_flops"]["matrix"].update(fp16=-1.0), "peak_flops.matrix.fp16=-1.0"),
    (lambda d: d["peak_flops"]["matrix"].update(fp64=1e12), "peak_flops.matrix.fp64"),
    (lambda d: d["peak_flops"].update(tensor={"fp16": 1e12}), "peak_flops.tensor"),
    (lambda d: d.update(memory_bandwidth="fast"), "memory_bandwidth='fast'"),
    (lambda d: d.update(memory_capacity=True), "memory_capacity=True"),
    (lambda d: d.update(launch_overhead=-1e-6), "launch_overhead=-1e-06"),
    (lambda d: d["efficiency"].update(matrix_max=1.5), "efficiency.matrix_max=1.5"),
    (lambda d: d["efficiency"].update(memory_max=0), "efficiency.memory_max=0"),
    (lambda d: d["efficiency"].update(k_halfs=64), "efficiency.'k_halfs'"),
    (lambda d: d.update(efficiency=[1, 2]), "efficiency must be a mapping"),
    (lambda d: d.update(bandwidth=1e12), "unknown field 'bandwidth'"),
]


@pytest.mark.parametrize(("mutate", "named"), DEVICE_BAD, ids=[n for _, n in DEVICE_BAD])
def test_device_yaml_bad_field_names_it(tmp_path, mutate, named):
    data = _device_dict()
    mutate(data)
    with pytest.raises(tstack.SpecError) as info:
        load_device(_write_yaml(tmp_path, data, "dev.yaml"))
    assert named in str(info.value)


def test_device_peak_of_a_missing_dtype_names_it():
    with pytest.raises(tstack.SpecError) as info:
        load_device("v100").peak("matrix", "bf16")
    assert "bf16" in str(info.value) and "fp16" in str(info.value)


# --- regressions found by fuzzing: each must be a TstackError, never a raw Python exception ----------------

LOADER_REGRESSIONS = [
    # (file name, file text) for load_model
    ("list-model-type.json", json.dumps({**HF_CONFIGS["bert-base-uncased"], "model_type": ["bert"]})),
    ("list-act.json", json.dumps({**HF_CONFIGS["bert-base-uncased"], "hidden_act": ["gelu"]})),
    ("str-pad.json", json.dumps({**HF_CONFIGS["roberta-base"], "pad_token_id": "1"})),
    ("null-pad.json", json.dumps({**HF_CONFIGS["roberta-base"], "pad_token_id": None})),
    ("huge-int.json", "1" * 5000),  # more digits than Python's int-from-string limit (4300)
    ("huge-int.yaml", "layers: " + "1" * 5000),
    ("deep.json", "[" * 100_000),
    ("deep.yaml", "[" * 100_000),
]


@pytest.mark.parametrize(("name", "text"), LOADER_REGRESSIONS, ids=[n for n, _ in LOADER_REGRESSIONS])
def test_load_model_regressions_raise_tstack_error(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(tstack.TstackError):
        load_model(path)


DEVICE_REGRESSIONS = [
    ("vector-is-int", lambda d: d["peak_flops"].update(vector=5)),
    ("sources-is-int", lambda d: d.update(sources=5)),
    ("k_half-overflows-float", lambda d: d["efficiency"].update(k_half=10**400)),
    ("tile_m-infinite", lambda d: d["efficiency"].update(tile_m=math.inf)),
    ("vector-is-null", lambda d: d["peak_flops"].update(vector=None)),
    ("sources-is-null", lambda d: d.update(sources=None)),
]


@pytest.mark.parametrize(("name", "mutate"), DEVICE_REGRESSIONS, ids=[n for n, _ in DEVICE_REGRESSIONS])
def test_load_device_regressions_raise_tstack_error(tmp_path, name, mutate):
    data = _device_dict()
    mutate(data)
    with pytest.raises(tstack.TstackError):
        load_device(_write_yaml(tmp_path, data, f"{name}.yaml"))


@pytest.mark.parametrize("text", ["1" * 5000, "[" * 100_000])
def test_load_device_text_regressions_raise_tstack_error(tmp_path, text):
    with pytest.raises(tstack.TstackError):
        load_device(_write_yaml(tmp_path, text, "dev.yaml"))


# Efficiency terms the roofline model divides by: zero or negative tiles and half-points, or NaN, must be
# rejected when the device is loaded, not end in a ZeroDivisionError (or NaN seconds) during analysis.
EFFICIENCY_BAD = [("tile_m", 0), ("tile_n", -128), ("k_half", -64.0), ("bytes_half", -1.0e6), ("k_half", math.nan)]


@pytest.mark.parametrize(("field", "value"), EFFICIENCY_BAD, ids=[f"{f}={v}" for f, v in EFFICIENCY_BAD])
def test_device_efficiency_terms_are_validated(tmp_path, field, value):
    data = _device_dict()
    data["efficiency"][field] = value
    with pytest.raises(tstack.SpecError) as info:
        load_device(_write_yaml(tmp_path, data, "dev.yaml"))
    assert f"efficiency.{field}" in str(info.value)


def test_device_matrix_rates_must_be_a_mapping(tmp_path):
    data = _device_dict()
    data["peak_flops"]["matrix"] = 5  # a scalar where dtype -> FLOP/s belongs
    with pytest.raises(tstack.SpecError) as info:
        load_device(_write_yaml(tmp_path, data, "dev.yaml"))
    assert "peak_flops.matrix" in str(info.value)


# --- fuzzing: any input either loads or raises a TstackError ----------------------------------------------

SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), SAFE_TEXT)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(SAFE_TEXT, inner, max_size=4), max_leaves=12)

MODEL_KEYS = [f.name for f in dataclasses.fields(ModelSpec)]
HF_KEYS = sorted({k for cfg in HF_CONFIGS.values() for k in cfg})
DEVICE_KEYS = [f.name for f in dataclasses.fields(DeviceSpec)] + ["efficiency", "peak_flops"]
HF_TYPES = ["bert", "roberta", "xlm-roberta", "gpt2", "opt", "llama", "mistral", "qwen2", "t5", ""]


def _loads_or_tstack_error(load, path: Path, kind: type) -> None:
    try:
        result = load(path)
    except tstack.TstackError:
        return
    assert isinstance(result, kind)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _dump(data, suffix: str) -> str:
    return json.dumps(data) if suffix == ".json" else yaml.safe_dump(data)


@given(data=st.dictionaries(st.one_of(st.sampled_from(MODEL_KEYS + HF_KEYS), SAFE_TEXT), JSON_VALUES, max_size=12),
       suffix=st.sampled_from([".json", ".yaml"]))
def test_fuzz_random_dicts_load_or_raise_tstack_error(fuzz_dir, data, suffix):
    path = fuzz_dir / f"random{suffix}"
    path.write_text(_dump(data, suffix), encoding="utf-8")
    _loads_or_tstack_error(load_model, path, ModelSpec)


@given(base=st.sampled_from(sorted(HF_CONFIGS)),
       model_type=st.one_of(st.sampled_from(HF_TYPES), JSON_VALUES),
       changes=st.dictionaries(st.sampled_from(HF_KEYS + ["n_inner", "num_key_value_heads", "pad_token_id"]),
                               JSON_VALUES, max_size=4),
       drop=st.lists(st.sampled_from(HF_KEYS), max_size=3))
def test_fuzz_hf_configs_load_or_raise_tstack_error(fuzz_dir, base, model_type, changes, drop):
    cfg = {**HF_CONFIGS[base], **changes, "model_type": model_type}
    for k in drop:
        cfg.pop(k, None)
    path = fuzz_dir / "hf" / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(cfg), encoding="utf-8")
    _loads_or_tstack_error(load_model, path, ModelSpec)


@given(base=st.sampled_from(["bert-base", "gpt2", "transformer-base", "memnet"]),
       changes=st.dictionaries(st.sampled_from(MODEL_KEYS), JSON_VALUES, max_size=4),
       suffix=st.sampled_from([".json", ".yaml"]))
def test_fuzz_tstack_model_files_load_or_raise_tstack_error(fuzz_dir, base, changes, suffix):
    data = {**_preset_dict(base), **changes}
    path = fuzz_dir / f"model{suffix}"
    path.write_text(_dump(data, suffix), encoding="utf-8")
    _loads_or_tstack_error(load_model, path, ModelSpec)


@given(content=st.one_of(st.text(), st.binary()), suffix=st.sampled_from([".json", ".yaml", ".yml"]))
@example(content=b"\xff\xfe\x00", suffix=".yaml")
@example(content="{}", suffix=".json")
@example(content="!!python/object:os.system {}", suffix=".yaml")
def test_fuzz_arbitrary_model_file_contents(fuzz_dir, content, suffix):
    path = fuzz_dir / f"text{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8", "surrogatepass"))
    _loads_or_tstack_error(load_model, path, ModelSpec)


@given(content=st.one_of(st.text(), st.binary()))
@example(content=b"\xff\xfe\x00")
def test_fuzz_arbitrary_device_file_contents(fuzz_dir, content):
    path = fuzz_dir / "device.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    _loads_or_tstack_error(load_device, path, DeviceSpec)


@given(data=st.dictionaries(st.one_of(st.sampled_from(DEVICE_KEYS), SAFE_TEXT), JSON_VALUES, max_size=10))
def test_fuzz_random_device_dicts(fuzz_dir, data):
    path = fuzz_dir / "random-device.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    _loads_or_tstack_error(load_device, path, DeviceSpec)


@given(base=st.sampled_from(["mi100", "v100", "xeon-gold-5220-2s"]),
       changes=st.dictionaries(st.sampled_from(DEVICE_KEYS), JSON_VALUES, max_size=3),
       peak_changes=st.dictionaries(st.sampled_from(["matrix", "vector", "tensor"]), JSON_VALUES, max_size=2),
       eff_changes=st.dictionaries(st.sampled_from(["tile_m", "tile_n", "k_half", "matrix_max", "vector_max",
                                                    "memory_max", "bytes_half", "extra"]), JSON_VALUES, max_size=3))
def test_fuzz_mutated_device_presets(fuzz_dir, base, changes, peak_changes, eff_changes):
    data = _device_dict(base)
    data["peak_flops"].update(peak_changes)
    data["efficiency"].update(eff_changes)
    data.update(changes)
    path = fuzz_dir / "device-mutated.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    _loads_or_tstack_error(load_device, path, DeviceSpec)


# --- one bounded reader: size, aliases, long integers, encodings, top level -------------------------------

from tstack.hardware.accel import AccelSpec, accel_to_dict, load_accel  # noqa: E402
from tstack.loader import MAX_BYTES, check_name, read_document  # noqa: E402

LOADERS = [(load_model, "model", ModelSpec), (load_device, "device", DeviceSpec), (load_accel, "accelerator", AccelSpec)]
LOADER_IDS = [what for _, what, _ in LOADERS]


def _accel_dict(name: str = "gemmini-baseline") -> dict:
    import copy

    return copy.deepcopy(_ACCEL_DICTS.setdefault(name, accel_to_dict(load_accel(name))))


_ACCEL_DICTS: dict[str, dict] = {}


def _one_line_error(load, path) -> str:
    with pytest.raises(tstack.TstackError) as info:
        load(path)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 2000
    return msg


@pytest.mark.parametrize(("load", "what", "kind"), LOADERS, ids=LOADER_IDS)
def test_files_over_the_size_limit_are_refused_unread(tmp_path, load, what, kind):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_BYTES // 10 + 1), encoding="utf-8")
    msg = _one_line_error(load, path)
    assert f"{what} file" in msg and "big.yaml" in msg
    assert str(path.stat().st_size) in msg and str(MAX_BYTES) in msg


BILLION_LAUGHS = "".join(
    [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" if i else "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
     for i in range(9)]) + "name: *l8\n"


@pytest.mark.parametrize(("load", "what", "kind"), LOADERS, ids=LOADER_IDS)
def test_yaml_aliases_are_refused(tmp_path, load, what, kind):
    import time

    path = tmp_path / "bomb.yaml"
    path.write_text(BILLION_LAUGHS, encoding="utf-8")
    start = time.perf_counter()
    msg = _one_line_error(load, path)
    assert time.perf_counter() - start < 1.0
    assert "alias" in msg and "bomb.yaml" in msg and "YAML" in msg


def test_even_a_harmless_alias_is_refused(tmp_path):
    data = _preset_dict()
    text = yaml.safe_dump(data).replace("hidden: 768", "hidden: &h 768").replace("type_vocab: 2", "type_vocab: *h")
    msg = _one_line_error(load_model, _write_yaml(tmp_path, text))
    assert "alias *h" in msg and "line" in msg


@pytest.mark.parametrize("text", ["layers: 1" + ":1" * 200_000, "layers: 0x" + "f" * 20_000, "layers: 0b" + "1" * 5000])
def test_over_long_integers_are_refused_fast(tmp_path, text):
    import time

    start = time.perf_counter()
    msg = _one_line_error(load_model, _write_yaml(tmp_path, text))
    assert time.perf_counter() - start < 2.0  # base-60 integers convert in quadratic time: minutes at 1 MiB
    assert "too long" in msg


def test_a_huge_value_is_shown_cut(tmp_path):
    data = _preset_dict()
    data["hidden"] = int("f" * 100, 16)  # 121 digits
    data["vocab"] = "v" * 10_000
    msg = _one_line_error(load_model, _write_yaml(tmp_path, data))
    assert "hidden=<400-bit integer>" in msg and "vocab='vvvv" in msg and "(10000 characters)" in msg
    assert len(msg) < 500


def test_many_unknown_fields_are_counted_not_listed(tmp_path):
    data = {**_preset_dict(), **{f"extra{i}": i for i in range(10_000)}}
    msg = _one_line_error(load_model, _write_yaml(tmp_path, data))
    assert "unknown field 'extra0'" in msg and "and 9995 more unknown fields" in msg


@pytest.mark.parametrize(("load", "what", "kind"), LOADERS, ids=LOADER_IDS)
@pytest.mark.parametrize("content", [b"\xff\xfe\x00n\x00a", b"name: \xc3\x28\n", b"\x00\x01\x02"])
def test_bad_bytes_name_the_file(tmp_path, load, what, kind, content):
    path = tmp_path / "bytes.yaml"
    path.write_bytes(content)
    msg = _one_line_error(load, path)
    assert f"{what} file" in msg and "bytes.yaml" in msg


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(_preset_dict()).encode())
    assert load_model(path) == load_model("bert-base")


@pytest.mark.parametrize(("load", "what", "kind"), LOADERS, ids=LOADER_IDS)
@pytest.mark.parametrize("text", ["- 1\n", "42\n", "", "null\n", "just text\n"])
def test_top_level_must_be_a_mapping(tmp_path, load, what, kind, text):
    msg = _one_line_error(load, _write_yaml(tmp_path, text, "top.yaml"))
    assert f"expected a mapping of {what} fields" in msg and "top.yaml" in msg


def test_read_document_json_and_yaml(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2]}', encoding="utf-8")
    (tmp_path / "a.yaml").write_text("x: [1, 2]\n", encoding="utf-8")
    assert read_document(tmp_path / "a.json", "model") == read_document(tmp_path / "a.yaml", "model") == {"x": [1, 2]}
    with pytest.raises(tstack.SpecError, match="is not a regular file"):
        read_document(tmp_path, "model")
    with pytest.raises(tstack.SpecError, match="does not exist"):
        read_document(tmp_path / "nope.yaml", "model")


def test_a_device_file_that_is_not_a_regular_file(tmp_path):
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    link = tmp_path / "null.yaml"
    link.symlink_to("/dev/null")
    assert "not a regular file" in _one_line_error(load_device, link)


# --- names ------------------------------------------------------------------------------------------------

BAD_NAMES = ["[bold red]boom[/]", "a]", "tab\there", "new\nline", "x" * 201, "", 5, None, ["bert"], True,
             "a/b/c", "\x1b[31mred"]


@pytest.mark.parametrize("value", BAD_NAMES, ids=[repr(v)[:20] for v in BAD_NAMES])
@pytest.mark.parametrize(("load", "what", "kind"), LOADERS, ids=LOADER_IDS)
def test_bad_names_in_files_are_refused(tmp_path, load, what, kind, value):
    data = {"model": _preset_dict, "device": _device_dict, "accelerator": _accel_dict}[what]()
    data["name"] = value
    msg = _one_line_error(load, _write_yaml(tmp_path, data, "named.yaml"))
    assert "name=" in msg and "printable" in msg and "200" in msg and "named.yaml" in msg
    assert len(msg) < 400  # the value is cut


def test_accelerator_host_name_is_checked(tmp_path):
    data = _accel_dict()
    data["host"]["name"] = "[link=x]rocket"
    assert "host.name='[link=x]rocket'" in _one_line_error(load_accel, _write_yaml(tmp_path, data, "a.yaml"))
    data["host"]["name"] = 7
    assert "host.name=7" in _one_line_error(load_accel, _write_yaml(tmp_path, data, "a.yaml"))


def test_hf_folder_names_are_checked(hf_config, write_hf_config):
    path = write_hf_config(hf_config("gpt2"), "gpt2 [copy]")
    assert "name='gpt2 [copy]'" in _one_line_error(load_model, path)


def test_check_name_cuts_the_value():
    with pytest.raises(tstack.SpecError) as info:
        check_name("name", "[" * 100_000)
    assert len(str(info.value)) < 300 and "100000 characters" in str(info.value)
    assert check_name("name", "bert-base") == "bert-base"
    assert check_name("name", "x" * 200) == "x" * 200


# --- arguments that are neither a preset, a file nor an id: one line, at once ------------------------------

@pytest.mark.parametrize(("load", "what", "kind"), LOADERS, ids=LOADER_IDS)
@pytest.mark.parametrize("arg", ["a" * 100_000, "a/" * 50_000, "x\x00y", "", "../" * 2000 + "etc/passwd", "[red]x"])
def test_odd_arguments_fail_fast_in_one_line(load, what, kind, arg):
    import time

    start = time.perf_counter()
    msg = _one_line_error(load, arg)
    assert time.perf_counter() - start < 0.5
    assert len(msg) < 1200 and what in msg


@pytest.mark.parametrize(("load", "what", "kind"), LOADERS, ids=LOADER_IDS)
@pytest.mark.parametrize("arg", [5, None, 1.5, b"bert-base", ["bert-base"]])
def test_arguments_of_the_wrong_type(load, what, kind, arg):
    assert what in _one_line_error(load, arg)


# --- strict numbers: booleans are not integers, strings are not numbers -----------------------------------

ACCEL_BAD = [
    (("mesh", "weight_double_buffer", "16"), "mesh.weight_double_buffer='16' must be true or false"),
    (("mesh", "weight_double_buffer", 16), "mesh.weight_double_buffer=16 must be true or false"),
    (("mesh", "weight_double_buffer", None), "mesh.weight_double_buffer=None"),
    (("mesh", "rows", True), "mesh.rows=True must be an integer"),
    (("mesh", "rows", "16"), "mesh.rows='16' must be an integer"),
    (("mesh", "rows", 16.0), "mesh.rows=16.0 must be an integer"),
    (("mesh", "dataflow", ["WS"]), "mesh.dataflow=['WS'] is not one of WS, OS"),
    (("dram", "bandwidth", "16e9"), "dram.bandwidth='16e9' must be a number"),
    (("dram", "latency_s", False), "dram.latency_s=False must be a number"),
    (("units", "nonlinear", None), "units.nonlinear=None is not one of host, accelerator"),
    ((None, "clock_hz", "1e9"), "clock_hz='1e9' must be a number"),
    ((None, "clock_hz", True), "clock_hz=True must be a number"),
    ((None, "description", {"a": 1}), "description={'a': 1} must be a string"),
    ((None, "sources", "paper"), "sources must be a list of strings"),
    ((None, "mesh", 16), "mesh=16 must be a mapping"),
]


@pytest.mark.parametrize(("edit", "named"), ACCEL_BAD, ids=[n for _, n in ACCEL_BAD])
def test_accelerator_fields_are_strictly_typed(tmp_path, edit, named):
    section, key, value = edit
    data = _accel_dict()
    (data[section] if section else data)[key] = value
    msg = _one_line_error(load_accel, _write_yaml(tmp_path, data, "acc.yaml"))
    assert named in msg and "acc.yaml" in msg


@pytest.mark.parametrize(("key", "value", "named"), [
    ("kind", ["gpu"], "kind=['gpu']"), ("compute_units", True, "compute_units=True"),
    ("launch_overhead", "1e-6", "launch_overhead='1e-06'"), ("description", 5, "description=5"),
])
def test_device_fields_are_strictly_typed(tmp_path, key, value, named):
    data = _device_dict()
    data[key] = value
    msg = _one_line_error(load_device, _write_yaml(tmp_path, data, "dev.yaml"))
    assert named.replace("'1e-06'", "'1e-6'") in msg


@pytest.mark.parametrize(("key", "value", "named"), [
    ("kv_heads", False, "kv_heads=False"), ("name", 5, "name=5"), ("arch", ["encoder"], "arch=['encoder']"),
    ("decoder_layers", False, "decoder_layers=False"), ("hops", "2", "hops='2'"), ("description", 1, "description=1"),
])
def test_model_file_fields_are_strictly_typed(tmp_path, key, value, named):
    data = _preset_dict()
    data[key] = value
    assert named in _one_line_error(load_model, _write_yaml(tmp_path, data))


# --- fuzzing the reader: random bytes, YAML-ish text, nested JSON; each a spec or a TstackError, fast --------

YAML_TOKENS = ["name", "layers", "hidden", "mesh", "rows", "peak_flops", "kind", ":", ": ", " ", "  ", "\n", "\t", "- ",
               "&a ", "*a", "&b ", "*b", "<<: ", "[", "]", "{", "}", ",", "'", '"', "#", "---\n", "...\n", "? ", "|\n",
               ">-\n", "!!int ", "!!str ", "!!float ", "!!binary ", "!!set ", "!!python/object:os.system ", "!foo ",
               "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "1:2:3", "0x1F", "0o17", "1e400", "-.inf", ".nan", "true",
               "null", "~", "2020-13-45", "12", "-7", "3.5", "\ufeff", "\x85", "\u2028", "\\", "%", "@", "`", "=",
               "é", "\U0001f600"]
YAMLISH = st.lists(st.one_of(st.sampled_from(YAML_TOKENS), SAFE_TEXT), max_size=60).map("".join)
NESTED_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.one_of(st.sampled_from(["name", "mesh", "layers", "peak_flops",
                                                                        "model_type", "host", "efficiency"]),
                                                       SAFE_TEXT), inner, max_size=5), max_leaves=30)
LOADER_KINDS = st.sampled_from(LOADERS)


def _fast_outcome(load, path: Path, kind: type) -> None:
    import time

    start = time.perf_counter()
    _loads_or_tstack_error(load, path, kind)
    assert time.perf_counter() - start < 5.0


@given(loader=LOADER_KINDS, content=st.binary(max_size=400), suffix=st.sampled_from([".json", ".yaml"]))
@example(loader=LOADERS[2], content=b"\xff\xfe\x00", suffix=".yaml")
@example(loader=LOADERS[0], content=BILLION_LAUGHS.encode(), suffix=".yaml")
def test_fuzz_random_bytes_every_loader(fuzz_dir, loader, content, suffix):
    load, what, kind = loader
    path = fuzz_dir / f"bytes-{what}{suffix}"
    path.write_bytes(content)
    _fast_outcome(load, path, kind)


@given(loader=LOADER_KINDS, text=YAMLISH)
@example(loader=LOADERS[1], text="a: &a [1]\nb: *a\n")
@example(loader=LOADERS[0], text="layers: 1:2:3:4:5:6:7:8:9:10")
@example(loader=LOADERS[2], text="<<: {name: x}\n")
@example(loader=LOADERS[0], text="? [a]\n: 1\n")
def test_fuzz_yamlish_text_every_loader(fuzz_dir, loader, text):
    load, what, kind = loader
    path = fuzz_dir / f"yamlish-{what}.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _fast_outcome(load, path, kind)


@given(loader=LOADER_KINDS, data=NESTED_JSON, suffix=st.sampled_from([".json", ".yaml"]))
def test_fuzz_nested_json_every_loader(fuzz_dir, loader, data, suffix):
    load, what, kind = loader
    path = fuzz_dir / f"nested-{what}{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data), encoding="utf-8")
    _fast_outcome(load, path, kind)


@given(base=st.sampled_from(["gemmini-baseline", "gemmini-ibert", "gemmini-transformer"]),
       section=st.sampled_from(["mesh", "scratchpad", "accumulator", "dma", "dram", "overheads", "host", "units",
                                "energy"]),
       changes=st.dictionaries(st.sampled_from(["rows", "cols", "dataflow", "weight_double_buffer", "bytes", "banks",
                                                "ports", "bandwidth", "latency_s", "name", "clock_hz", "nonlinear",
                                                "activation_units", "mac_int8", "extra"]), JSON_VALUES, max_size=3),
       top=st.dictionaries(st.sampled_from(["name", "clock_hz", "description", "sources", "mesh", "extra"]),
                           JSON_VALUES, max_size=2))
def test_fuzz_mutated_accelerator_presets(fuzz_dir, base, section, changes, top):
    data = _accel_dict(base)
    data[section].update(changes)
    data.update(top)
    path = fuzz_dir / "accel-mutated.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    _fast_outcome(load_accel, path, AccelSpec)


@given(arg=st.one_of(st.text(max_size=300), st.text(alphabet="ab/.-_[]\x00 ", max_size=50)))
def test_fuzz_arguments_every_loader(arg):
    for load, _, kind in LOADERS:
        try:
            result = load(arg)
        except tstack.TstackError:
            continue
        assert isinstance(result, kind)
