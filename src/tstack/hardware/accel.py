"""AccelSpec: a Gemmini-style accelerator (mesh, scratchpad, accumulator, DMA, DRAM, host, units, energy) from YAML.

Loading collects every problem (unknown or missing field, value out of range) and raises one SpecError naming the
field, the value and what is allowed. Units inside are SI (byte, second, hertz, joule); cycles are derived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from tstack import checks
from tstack.errors import SpecError
from tstack.loader import check_name, label, load_spec, presets_in, show, unknown_fields
from tstack.spec import preset_dir

DATAFLOWS = ("WS", "OS")
NONLINEAR_LOCATIONS = ("host", "accelerator")
KiB = 1024


@dataclass(frozen=True)
class Mesh:
    """The systolic array: rows × cols PEs of int8 MACs with int32 partial sums."""

    rows: int = 16
    cols: int = 16
    dataflow: str = "WS"
    weight_double_buffer: bool = True  # Gemmini PEs hold two weights, so the next preload overlaps compute
    RANGES: ClassVar = {"rows": (1, 1024, True), "cols": (1, 1024, True)}
    CHOICES: ClassVar = {"dataflow": DATAFLOWS}
    FLAGS: ClassVar = ("weight_double_buffer",)


@dataclass(frozen=True)
class Sram:
    """A local SRAM: capacity in bytes, banks, ports per bank."""

    bytes: int = 256 * KiB
    banks: int = 4
    ports: int = 1
    RANGES: ClassVar = {"bytes": (1 * KiB, 1 << 30, True), "banks": (1, 64, True), "ports": (1, 2, True)}


@dataclass(frozen=True)
class Dma:
    """The DMA engine between the local memories and the shared L2/DRAM."""

    bus_bytes_per_cycle: int = 16
    request_bytes: int = 64  # the largest request; requests are aligned powers of two from the bus width up to this
    requests_in_flight: int = 16
    mvin_row_bytes: int = 64  # a mvin/mvout moves rows of at most this many bytes (Gemmini: dma_maxbytes)
    separate_store: bool = True  # stores have their own engine: only the last tile's store is exposed
    # tiled_matmul_auto asks LoopMatmul to keep an operand with at most two tiles (gemmini.h a_reuse/b_reuse); off: every
    # loop_ws call loads its A and B tiles (issue 14: "an activation tile re-read across the J loop hits the L2")
    operand_reuse: bool = False
    RANGES: ClassVar = {"bus_bytes_per_cycle": (1, 4096, True), "request_bytes": (1, 4096, True),
                        "requests_in_flight": (1, 4096, True), "mvin_row_bytes": (1, 1 << 20, True)}
    FLAGS: ClassVar = ("separate_store", "operand_reuse")


@dataclass(frozen=True)
class L2:
    """The shared L2 the DMA reads through: an operand tile re-read within ``bytes`` of other traffic hits it."""

    bytes: int = 512 * KiB
    latency_s: float = 75e-9
    line_bytes: int = 64  # the L2 fills whole lines: a request into a line a neighbouring tile just fetched hits
    RANGES: ClassVar = {"bytes": (0, 1 << 40, True), "latency_s": (0.0, 1e-5, False), "line_bytes": (1, 4096, True)}


@dataclass(frozen=True)
class Dram:
    """Main memory seen by the DMA and the host: latency and bandwidth."""

    latency_s: float = 120e-9
    bandwidth: float = 7.5e9  # byte/s sustained
    RANGES: ClassVar = {"latency_s": (0.0, 1e-5, False), "bandwidth": (1e6, 1e13, False)}


@dataclass(frozen=True)
class Overheads:
    """Per-command issue cycles of the loop unroller and the host's cost per loop_ws call (one call per tile:
    tiling arithmetic, config instructions); ``calls_overlap``: the host sets up the next call while one runs."""

    command_cycles: float = 1.0
    call_cycles: float = 1000.0
    calls_overlap: bool = True
    RANGES: ClassVar = {"command_cycles": (0.0, 1e4, False), "call_cycles": (0.0, 1e7, False)}
    FLAGS: ClassVar = ("calls_overlap",)


@dataclass(frozen=True)
class Host:
    """The in-order host CPU that runs what the accelerator cannot, in fp32."""

    name: str = "rocket"
    clock_hz: float = 1e9
    op_cycles: float = 1.0  # simple FP op, convert, load or store (single issue)
    divide_cycles: float = 24.0
    transcendental_cycles: float = 40.0  # one libm expf / erff / sqrtf call
    memory_bandwidth: float = 1.6e9  # byte/s streamed from the shared L2/DRAM
    RANGES: ClassVar = {"clock_hz": (1e6, 1e11, False), "op_cycles": (0.01, 1e3, False),
                        "divide_cycles": (0.01, 1e4, False), "transcendental_cycles": (0.01, 1e5, False),
                        "memory_bandwidth": (1e6, 1e13, False)}
    TEXTS: ClassVar = ("name",)


@dataclass(frozen=True)
class Units:
    """Where Softmax/LayerNorm/GELU run; the I-BERT normalization unit and activation units when on the accelerator."""

    nonlinear: str = "host"
    activation_units: int = 0
    divide_cycles: int = 32  # radix-2 integer divider in the normalization unit
    RANGES: ClassVar = {"activation_units": (0, 4096, True), "divide_cycles": (1, 1024, True)}
    CHOICES: ClassVar = {"nonlinear": NONLINEAR_LOCATIONS}


@dataclass(frozen=True)
class ActionEnergy:
    """Per-action energies in joules (sources in the preset files and docs/accelerator.md)."""

    mac_int8: float = 0.3e-12
    register_byte: float = 0.03e-12
    sram_byte_32kib: float = 2.5e-12  # SRAM access per byte at a 32 KiB bank; scales with sqrt(bank size)
    dram_byte: float = 244e-12
    l2_byte: float = 8.8e-12
    host_instruction: float = 70e-12
    int_add: float = 0.1e-12
    int_mul: float = 3.1e-12
    RANGES: ClassVar = {k: (0.0, 1e-6, False) for k in ("mac_int8", "register_byte", "sram_byte_32kib", "dram_byte",
                                                          "l2_byte", "host_instruction", "int_add", "int_mul")}

    def sram_byte(self, bank_bytes: float) -> float:
        """Energy per byte of a ``bank_bytes`` bank (sqrt scaling, as Horowitz 2014: 8 KiB -> 32 KiB doubles it)."""
        return self.sram_byte_32kib * math.sqrt(bank_bytes / (32 * KiB))


SECTIONS: dict[str, type] = {"mesh": Mesh, "scratchpad": Sram, "accumulator": Sram, "dma": Dma, "l2": L2, "dram": Dram,
                             "overheads": Overheads, "host": Host, "units": Units, "energy": ActionEnergy}


@dataclass(frozen=True)
class AccelSpec:
    """One accelerator configuration; every section is a frozen record, checked when built."""

    name: str
    clock_hz: float = 1e9
    mesh: Mesh = field(default_factory=Mesh)
    scratchpad: Sram = field(default_factory=Sram)
    accumulator: Sram = field(default_factory=lambda: Sram(bytes=64 * KiB, banks=2, ports=2))
    dma: Dma = field(default_factory=Dma)
    l2: L2 = field(default_factory=L2)
    dram: Dram = field(default_factory=Dram)
    overheads: Overheads = field(default_factory=Overheads)
    host: Host = field(default_factory=Host)
    units: Units = field(default_factory=Units)
    energy: ActionEnergy = field(default_factory=ActionEnergy)
    description: str = ""
    sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = check(self)
        if problems:
            raise SpecError(problems, f"accelerator {show(self.name, 40)}")

    @property
    def dim(self) -> int:
        return self.mesh.rows

    @property
    def spad_rows(self) -> int:
        """Scratchpad rows of DIM int8 elements."""
        return self.scratchpad.bytes // self.dim

    @property
    def acc_rows(self) -> int:
        """Accumulator rows of DIM int32 partial sums."""
        return self.accumulator.bytes // (4 * self.dim)

    def cycles(self, seconds: float) -> float:
        return seconds * self.clock_hz

    def seconds(self, cycles: float) -> float:
        return cycles / self.clock_hz

    def changed(self, **sections: Any) -> AccelSpec:
        """A copy with some sections' fields replaced, e.g. changed(scratchpad={"bytes": 65536})."""
        updates = {k: replace(getattr(self, k), **v) if isinstance(v, dict) else v for k, v in sections.items()}
        return replace(self, **updates)


