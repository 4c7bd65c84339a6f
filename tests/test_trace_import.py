"""`import-trace`: a torch.profiler Chrome trace recorded here (CPU) maps every GEMM onto the predicted GEMM."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from tstack import RunSpec, build  # noqa: E402
from tstack.hfconfig import from_hf_config  # noqa: E402
from tstack.profiler.chrome import import_trace, steps  # noqa: E402

B, S = 2, 12  # S differs from every head width, so QKᵀ (S×S×dh) and P·V (dh×S×S) cannot be confused


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy shared host more threads spin against each other under the profiler."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def record(model, ids, path, steps_n: int = 2, **kw) -> None:
    """Record ``steps_n`` forward passes, each marked ProfilerStep#i as torch.profiler's schedule marks them."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_modules=True,
                                  with_stack=True) as prof:
        for i in range(steps_n):
            with record_function(f"ProfilerStep#{i}"):
                model(input_ids=ids, **kw)
    prof.export_chrome_trace(str(path))


def check_every_gemm_maps(imp, ops, same_batch: bool) -> None:
    assert not imp.unmatched and not imp.missing
    assert len(imp.matched) == sum(o.count for o in ops if o.is_gemm)
    for g, op in imp.matched:
        M, N, K, batch = op.gemm_shape
        if same_batch:
            assert (g.M, g.N, g.K, g.batch) == (M, N, K, batch)
        else:  # eager GQA repeats K/V per query head: batch B·h of N=Sq is tstack's B·hk of N=Sq·group
            assert (g.M, g.K, g.N * g.batch) == (M, K, N * batch)
        assert g.flops == op.flops and g.seconds > 0
    assert imp.measured.ops == tuple(op for op in ops if op.is_gemm)  # labels included, predicted order


def test_bert_cpu_trace_maps_every_gemm_with_labels_and_shape(tmp_path):
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=80, max_position_embeddings=32, attn_implementation="eager",
                                  architectures=["BertForPreTraining"])
    model = transformers.BertModel(cfg).eval()  # the pooler is tstack's bert-pretrain inference head
    path = tmp_path / "bert.json"
    record(model, torch.randint(2, 64, (B, S)), path)
    spec, run = from_hf_config(cfg.to_dict(), "bert-tiny", "test"), RunSpec(batch=B, seq=S)
    imp = import_trace(path, spec, run)
    assert imp.step == "ProfilerStep#1"
    assert [n for n, _, _ in steps(json.loads(path.read_text())["traceEvents"])] == [0, 1]
    check_every_gemm_maps(imp, build(spec, run), same_batch=True)
    names = [op.name for _, op in imp.matched]
    assert names[:5] == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.score", "attn.context"]
    # module scopes (with_modules): each Linear in its own nn.Linear, each B-GEMM in its layer's attention module
    for g, op in imp.matched:
        if op.kind == "gemm":
            assert g.module.startswith("Linear_"), (g, op.name)
        else:
            assert g.module == f"BertSelfAttention_{op.label('layer')[1:]}"
    assert import_trace(path, spec, run, step=0).step == "ProfilerStep#0"


def test_llama_gqa_cpu_trace_maps_every_gemm(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=96, max_position_embeddings=32,
                                   tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=None,
                                   attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).eval()
    path = tmp_path / "llama.json"
    record(model, torch.randint(2, 64, (B, S)), path, steps_n=1, logits_to_keep=1)
    spec, run = from_hf_config(cfg.to_dict(), "llama-tiny", "test"), RunSpec(batch=B, seq=S)
    imp = import_trace(path, spec, run)
    # the rotary cos/sin table is one extra product (inv_freq ⊗ positions) tstack does not model as a layer kernel
    assert all(g.K == 1 for g in imp.unmatched) and len(imp.unmatched) <= 1
    imp = type(imp)(**{**imp.__dict__, "unmatched": ()})
    check_every_gemm_maps(imp, build(spec, run), same_batch=False)


