"""MemorySpec: a DRAM with near-memory ALUs (timing, organization, ALUs), from data files (presets/memories)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tstack.errors import SpecError
from tstack.loader import load_spec, presets_in, show, unknown_fields
from tstack.spec import preset_dir

TIMING = ("BL", "RL", "WL", "tCCD_S", "tCCD_L", "tRCD_RD", "tRCD_WR", "tRAS", "tRP", "tRC", "tRRD_S", "tRRD_L",
          "tFAW", "tWR", "tREFI", "tRFC")
ORGANIZATION = ("stacks", "channels_per_stack", "pseudo_channels_per_channel", "banks_per_pseudo_channel",
                "bus_bits", "row_bytes")
ALU = ("banks_per_alu", "simd_bits", "registers")
FIELDS = {"name", "description", "tck_seconds", "timing", "organization", "alu", "sources"}


@dataclass(frozen=True)
class MemorySpec:
    """DRAM timing in tCK cycles (``timing``), its organization, and the ALUs near its banks."""

    name: str
    tck_seconds: float
    timing: dict[str, int]
    organization: dict[str, int]
    alu: dict[str, int]
    description: str = ""
    sources: tuple[str, ...] = ()

    def t(self, key: str) -> int:
        return self.timing[key]

    @property
    def banks(self) -> int:
        o = self.organization
        return o["stacks"] * o["channels_per_stack"] * o["pseudo_channels_per_channel"] * o["banks_per_pseudo_channel"]

    @property
    def alus(self) -> int:
        return self.banks // self.alu["banks_per_alu"]

    @property
    def access_bytes(self) -> int:
        """Bytes one column command moves per bank: burst length × bus width (DDR: BL/2 clock cycles)."""
        return self.t("BL") * self.organization["bus_bits"] // 8

    @property
    def columns_per_row(self) -> int:
        return self.organization["row_bytes"] // self.access_bytes

    @property
    def refresh_factor(self) -> float:
        """Time stretch from refresh: every tREFI the banks are unavailable for tRFC."""
        return self.t("tREFI") / (self.t("tREFI") - self.t("tRFC"))


def memory_presets() -> list[str]:
    return presets_in(preset_dir("memories"))


def _ints(data: Any, keys: tuple[str, ...], section: str, problems: list[str]) -> dict[str, int]:
    if not isinstance(data, dict):
        problems.append(f"{section} must be a mapping with {', '.join(keys)}")
        return {}
    problems += unknown_fields(data, set(keys), lambda k: f"{section}.{show(k, 40)}")
    out = {}
    for k in keys:
        v = data.get(k)
        if type(v) is not int or v < 1:
            problems.append(f"{section}.{k}={show(v, 20)} must be an integer ≥ 1")
        else:
            out[k] = v
    return out


def memory_from_dict(data: dict, where: str, path: Path | None = None) -> MemorySpec:
    problems = unknown_fields(data, FIELDS, lambda k: show(k, 40))
    timing = _ints(data.get("timing"), TIMING, "timing", problems)
    org = _ints(data.get("organization"), ORGANIZATION, "organization", problems)
    alu = _ints(data.get("alu"), ALU, "alu", problems)
    tck = data.get("tck_seconds")
    if not isinstance(tck, (int, float)) or isinstance(tck, bool) or not 0 < tck < 1e-6:
        problems.append(f"tck_seconds={show(tck, 20)} must be a number in (0, 1e-6)")
    if not problems:
        if timing["tREFI"] <= timing["tRFC"]:
            problems.append(f"timing.tREFI={timing['tREFI']} must exceed tRFC={timing['tRFC']}")
        if org["row_bytes"] % (timing["BL"] * org["bus_bits"] // 8):
            problems.append("organization.row_bytes must be a multiple of BL × bus_bits / 8 (one column access)")
        if org["banks_per_pseudo_channel"] % alu["banks_per_alu"]:
            problems.append("alu.banks_per_alu must divide organization.banks_per_pseudo_channel")
    if problems:
        raise SpecError(problems, where)
    name = str(data.get("name", path.stem if path else "memory"))
    return MemorySpec(name, float(tck), timing, org, alu, str(data.get("description", "")),
                      tuple(data.get("sources") or ()))


def load_memory(name_or_path: str | Path | MemorySpec) -> MemorySpec:
    """A near-memory-compute DRAM by preset name (hbm2-pim, hbm2-pim-shared) or from a .yaml file."""
    if isinstance(name_or_path, MemorySpec):
        return name_or_path
    return load_spec(name_or_path, "memory", preset_dir("memories"), memory_from_dict, "or a memory .yaml file")
