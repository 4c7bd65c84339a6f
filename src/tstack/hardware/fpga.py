"""FpgaSpec: an FPGA part and board as data (logic, memories, clock, off-chip memory, AXI, power), from YAML.

Loading collects every problem (unknown or missing field, value out of range) and raises one SpecError naming the
field, the value and what is allowed. Units inside are SI: hertz, byte/s, watt, joule; resources are counts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tstack import checks
from tstack.errors import SpecError
from tstack.loader import load_spec, presets_in, show, unknown_fields
from tstack.spec import preset_dir

BRAM36_BITS = 36 * 1024  # UltraScale+ block RAM: 36 Kb per BRAM36 (DS923 / UG573)
URAM_BITS = 288 * 1024  # UltraScale+ UltraRAM: 288 Kb per block (UG573)
RESOURCES = ("lut", "ff", "dsp", "bram")  # what an operation's lanes use; bram counts BRAM36 blocks


@dataclass(frozen=True)
class Power:
    """Static power of the part and board, and dynamic energy per active resource per clock cycle (J/cycle)."""

    static_w: float
    lut_j_per_cycle: float
    ff_j_per_cycle: float
    dsp_j_per_cycle: float
    bram_j_per_cycle: float
    dram_j_per_byte: float

    def __post_init__(self) -> None:
        problems: list[str] = []
        checks.number(problems, "power.static_w", self.static_w, 0.0, 1e4)
        for name in ("lut_j_per_cycle", "ff_j_per_cycle", "dsp_j_per_cycle", "bram_j_per_cycle", "dram_j_per_byte"):
            checks.number(problems, f"power.{name}", getattr(self, name), 0.0, 1e-6)
        if problems:
            raise SpecError(problems, "power")


@dataclass(frozen=True)
class FpgaSpec:
    """An FPGA board: resources of the part, design clock, off-chip memory channels and the design's AXI ports."""

    name: str
    part: str
    luts: int
    ffs: int
    dsps: int
    bram36_blocks: int
    uram_blocks: int
    clock_hz: float
    memory_channels: int
    channel_bytes_per_s: float
    axi_ports: int
    axi_width_bits: int
    power: Power
    description: str = ""
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("name", "part", "description"):
            if not isinstance(getattr(self, name), str) or (name != "description" and not getattr(self, name)):
                problems.append(f"{name}={show(getattr(self, name))} must be a non-empty string")
        checks.number(problems, "luts", self.luts, 1, 10**8, integer=True)
        checks.number(problems, "ffs", self.ffs, 1, 10**8, integer=True)
        checks.number(problems, "dsps", self.dsps, 1, 10**6, integer=True)
        checks.number(problems, "bram36_blocks", self.bram36_blocks, 0, 10**6, integer=True)
        checks.number(problems, "uram_blocks", self.uram_blocks, 0, 10**6, integer=True)
        checks.number(problems, "clock_hz", self.clock_hz, 1e6, 2e9)
        checks.number(problems, "memory_channels", self.memory_channels, 1, 64, integer=True)
        checks.number(problems, "channel_bytes_per_s", self.channel_bytes_per_s, 1e6, 1e13)
        checks.number(problems, "axi_ports", self.axi_ports, 1, 64, integer=True)
        checks.number(problems, "axi_width_bits", self.axi_width_bits, 8, 4096, integer=True)
        if not isinstance(self.power, Power):
            problems.append("power must be a mapping of power terms")
        if not isinstance(self.sources, tuple) or not all(isinstance(x, str) for x in self.sources):
            problems.append("sources must be a list of strings")
        if problems:
            raise SpecError(problems, f"fpga {show(self.name, 40)}")

    @property
    def memory_bytes_per_s(self) -> float:
        """What the design can stream: the DRAM channels' peak or the AXI ports' width × clock, whichever is less."""
        return min(self.memory_channels * self.channel_bytes_per_s, self.axi_ports * self.axi_width_bits / 8 * self.clock_hz)

    @property
    def on_chip_bytes(self) -> float:
        return (self.bram36_blocks * BRAM36_BITS + self.uram_blocks * URAM_BITS) / 8

    def budget(self) -> dict[str, float]:
        """The resources an allocation may use, by RESOURCES name."""
        return {"lut": float(self.luts), "ff": float(self.ffs), "dsp": float(self.dsps), "bram": float(self.bram36_blocks)}


def fpga_from_dict(data: Any, where: str) -> FpgaSpec:
    if not isinstance(data, dict):
        raise SpecError([f"expected a mapping of FPGA fields, got {type(data).__name__}"], where)
    known = {f.name for f in fields(FpgaSpec)}
    problems = unknown_fields(data, known, lambda k: show(k, 40))
    problems += [f"missing field {k!r}" for k in sorted(known - {"description", "sources"}) if k not in data]
    power = data.get("power", {})
    if not isinstance(power, dict):
        problems.append("power must be a mapping")
        power = {}
    power_known = {f.name for f in fields(Power)}
    problems += unknown_fields(power, power_known, lambda k: f"power.{show(k, 40)}")
    problems += [f"missing field 'power.{k}'" for k in sorted(power_known) if "power" in data and k not in power]
    if problems:
        raise SpecError(problems, where)
    try:
        rest = {k: v for k, v in data.items() if k != "power"}
        sources = rest.get("sources", ())
        rest["sources"] = tuple(sources) if isinstance(sources, list) else sources
        return FpgaSpec(**rest, power=Power(**power))
    except SpecError as e:
        raise SpecError(list(e.problems), where) from None


def fpga_presets() -> list[str]:
    return presets_in(preset_dir("fpgas"))


def load_fpga(name_or_path: str | Path | FpgaSpec) -> FpgaSpec:
    """An FPGA board by preset name or from a YAML file."""
    if isinstance(name_or_path, FpgaSpec):
        return name_or_path
    return load_spec(name_or_path, "fpga", preset_dir("fpgas"), lambda data, where, _path: fpga_from_dict(data, where),
                     "or give a path to an FPGA .yaml file")