@pytest.mark.parametrize("train", [False, True])
def test_sdpa_cpu_trace_maps_the_fused_attention_kernel(tmp_path, train):
    """HF's SDPA attention traced on CPU: each aten::scaled_dot_product_attention call (and, in training, its
    backward kernel) maps onto tstack's fused attention op of ``--attention sdpa``, counted as FlopCounterMode counts
    it (two products forward, five backward); every other GEMM maps as before."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=96, max_position_embeddings=32,
                                   tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=None,
                                   attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).train(train)
    ids = torch.randint(2, 64, (B, S))
    path = tmp_path / "sdpa.json"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_modules=True) as prof:
        with record_function("ProfilerStep#0"), torch.set_grad_enabled(train):
            out = model(input_ids=ids, **({"labels": ids} if train else {"logits_to_keep": 1}))
            if train:
                out.loss.backward()
    prof.export_chrome_trace(str(path))
    spec = from_hf_config(cfg.to_dict(), "llama-tiny", "test")
    run = RunSpec(mode="train" if train else "infer", batch=B, seq=S, attention="sdpa")
    imp = import_trace(path, spec, run)
    fused = [(g, op) for g, op in imp.matched if op.label("fusion") == "flash-attention"]
    assert len(fused) == spec.layers * (2 if train else 1) and not imp.missing
    assert all(g.K == 1 for g in imp.unmatched) and len(imp.unmatched) <= 1  # the rotary table, as unfused
    # FlopCounterMode's formulas (its CPU flash kernel is not registered with it, so call them directly)
    q, kv = (B, 4, S, 16), (B, 2, S, 16)
    per_layer = sdpa_flop_count(q, kv, kv) + (sdpa_backward_flop_count(q, q, kv, kv) if train else 0)
    assert sum(g.flops for g, _ in fused) == spec.layers * per_layer
    for g, op in fused:
        assert g.products == (2 if op.label("pass") == "fwd" else 5) and g.seconds > 0
        assert (g.M, g.K, g.N * g.batch) == (op.dim("M"), op.dim("K"), op.dim("N") * op.dim("batch")) == (S, 16, B * 4 * S)


def test_shipped_trace_imports_without_torch_and_validates(tmp_path):
    """examples/ holds a CPU trace of examples/bert-tiny (B=2, S=16): `validate --trace` compares its 17 GEMMs."""
    from pathlib import Path

    from tstack import load_model
    from tstack.cli.core import run

    examples = Path(__file__).resolve().parents[1] / "examples"
    model, trace = str(examples / "bert-tiny"), str(examples / "bert-tiny-cpu-trace.json")
    spec = load_model(model)
    imp = import_trace(trace, spec, RunSpec(batch=2, seq=16))
    assert imp.step == "ProfilerStep#2" and len(imp.matched) == 17 and not imp.unmatched and not imp.missing
    out = tmp_path / "v.json"
    assert run(["-q", "validate", model, "--trace", trace, "-d",
                "xeon-gold-5220-2s", "--batch", "2", "--seq", "16", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["records"]) == 17 and doc["summary"]["configurations"][0]["step"] == "ProfilerStep#2"
    # a step the trace does not mark: one clear error, exit code 2
    assert run(["-q", "import-trace", trace, "--model", model, "--step", "9"]) == 2


def test_cuda_trace_times_each_product_by_its_kernels(tmp_path):
    """A CUDA trace: each GEMM's time is the summed duration of the GPU kernels with its External id (a split-K
    GEMM launches two), not the CPU op's launch time."""
    spec = from_hf_config(transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                  num_attention_heads=4, intermediate_size=80,
                                                  max_position_embeddings=32).to_dict(), "bert-tiny", "test")
    run = RunSpec(batch=B, seq=S)
    gemms = [o for o in build(spec, run) if o.is_gemm]
    events = [{"name": "ProfilerStep#3", "cat": "user_annotation", "ph": "X", "pid": 1, "tid": 1, "ts": 0,
               "dur": 10_000},  # and its copy on the GPU's timeline, later and shorter, as torch.profiler writes it
              {"name": "ProfilerStep#3", "cat": "gpu_user_annotation", "ph": "X", "pid": 0, "tid": 7, "ts": 110,
               "dur": 5_000}]
    for i, o in enumerate(gemms):
        M, N, K, batch = o.gemm_shape
        dims = [[M], [N, K], [K, M], [], []] if o.kind == "gemm" else [[batch, N, K], [batch, K, M]]
        name = "aten::addmm" if o.kind == "gemm" else "aten::bmm"
        events.append({"name": name, "cat": "cpu_op", "ph": "X", "pid": 1, "tid": 1, "ts": 100 + 200 * i, "dur": 50,
                       "args": {"Input Dims": dims, "External id": 1000 + i}})
        for part in range(2):
            events.append({"name": "sm80_gemm", "cat": "kernel", "ph": "X", "pid": 0, "tid": 7, "ts": 120 + 200 * i + 10 * part,
                           "dur": 3 + i, "args": {"External id": 1000 + i}})
    path = tmp_path / "cuda.json"
    path.write_text(json.dumps({"traceEvents": events}))
    imp = import_trace(path, spec, run)
    assert imp.cuda and imp.step == "ProfilerStep#3" and imp.step_seconds == pytest.approx(0.01)
    assert [g.seconds for g, _ in imp.matched] == pytest.approx([2 * (3 + i) * 1e-6 for i in range(len(gemms))])
    check_every_gemm_maps(imp, tuple(gemms), same_batch=True)
