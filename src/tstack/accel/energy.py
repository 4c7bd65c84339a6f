"""Energy in joules by component (ComponentEnergy): action counts × the per-action energies of the hardware
description (AccelSpec.energy, an ActionEnergy)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from tstack.accel.timing import GemmTiming
from tstack.hardware.accel import AccelSpec
from tstack.integer.costs import IntCounts
from tstack.records import Addable

COMPONENTS = ("mac", "register", "scratchpad", "accumulator", "l2", "dram", "host", "units")


@dataclass(frozen=True, slots=True)
class ComponentEnergy(Addable):
    """Joules per component; adding them adds each component (records.Addable)."""

    mac: float = 0.0
    register: float = 0.0
    scratchpad: float = 0.0
    accumulator: float = 0.0
    l2: float = 0.0
    dram: float = 0.0
    host: float = 0.0
    units: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))


def spad_byte(hw: AccelSpec) -> float:
    return hw.energy.sram_byte(hw.scratchpad.bytes / hw.scratchpad.banks)


def acc_byte(hw: AccelSpec) -> float:
    return hw.energy.sram_byte(hw.accumulator.bytes / hw.accumulator.banks)


def gemm_energy(hw: AccelSpec, t: GemmTiming) -> ComponentEnergy:
    """MACs on the array (padding included), two register hops per MAC (input right, partial sum down), SRAM bytes;
    every byte the DMA moves passes through the L2, and the loads that miss it plus the stores (written back once) are
    DRAM bytes."""
    e = hw.energy
    return ComponentEnergy(mac=t.array_macs * e.mac_int8, register=2 * t.array_macs * e.register_byte,
                           scratchpad=(t.spad_read_bytes + t.spad_write_bytes) * spad_byte(hw),
                           accumulator=t.acc_bytes * acc_byte(hw), l2=(t.load_bytes + t.store_bytes) * e.l2_byte,
                           dram=(t.dram_read_bytes + t.store_bytes) * e.dram_byte)


def int_ops_energy(hw: AccelSpec, c: IntCounts) -> float:
    """Integer datapath energy: multiplies at int_mul; adds, shifts, compares at int_add; a divide as one add per quotient bit."""
    e = hw.energy
    return c.mul * e.int_mul + (c.add + c.shift + c.cmp) * e.int_add + c.div * hw.units.divide_cycles * e.int_add


def transfer_energy(hw: AccelSpec, dram_bytes: float, spad_bytes: float = 0.0, acc_bytes: float = 0.0,
                    l2_bytes: float = 0.0) -> ComponentEnergy:
    """Bytes moved through DRAM, the L2 and the local memories."""
    return ComponentEnergy(dram=dram_bytes * hw.energy.dram_byte, scratchpad=spad_bytes * spad_byte(hw),
                           accumulator=acc_bytes * acc_byte(hw), l2=l2_bytes * hw.energy.l2_byte)
