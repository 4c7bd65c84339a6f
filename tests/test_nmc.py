"""Near-memory compute: stream times derived by hand from the HBM2 timing table, and the optimizer offload."""

from __future__ import annotations

import pytest

from tstack.api import analyze
from tstack.costmodel.nmc import Stream, Work, compute_cycles, memory_cycles, nmc_seconds
from tstack.errors import SpecError
from tstack.hardware.device import load_device
from tstack.hardware.memory import load_memory, memory_presets
from tstack.models import load_model
from tstack.spec import RunSpec, preset_dir
from tstack.studies.nmc_offload import offload

PIM = load_memory("hbm2-pim")
SHARED = load_memory("hbm2-pim-shared")
REFRESH = 3900 / (3900 - 350)  # tREFI / (tREFI − tRFC)
TCK = 1e-9


def test_organization_from_the_table():
    # 4 stacks × 8 channels × 2 pseudo-channels × 16 banks; BL 4 × 64 bits = 32 B per column; 1 KB rows: 32 columns
    assert PIM.banks == 1024 and PIM.alus == 1024 and SHARED.alus == 512
    assert PIM.access_bytes == 32 and PIM.columns_per_row == 32
    assert set(memory_presets()) >= {"hbm2-pim", "hbm2-pim-shared"}


def test_one_read_stream_equals_the_hand_derivation():
    # Each bank reads 3 full rows and 10 columns of a fourth: 1024 banks × (3·1024 + 320) bytes of fp32.
    # Full row: tRCD_RD + 32·tCCD_L = 14 + 128 = 142 ≥ tRAS (33), + tRP 14 = 156 cycles.
    # Partial row: max(tRAS 33, 14 + 10·4 = 54) + 14 = 68 cycles.  Total 3·156 + 68 = 536 cycles.
    n = 1024 * (3 * 1024 + 320) // 4
    work = Work(n, (Stream(4),), 0)
    assert memory_cycles(PIM, work) == 3 * 156 + 68
    seconds, memory_s = nmc_seconds(PIM, work)
    assert seconds == pytest.approx(536 * REFRESH * TCK, rel=1e-12) and memory_s == seconds


def test_one_write_stream_equals_the_hand_derivation():
    # Full row written: tRCD_WR 10 + 31·tCCD_L 124 + WL 8 + BL/2 2 + tWR 16 = 160 ≥ tRAS, + tRP 14 = 174 cycles.
    work = Work(1024 * 2 * 1024 // 2, (Stream(2, write=True),), 0)  # fp16: two full rows per bank
    assert memory_cycles(PIM, work) == 2 * 174


def test_two_banks_per_alu_serialize_their_columns():
    # Same stream as the read case: 106 columns per bank; an ALU serving 2 banks issues 2·106 column slots of
    # tCCD_L = 848 cycles, more than one bank's 536: the ALU, not the rows, sets the time.
    work = Work(1024 * (3 * 1024 + 320) // 4, (Stream(4),), 0)
    assert memory_cycles(SHARED, work) == 2 * 106 * 4


def test_several_streams_reopen_rows_once_per_register_chunk():
    # Two fp32 reads and one write: 8 registers × 32 B = 256 B = 64 elements per chunk and stream; 5 chunks per bank.
    # Read of 8 columns: max(33, 14 + 32) + 14 = 60; write of 8: max(33, 10 + 28 + 8 + 2 + 16 = 64) + 14 = 78.
    work = Work(1024 * 64 * 5, (Stream(4), Stream(4), Stream(4, write=True)), 3)
    assert memory_cycles(PIM, work) == 5 * (60 + 60 + 78)


def test_compute_bound_kernel():
    # 80 fp32 elements per ALU on 256-bit SIMD = 8 lanes: 10 instruction rounds of ⌈20 FLOPs / 2⌉ = 10 FMAs, each
    # one tCCD_L (4 cycles): 400 cycles, above the 68 cycles of memory (10 columns).
    work = Work(1024 * 80, (Stream(4),), 20)
    assert compute_cycles(PIM, work) == 400 and memory_cycles(PIM, work) == 68
    seconds, memory_s = nmc_seconds(PIM, work)
    assert seconds == pytest.approx(400 * REFRESH * TCK) and memory_s < seconds


def test_optimizer_offload_beats_the_optimistic_gpu_and_shortens_the_iteration():
    run = RunSpec(mode="train", batch=4, seq=128, precision="fp16-mixed")
    model, mi100 = load_model("bert-base"), load_device("mi100")
    r = offload(model, run, mi100, PIM)
    names = {row.name for row in r.rows}
    assert {"lamb-stage1", "lamb-stage2", "lamb-norms", "lamb-global-norm", "grad-to-master"} <= names
    assert all(row.nmc_seconds < row.optimistic_seconds <= row.gpu_seconds for row in r.rows)
    # the figures against the GPU breakdown of the same iteration: its total, and its kernels of the offloaded names
    b = analyze(model, run, mi100)
    iteration = b.total.seconds
    gpu = sum(c.seconds for op, c in zip(b.ops, b.costs) if op.name in names)
    nmc = sum(row.nmc_seconds for row in r.rows)
    assert r.iteration_seconds == pytest.approx(iteration)
    assert r.offloaded_gpu_seconds == pytest.approx(gpu)
    assert r.offloaded_optimistic_seconds == pytest.approx(sum(row.optimistic_seconds for row in r.rows))
    assert r.offloaded_nmc_seconds == pytest.approx(nmc)
    assert r.iteration_nmc_seconds == pytest.approx(iteration - gpu + nmc)
    # every offloaded kernel is faster on NMC (above), so the iteration is shorter by exactly the offloaded saving
    saving = gpu - nmc
    assert saving > 0
    assert r.summary()["end_to_end_speedup"] == pytest.approx(iteration / (iteration - saving))
    shared = offload(model, run, mi100, SHARED)
    assert shared.offloaded_nmc_seconds >= r.offloaded_nmc_seconds
    ew = offload(load_model("bert-base"), run, load_device("mi100"), PIM, scope="elementwise")
    assert {"dropout", "bias-gelu", "residual"} <= {row.name for row in ew.rows}


def test_bad_memory_file_names_the_field(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text((preset_dir("memories") / "hbm2-pim.yaml").read_text().replace("tRFC: 350", "tRFC: 0"))
    with pytest.raises(SpecError, match="tRFC"):
        load_memory(path)