def check(hw: AccelSpec) -> list[str]:
    """Every problem of a configuration: ranges per section, then how the sections must fit together."""
    problems: list[str] = []
    if not isinstance(hw.name, str) or not hw.name:
        problems.append(f"name={show(hw.name)} must be a non-empty string")
    if isinstance(hw.clock_hz, bool) or not isinstance(hw.clock_hz, (int, float)) or not 1e6 <= hw.clock_hz <= 1e11:
        problems.append(f"clock_hz={show(hw.clock_hz)} must be a number in [1e+06, 1e+11]")
    if not isinstance(hw.description, str):
        problems.append(f"description={show(hw.description)} must be a string")
    if not isinstance(hw.sources, tuple) or not all(isinstance(x, str) for x in hw.sources):
        problems.append("sources must be a list of strings")
    for key, cls in SECTIONS.items():
        section = getattr(hw, key)
        if not isinstance(section, cls):
            problems.append(f"{key} must be a mapping of {cls.__name__} fields")
        else:
            checks.section(problems, section, key)
    if problems:
        return problems
    m, sp, acc = hw.mesh, hw.scratchpad, hw.accumulator
    if m.rows != m.cols:
        problems.append(f"mesh.rows={m.rows} and mesh.cols={m.cols} must be equal "
                        "(Gemmini's tiling assumes a square DIM×DIM mesh)")
    if sp.bytes % (sp.banks * m.rows):
        problems.append(f"scratchpad.bytes={sp.bytes} must be a multiple of banks×rows = {sp.banks * m.rows} "
                        "(whole DIM-byte rows per bank)")
    if acc.bytes % (acc.banks * 4 * m.rows):
        problems.append(f"accumulator.bytes={acc.bytes} must be a multiple of banks×4×rows = {acc.banks * 4 * m.rows} "
                        "(whole rows of DIM int32 per bank)")
    if hw.units.nonlinear == "accelerator" and hw.units.activation_units < 1:
        problems.append("units.activation_units=0 must be >= 1 when units.nonlinear is 'accelerator'")
    if hw.l2.line_bytes & (hw.l2.line_bytes - 1):
        problems.append(f"l2.line_bytes={hw.l2.line_bytes} must be a power of two")
    if hw.dma.request_bytes > hw.dma.bus_bytes_per_cycle * 1024:
        problems.append(f"dma.request_bytes={hw.dma.request_bytes} must be at most 1024 bus beats")
    return problems


