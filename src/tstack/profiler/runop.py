"""Subprocess entry point: rebuild Ops from JSON, prepare each (``opexec.prepare``) and run it.

    python -m tstack.profiler.runop '<json>'

The JSON object holds ``ops`` (see ``op_to_json``), ``device``, ``flush_denormal``, ``seed``,
``warmup`` and ``mode``:

- ``"plain"``: every op is prepared and run ``warmup`` + ``runs`` times (a smoke test, or a
  run to wrap in an outside tool).
- ``"callgrind"``: the process runs under ``valgrind --tool=callgrind --instr-atstart=no``.
  For every op, two copies are prepared (``twin`` and ``p``, separate buffers, same values, drawn from one
  ``values.Pool`` made once: drawing under valgrind is slow) and
  warmed up with instrumentation off (Python start-up, the torch import and the op's setup are
  neither simulated nor counted). Then ``START_INSTRUMENTATION`` (callgrind empties its
  simulated caches), one run of ``twin`` (code, interpreter and PyTorch dispatcher data enter
  the caches), ``ZERO_STATS``, one run of ``p``, ``DUMP_STATS_AT("tstack-op<i>-cold")``, a
  second run of ``p``, ``DUMP_STATS_AT("tstack-op<i>-warm")``, ``STOP_INSTRUMENTATION``. Each
  dump holds the costs since the previous dump or zeroing: "cold" is one run whose own buffers
  the simulated caches have never seen (they were written with instrumentation off) while
  everything else is warm; "warm" is one run right after the op's own previous run.

Valgrind client requests are a magic instruction sequence that valgrind's JIT recognises (see
``valgrind.h``); natively it is a no-op that returns the default value. Python cannot emit it,
so ``ClientRequests`` copies the 29 bytes of a function that issues it into an executable page
and calls that through ctypes: no compiler is needed. x86-64 only.

Always one intra-op thread (``RuntimeConfig(threads=1)`` under ``runtime.controlled``, and OMP/MKL
threads 1 in the environment the parent sets): valgrind serialises threads anyway, and one thread keeps runs deterministic.
Errors print one line on standard error and exit with status 2.
"""

from __future__ import annotations

import ctypes
import gc
import json
import mmap
import platform
import sys
from typing import Any

from tstack.errors import TstackError
from tstack.workload.op import Op

# Callgrind's requests: VG_USERREQ_TOOL_BASE('C','T') + 0.. (callgrind.h); core's RUNNING_ON_VALGRIND.
_CT = (ord("C") << 24) | (ord("T") << 16)
DUMP_STATS, ZERO_STATS, TOGGLE_COLLECT, DUMP_STATS_AT, START_INSTRUMENTATION, STOP_INSTRUMENTATION = range(_CT, _CT + 6)
RUNNING_ON_VALGRIND = 0x1001
DUMP_PREFIX = "tstack-op"

# uint64_t request(uint64_t *args /* rdi */, uint64_t default /* rsi */):
#   mov rax, rdi; mov rdx, rsi; rol rdi, 3; rol rdi, 13; rol rdi, 61; rol rdi, 51; xchg rbx, rbx; mov rax, rdx; ret
# The four rotations (3+13+61+51 = 128 bits) leave rdi unchanged; valgrind reads the request from
# the array at rax and leaves its answer in rdx (valgrind.h, amd64 VALGRIND_DO_CLIENT_REQUEST_EXPR).
_AMD64_REQUEST = bytes.fromhex("4889f8" "4889f2" "48c1c703" "48c1c70d" "48c1c73d" "48c1c733" "4887db" "4889d0" "c3")


def op_to_json(op: Op) -> dict[str, Any]:
    return {"kind": op.kind, "name": op.name, "dims": [list(d) for d in op.dims], "dtype": op.dtype,
            "flops": op.flops, "bytes": op.bytes, "labels": [list(kv) for kv in op.labels], "count": op.count}


def op_from_json(d: dict[str, Any]) -> Op:
    return Op(kind=d["kind"], name=d["name"], dims=tuple((str(k), int(v)) for k, v in d["dims"]), dtype=d["dtype"],
              flops=int(d["flops"]), bytes=int(d["bytes"]),
              labels=tuple((str(k), str(v)) for k, v in d["labels"]), count=int(d.get("count", 1)))


