"""Facts about this host that kernels and cost models need, read without PyTorch: the data caches (sysfs).

The profiler's cachestat mode simulates these caches; the partitioned kernels size their blocks from the L2.
"""

from __future__ import annotations

import functools
import glob
import math
import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class CacheGeometry:
    """A cache as valgrind takes it: total bytes, ways, line bytes."""

    size: int
    assoc: int
    line: int

    @property
    def sets(self) -> float:
        return self.size / (self.assoc * self.line)

    def valid_for_valgrind(self) -> bool:
        s = self.sets
        return s >= 1 and s == int(s) and _pow2(int(s)) and _pow2(self.line) and self.line >= 16

    def for_valgrind(self) -> CacheGeometry:
        """The same line size and a power-of-two set count, ways rounded up to cover the size (valgrind's own tweak)."""
        if self.valid_for_valgrind():
            return self
        sets = 1 << max(0, int(math.floor(math.log2(max(1.0, self.sets)))))
        assoc = math.ceil(self.size / (sets * self.line))
        return CacheGeometry(sets * assoc * self.line, assoc, self.line)

    def __str__(self) -> str:
        return f"{_size_text(self.size)} {self.assoc}-way {self.line} B lines"


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _size_text(n: int) -> str:
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % (div // 4) == 0:
            return f"{n / div:g} {unit}"
    return f"{n} B"


def _parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


@functools.lru_cache(maxsize=1)
def host_caches() -> dict[int, CacheGeometry]:
    """This machine's data (or unified) caches by level, from /sys/devices/system/cpu/cpu0/cache (unreadable ones left out)."""
    caches: dict[int, CacheGeometry] = {}
    for index in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            def read(name: str, index: str = index) -> str:
                with open(os.path.join(index, name), encoding="ascii") as f:
                    return f.read().strip()

            if read("type") not in ("Unified", "Data"):
                continue
            level = int(read("level"))
            geom = CacheGeometry(_parse_size(read("size")), int(read("ways_of_associativity")), int(read("coherency_line_size")))
        except (OSError, ValueError):
            continue
        if geom.assoc > 0 and geom.line > 0:
            caches[level] = geom
    return caches


def host_llc() -> CacheGeometry | None:
    """This machine's last-level cache (None where sysfs does not say)."""
    caches = host_caches()
    return caches[max(caches)] if caches else None