def _section(cls: type, data: Any, key: str, problems: list[str]) -> Any:
    """Build one section from its mapping; unknown fields and wrong types become problems, not exceptions."""
    if not isinstance(data, dict):
        problems.append(f"{key}={show(data)} must be a mapping")
        return cls()
    known = {f.name for f in fields(cls)}
    problems += unknown_fields(data, known, lambda k: f"{key}.{label(k)}")
    return cls(**{k: v for k, v in data.items() if k in known})


def accel_from_dict(data: Any, where: str) -> AccelSpec:
    """The AccelSpec a YAML mapping describes; one SpecError listing every problem otherwise."""
    if not isinstance(data, dict):
        raise SpecError([f"expected a mapping of accelerator fields, got {type(data).__name__}"], where)
    top = {f.name for f in fields(AccelSpec)}
    problems = unknown_fields(data, top, lambda k: show(k, 40))
    problems += [f"missing field {k!r}" for k in ("name", "clock_hz", *SECTIONS) if k not in data]
    if problems:
        raise SpecError(problems, where)
    parts = {k: _section(cls, data[k], k, problems) for k, cls in SECTIONS.items()}
    sources = data.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        problems.append("sources must be a list of strings")
        sources = []
    if problems:
        raise SpecError(problems, where)
    try:
        return AccelSpec(name=data["name"], clock_hz=data["clock_hz"], description=data.get("description", ""),
                         sources=tuple(sources), **parts)
    except SpecError as e:
        raise SpecError(list(e.problems), where) from None


def accel_to_dict(hw: AccelSpec) -> dict[str, Any]:
    """The mapping a preset file holds (inverse of accel_from_dict)."""
    out: dict[str, Any] = {"name": hw.name, "description": hw.description, "clock_hz": hw.clock_hz}
    for key in SECTIONS:
        section = getattr(hw, key)
        out[key] = {f.name: getattr(section, f.name) for f in fields(section)} if is_dataclass(section) else section
    out["sources"] = list(hw.sources)
    return out


def accel_presets() -> list[str]:
    return presets_in(preset_dir("accelerators"))


def _accel_from_document(data: dict, where: str, path: Path) -> AccelSpec:
    host = data.get("host")
    if isinstance(host, dict) and "name" in host:
        check_name("host.name", host["name"], where)
    return accel_from_dict(data, where)


def load_accel(name_or_path: str | Path | AccelSpec) -> AccelSpec:
    """An accelerator by preset name or from a YAML file."""
    if isinstance(name_or_path, AccelSpec):
        return name_or_path
    return load_spec(name_or_path, "accelerator", preset_dir("accelerators"), _accel_from_document,
                     "or give a path to an accelerator .yaml file")
