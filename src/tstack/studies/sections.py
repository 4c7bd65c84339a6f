"""The reproduction sections ``tstack repro PAPER --section NAME[,NAME]`` runs.

One table: paper → section name → a function of the GPU device that returns the section's
rows (``repro_002.Row``: the paper's figure next to tstack's, with the gap and a note). A
section that does not model a GPU (an FPGA or accelerator section) ignores the device.
A new section is one entry here; the command, its JSON records and its table follow.
"""

from __future__ import annotations

from collections.abc import Callable

from tstack.hardware.device import DeviceSpec
from tstack.studies.repro_002 import Row, reproduce_002
from tstack.studies.repro_002_cluster import reproduce_002_cluster
from tstack.studies.repro_002_fusion import reproduce_fusion, reproduce_nmc
from tstack.studies.repro_003 import reproduce_003_fpga

Section = Callable[[DeviceSpec], list[Row]]

SECTIONS: dict[str, dict[str, Section]] = {
    "002": {"kernels": reproduce_002, "fusion": reproduce_fusion, "nmc": reproduce_nmc, "multi-device": reproduce_002_cluster},
    "003": {"fpga": reproduce_003_fpga},
}

TITLES = {"002": "Demystifying BERT (002)", "003": "NLP-Fast (003)"}

# Sections that do not run on --device (an FPGA, or 002's own V100 cluster): their title does not name it.
DEVICE_FREE = {("003", "fpga"), ("002", "multi-device")}


def title(paper: str, name: str, device: DeviceSpec) -> str:
    on = "" if (paper, name) in DEVICE_FREE else f" on {device.name}"
    return f"{TITLES[paper]}, {name}, vs tstack{on}"


def run_sections(paper: str, names: list[str], device: DeviceSpec) -> list[tuple[str, list[Row]]]:
    """Each named section's rows, in the order given; names are checked by the caller."""
    return [(name, SECTIONS[paper][name](device)) for name in names]
