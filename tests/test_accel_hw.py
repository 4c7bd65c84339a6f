"""Accelerator hardware descriptions: presets load with their documented sizes; invalid descriptions are rejected clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tstack.errors import SpecError, UnknownNameError
from tstack.hardware.accel import AccelSpec, KiB, Mesh, Units, accel_from_dict, accel_presets, accel_to_dict, load_accel


def test_presets_hold_the_papers_sizes():
    assert accel_presets() == ["gemmini-baseline", "gemmini-ibert", "gemmini-transformer"]
    base, tr, ib = (load_accel(n) for n in ("gemmini-baseline", "gemmini-transformer", "gemmini-ibert"))
    # 000 §II-1: 16×16 WS, 256 kB scratchpad, 64 kB accumulator; §II-3: 64 kB / 256 kB; §II-4: 16 activation units.
    assert (base.dim, base.mesh.dataflow, base.scratchpad.bytes, base.accumulator.bytes) == (16, "WS", 256 * KiB, 64 * KiB)
    assert (tr.scratchpad.bytes, tr.accumulator.bytes) == (64 * KiB, 256 * KiB)
    assert (ib.units.nonlinear, ib.units.activation_units, ib.scratchpad.bytes) == ("accelerator", 16, 64 * KiB)
    assert base.units.nonlinear == "host"
    assert base.spad_rows == 256 * KiB // 16  # rows of DIM int8 values
    assert base.acc_rows == 64 * KiB // (4 * 16)  # rows of DIM int32 values = 1024
    assert all(base.sources)


def test_round_trip_through_a_mapping():
    hw = load_accel("gemmini-ibert")
    assert accel_from_dict(accel_to_dict(hw), "x") == hw


def _bad(tmp_path: Path, **edits: object) -> str:
    data = accel_to_dict(load_accel("gemmini-baseline"))
    for key, value in edits.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    with pytest.raises(SpecError) as e:
        load_accel(path)
    return str(e.value)


def test_out_of_range_values_name_field_value_and_range(tmp_path):
    msg = _bad(tmp_path, mesh__rows=0, dma__bus_bytes_per_cycle=-4)
    assert "mesh.rows=0 must be an integer in [1, 1024]" in msg
    assert "dma.bus_bytes_per_cycle=-4 must be an integer in [1, 4096]" in msg
    assert "bad.yaml" in msg


def test_choices_and_structure_are_checked(tmp_path):
    assert "mesh.dataflow='RS' is not one of WS, OS" in _bad(tmp_path, mesh__dataflow="RS")
    assert "must be equal" in _bad(tmp_path, mesh__cols=32)
    assert "scratchpad.bytes=2000 must be a multiple" in _bad(tmp_path, scratchpad__bytes=2000)
    assert "unknown field mesh.size" in _bad(tmp_path, mesh__size=4)
    assert "units.activation_units=0 must be >= 1" in _bad(tmp_path, units__nonlinear="accelerator")


def test_missing_fields_and_unknown_names():
    data = accel_to_dict(load_accel("gemmini-baseline"))
    del data["dma"]
    with pytest.raises(SpecError, match="missing field 'dma'"):
        accel_from_dict(data, "x")
    with pytest.raises(UnknownNameError, match="gemmini-baseline"):
        load_accel("gemmini-typo")


def test_direct_construction_is_validated():
    with pytest.raises(SpecError, match="units.nonlinear='gpu'"):
        AccelSpec(name="x", units=Units(nonlinear="gpu"))
    with pytest.raises(SpecError, match="mesh.rows=True"):
        AccelSpec(name="x", mesh=Mesh(rows=True))
