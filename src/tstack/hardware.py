"""DeviceSpec: peak rates, memory bandwidth, launch overhead and an efficiency model, from data files."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tstack.errors import SpecError, UnknownNameError
from tstack.spec import preset_dir

UNITS = ("matrix", "vector")
DTYPES = ("fp32", "fp16", "bf16", "int8")


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

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in ("gpu", "cpu"):
            problems.append(f"kind={self.kind!r} is not one of gpu, cpu")
        if not isinstance(self.compute_units, int) or not 1 <= self.compute_units <= 1_000_000:
            problems.append(f"compute_units={self.compute_units!r} must be an integer in [1, 1000000]")
        for unit, rates in self.peak_flops.items() if isinstance(self.peak_flops, dict) else ():
            if unit not in UNITS:
                problems.append(f"peak_flops.{unit} is not one of {', '.join(UNITS)}")
            for dt, v in rates.items() if isinstance(rates, dict) else ():
                if dt not in DTYPES:
                    problems.append(f"peak_flops.{unit}.{dt} is not one of {', '.join(DTYPES)}")
                elif not isinstance(v, (int, float)) or not 1e6 <= v <= 1e18:
                    problems.append(f"peak_flops.{unit}.{dt}={v!r} must be a number of FLOP/s in [1e6, 1e18]")
        if not isinstance(self.peak_flops, dict) or "fp32" not in self.peak_flops.get("vector", {}):
            problems.append("peak_flops.vector.fp32 is required")
        for name, lo, hi in (("memory_bandwidth", 1e6, 1e15), ("memory_capacity", 1e6, 1e15), ("launch_overhead", 0.0, 1.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                problems.append(f"{name}={v!r} must be a number in [{lo:g}, {hi:g}]")
        e = self.efficiency
        for name in ("matrix_max", "vector_max", "memory_max"):
            if not 0 < getattr(e, name) <= 1:
                problems.append(f"efficiency.{name}={getattr(e, name)!r} must be in (0, 1]")
        if problems:
            raise SpecError(problems, f"device {self.name!r}")

    def peak(self, unit: str, dtype: str) -> float:
        """Peak FLOP/s of a unit for a dtype; a clear error when the device lacks it."""
        rates = self.peak_flops.get(unit, {})
        if unit == "matrix" and dtype not in rates:
            rates = self.peak_flops["vector"]  # no matrix engine for this dtype: the vector units do GEMMs
        if dtype not in rates:
            have = sorted(set(self.peak_flops.get("matrix", {})) | set(self.peak_flops["vector"]))
            raise SpecError([f"precision {dtype} is not supported (device has: {', '.join(have)})"], f"device {self.name!r}")
        return float(rates[dtype])


def device_from_dict(data: Any, where: str) -> DeviceSpec:
    if not isinstance(data, dict):
        raise SpecError([f"expected a mapping of device fields, got {type(data).__name__}"], where)
    known = {f.name for f in fields(DeviceSpec)}
    problems = [f"unknown field {k!r} (allowed: {', '.join(sorted(known))})" for k in data if k not in known]
    problems += [f"missing field {k!r}" for k in ("name", "kind", "compute_units", "peak_flops", "memory_bandwidth",
                                                   "memory_capacity", "launch_overhead") if k not in data]
    eff = data.get("efficiency", {})
    eff_known = {f.name for f in fields(Efficiency)}
    if not isinstance(eff, dict):
        problems.append("efficiency must be a mapping")
        eff = {}
    problems += [f"unknown field efficiency.{k!r} (allowed: {', '.join(sorted(eff_known))})" for k in eff if k not in eff_known]
    if problems:
        raise SpecError(problems, where)
    try:
        efficiency = Efficiency(**{k: float(v) if k not in ("tile_m", "tile_n") else int(v) for k, v in eff.items()})
    except (TypeError, ValueError) as e:
        raise SpecError([f"efficiency: {e}"], where) from None
    rest = {k: v for k, v in data.items() if k != "efficiency"}
    rest["sources"] = tuple(rest.get("sources", ()))
    return DeviceSpec(**rest, efficiency=efficiency)


def device_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir("devices").glob("*.yaml"))


def load_device(name_or_path: str | Path | DeviceSpec) -> DeviceSpec:
    """A device by preset name or from a YAML file (e.g. one written by `tstack calibrate`)."""
    if isinstance(name_or_path, DeviceSpec):
        return name_or_path
    path = Path(name_or_path)
    if not path.suffix:
        path = preset_dir("devices") / f"{name_or_path}.yaml"
        if not path.exists():
            raise UnknownNameError(f"unknown device {str(name_or_path)!r} (presets: {', '.join(device_presets())})")
    elif not path.exists():
        raise UnknownNameError(f"device file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpecError([f"not valid YAML ({type(e).__name__})"], f"device file {str(path)!r}") from None
    return device_from_dict(data, f"device file {str(path)!r}")