class ClientRequests:
    """Valgrind client requests from Python (x86-64): ``running_on_valgrind()``, callgrind start/stop/dump."""

    def __init__(self) -> None:
        if platform.machine() not in ("x86_64", "AMD64"):
            raise TstackError(f"valgrind client requests are implemented for x86-64 only (this is {platform.machine()})")
        try:
            self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except (OSError, ValueError, AttributeError) as e:
            raise TstackError(f"cannot map an executable page for valgrind client requests: {e}") from None
        self._page.write(_AMD64_REQUEST)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self._fn = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)(address)
        self._args = (ctypes.c_uint64 * 6)()
        self._names: list[ctypes.Array] = []  # strings handed to valgrind stay alive

    def request(self, code: int, arg1: int = 0, default: int = 0) -> int:
        self._args[0], self._args[1] = code, arg1
        return int(self._fn(ctypes.addressof(self._args), default))

    def running_on_valgrind(self) -> int:
        return self.request(RUNNING_ON_VALGRIND)

    def start(self) -> None:
        self.request(START_INSTRUMENTATION)

    def stop(self) -> None:
        self.request(STOP_INSTRUMENTATION)

    def zero(self) -> None:
        self.request(ZERO_STATS)

    def name(self, text: str) -> int:
        """The address of a C string for ``dump``; made ahead, so that making it is not counted."""
        buf = ctypes.create_string_buffer(text.encode())
        self._names.append(buf)
        return ctypes.addressof(buf)

    def dump(self, name: int) -> None:
        """Dump the costs since the last dump or zeroing, labelled with a C string from ``name()``."""
        self.request(DUMP_STATS_AT, name)


def run(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Prepare and run every op of ``spec`` (see the module docstring); returns one summary per op."""
    from tstack.profiler.opexec import prepare
    from tstack.profiler.runtime import RuntimeConfig, controlled
    from tstack.profiler.values import Pool, PooledDraw, pool_size

    mode = spec.get("mode", "plain")
    if mode not in ("plain", "callgrind"):
        raise TstackError(f"mode={mode!r} is not one of plain, callgrind")
    cr = None
    if mode == "callgrind":
        cr = ClientRequests()
        if not cr.running_on_valgrind():
            raise TstackError("mode 'callgrind' must run under valgrind --tool=callgrind")
    cfg = RuntimeConfig(device=spec.get("device", "cpu"), threads=1, flush_denormal=bool(spec.get("flush_denormal", True)))
    seed, warmup, runs = int(spec.get("seed", 0)), int(spec.get("warmup", 2)), int(spec.get("runs", 1))
    out = []
    ops = [op_from_json(d) for d in spec["ops"]]
    with controlled(cfg):  # sets torch.set_num_threads(1) for the block
        pool = Pool(pool_size(ops), seed) if cr is not None else None
        for i, op in enumerate(ops):
            if cr is None:
                p = prepare(op, cfg, seed)
                for _ in range(warmup + runs):
                    p.run()
            else:
                # Two copies: `twin` warms the code, the interpreter's and PyTorch's own data in the
                # simulated caches; `p`'s buffers were written while instrumentation was off, so the
                # simulator has never seen them and its first run is cold for the op's data only.
                twin = prepare(op, cfg, seed, draw=PooledDraw(seed, "cpu", pool=pool))
                p = prepare(op, cfg, seed, draw=PooledDraw(seed, "cpu", pool=pool))
                for _ in range(warmup):
                    twin.run()
                    p.run()
                warm_up, run_op = twin.run, p.run
                cold, warm = cr.name(f"{DUMP_PREFIX}{i}-cold"), cr.name(f"{DUMP_PREFIX}{i}-warm")
                cr.start()
                warm_up()
                cr.zero()
                run_op()
                cr.dump(cold)
                run_op()
                cr.dump(warm)
                cr.stop()
                del twin
            out.append({"op": i, "name": op.name, "dims": [list(x) for x in op.dims]})
            del p
            gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tstack.profiler.runop '<json>'", file=sys.stderr)
        return 2
    try:
        result = run(json.loads(argv[0]))
    except TstackError as e:  # one line for the parent to relay
        print(str(e).replace("\n", " "), file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError) as e:
        print(f"bad job description: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps({"ops": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
