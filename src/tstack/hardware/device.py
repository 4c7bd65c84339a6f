"""DeviceSpec: peak rates, memory bandwidth, launch overhead and an efficiency model, from data files."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tstack import checks
from tstack.calibration import Calibration
from tstack.errors import SpecError
from tstack.loader import label, load_spec, presets_in, show, unknown_fields
from tstack.spec import preset_dir

UNITS = ("matrix", "vector")
DTYPES = ("fp32", "tf32", "fp16", "bf16", "int8")  # tf32: fp32 storage, TF32 tensor-core GEMMs


@dataclass(frozen=True)
class Efficiency:
    """Size-dependent efficiency: how close a kernel of a given shape gets to peak.

    GEMMs: ``matrix_max`` × operand reuse of the tile chosen × tile quantization (M, N padded
    to the tile) × wave quantization (tiles, split along K when few, spread over
    ``compute_units``) × K-loop efficiency K/(K + ``k_half``); see costmodel.roofline.
    Memory-bound kernels: ``memory_max`` × bytes/(bytes + ``bytes_half``) (small kernels
    cannot fill the memory pipeline). Vector arithmetic reaches ``vector_max`` of peak.
    """

    tile_m: int = 128
    tile_n: int = 128
    k_half: float = 64.0
    matrix_max: float = 0.8
    vector_max: float = 0.7
    memory_max: float = 0.85
    bytes_half: float = 1.0e6

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("tile_m", "tile_n"):
            checks.number(problems, f"efficiency.{name}", getattr(self, name), 1, 4096, integer=True)
        checks.number(problems, "efficiency.k_half", self.k_half, 0.0, 1e9)
        checks.number(problems, "efficiency.bytes_half", self.bytes_half, 0.0, 1e15)
        for name in ("matrix_max", "vector_max", "memory_max"):
            checks.number(problems, f"efficiency.{name}", getattr(self, name), 1e-6, 1.0)
        if problems:
            raise SpecError(problems, "efficiency")


@dataclass(frozen=True)
class DeviceSpec:
    """A processor: peak FLOP/s per unit and dtype, DRAM bandwidth, launch overhead, efficiency."""

    name: str
    kind: str  # gpu | cpu
    compute_units: int
    peak_flops: dict[str, dict[str, float]]  # unit -> dtype -> FLOP/s
    memory_bandwidth: float  # byte/s
    memory_capacity: float  # byte
    launch_overhead: float  # s per kernel
    efficiency: Efficiency = field(default_factory=Efficiency)
    description: str = ""
    sources: tuple[str, ...] = ()
    calibration: Calibration | None = None  # measured kernel tables (`tstack calibrate`)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.name, str) or not self.name:
            problems.append(f"name={show(self.name)} must be a non-empty string")
        if not isinstance(self.kind, str) or self.kind not in ("gpu", "cpu"):
            problems.append(f"kind={show(self.kind)} is not one of gpu, cpu")
        checks.number(problems, "compute_units", self.compute_units, 1, 1_000_000, integer=True)
        self._check_peaks(problems)
        checks.number(problems, "memory_bandwidth", self.memory_bandwidth, 1e6, 1e15)
        checks.number(problems, "memory_capacity", self.memory_capacity, 1e6, 1e15)
        checks.number(problems, "launch_overhead", self.launch_overhead, 0.0, 1.0)
        if not isinstance(self.description, str):
            problems.append(f"description={show(self.description)} must be a string")
        if not isinstance(self.sources, tuple) or not all(isinstance(x, str) for x in self.sources):
            problems.append("sources must be a list of strings")
        if not isinstance(self.efficiency, Efficiency):
            problems.append("efficiency must be a mapping of efficiency terms")
        if problems:
            raise SpecError(problems, f"device {show(self.name, 40)}")

    def _check_peaks(self, problems: list[str]) -> None:
        if not isinstance(self.peak_flops, dict):
            problems.append("peak_flops must be a mapping of unit (matrix, vector) to dtype rates")
            return
        for unit, rates in self.peak_flops.items():
            if not isinstance(unit, str) or unit not in UNITS:
                problems.append(f"peak_flops.{label(unit)} is not one of {', '.join(UNITS)}")
            elif not isinstance(rates, dict):
                problems.append(f"peak_flops.{unit}={show(rates)} must be a mapping of dtype to FLOP/s")
            else:
                for dt, v in rates.items():
                    if not isinstance(dt, str) or dt not in DTYPES:
                        problems.append(f"peak_flops.{unit}.{label(dt)} is not one of {', '.join(DTYPES)}")
                    else:
                        checks.number(problems, f"peak_flops.{unit}.{dt}", v, 1e6, 1e18)
        vector = self.peak_flops.get("vector")
        if not isinstance(vector, dict) or "fp32" not in vector:
            problems.append("peak_flops.vector.fp32 is required")

    def peak(self, unit: str, dtype: str) -> float:
        """Peak FLOP/s of a unit for a dtype; a clear error when the device lacks it."""
        rates = self.peak_flops.get(unit, {})
        if unit == "matrix" and dtype not in rates:
            rates = self.peak_flops["vector"]  # no matrix engine for this dtype: the vector units do GEMMs
        if dtype not in rates:
            have = sorted(set(self.peak_flops.get("matrix", {})) | set(self.peak_flops["vector"]))
            raise SpecError([f"precision {dtype} is not supported (device has: {', '.join(have)})"],
                            f"device {show(self.name, 40)}")
        return float(rates[dtype])


def device_from_dict(data: Any, where: str) -> DeviceSpec:
    if not isinstance(data, dict):
        raise SpecError([f"expected a mapping of device fields, got {type(data).__name__}"], where)
    known = {f.name for f in fields(DeviceSpec)}
    problems = unknown_fields(data, known, lambda k: show(k, 40))
    problems += [f"missing field {k!r}" for k in ("name", "kind", "compute_units", "peak_flops", "memory_bandwidth",
                                                   "memory_capacity", "launch_overhead") if k not in data]
    eff = data.get("efficiency", {})
    eff_known = {f.name for f in fields(Efficiency)}
    if not isinstance(eff, dict):
        problems.append("efficiency must be a mapping")
        eff = {}
    problems += unknown_fields(eff, eff_known, lambda k: f"efficiency.{show(k, 40)}")
    if problems:
        raise SpecError(problems, where)
    try:
        efficiency = Efficiency(**eff)
    except SpecError as e:
        raise SpecError(list(e.problems), where) from None
    rest = {k: v for k, v in data.items() if k not in ("efficiency", "calibration")}
    if data.get("calibration") is not None:
        rest["calibration"] = Calibration.from_dict(data["calibration"], where)
    sources = rest.get("sources", ())
    rest["sources"] = tuple(sources) if isinstance(sources, list) else sources
    return DeviceSpec(**rest, efficiency=efficiency)


def device_presets() -> list[str]:
    return presets_in(preset_dir("devices"))


def load_device(name_or_path: str | Path | DeviceSpec) -> DeviceSpec:
    """A device by preset name or from a YAML file (e.g. one written by `tstack calibrate`)."""
    if isinstance(name_or_path, DeviceSpec):
        return name_or_path
    return load_spec(name_or_path, "device", preset_dir("devices"), lambda data, where, _path: device_from_dict(data, where),
                     "or give a path to a device .yaml file")


def device_to_dict(dev: DeviceSpec) -> dict[str, Any]:
    """The device as the mapping its YAML file holds (inverse of device_from_dict)."""
    out: dict[str, Any] = {
        "name": dev.name, "kind": dev.kind, "description": dev.description, "compute_units": dev.compute_units,
        "peak_flops": {u: dict(r) for u, r in dev.peak_flops.items()}, "memory_bandwidth": dev.memory_bandwidth,
        "memory_capacity": dev.memory_capacity, "launch_overhead": dev.launch_overhead,
        "efficiency": {f.name: getattr(dev.efficiency, f.name) for f in fields(Efficiency)},
        "sources": list(dev.sources),
    }
    if dev.calibration is not None:
        out["calibration"] = dev.calibration.to_dict()
    return out
