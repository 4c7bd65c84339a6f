"""One map over configurations: local worker processes by default, Ray when asked, serial for debugging.

Ray starts once per process, lazily on the first ``--executor ray`` map, and serves every later map (it is shut down
at exit). Its node start waits a fixed 30 s for the raylet to register, which a loaded host can exceed ("node timed out
during startup"); the start is retried until ``RAY_START_SECONDS`` have passed, then fails in one line.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from tstack.errors import TstackError

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("process", "ray", "serial")
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}  # blocked while the pool forks its workers (see _worker_signals)
RAY_START_SECONDS = 180.0  # how long to keep retrying Ray's start (each try waits up to Ray's own 30 s)


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _apply(fn: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    return [fn(x) for x in chunk]


def _iter_process(fn: Callable[[T], R], chunks: list[Sequence[T]], workers: int) -> Iterator[list[R]]:
    """Results in order. A worker that dies (killed, out of memory) ends the map in one line instead of a hang;
    on any exit before the end (an error, Ctrl-C, SIGTERM) the workers are killed, not awaited."""
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_signals)
    finished = False
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # workers start with them blocked (see _worker_signals)
        try:
            futures = [pool.submit(_apply, fn, chunk) for chunk in chunks]
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        for future in futures:
            try:
                yield future.result()
            except BrokenProcessPool:
                raise TstackError("a worker process died (killed, or out of memory); nothing was written") from None
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _kill(pool)


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the parent (which stops them) and die quietly on SIGTERM. They are forked with both
    signals blocked, so the parent's handlers never run in a worker, even before this initializer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop the pool now: running workers are terminated; queued work fails inside the pool (not cancelled: a
    cancelled future races the pool's manager thread, which then reports InvalidStateError)."""
    processes = list((pool._processes or {}).values())  # the executor has no public way to stop running work
    for p in processes:
        p.terminate()
    for p in processes:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False)


def _start_ray(ray: Any, workers: int) -> None:
    """Start a local Ray instance unless one runs in this process already; retry a start that times out."""
    if ray.is_initialized():
        return
    # A local instance keeps Ray's default (token) security; its notice about that is not ours to print.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    deadline = time.monotonic() + RAY_START_SECONDS
    while True:
        try:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception as e:  # Ray raises a bare Exception when its node does not come up
            with contextlib.suppress(Exception):  # what the failed start left running; its own error is reported
                ray.shutdown()
            if time.monotonic() >= deadline:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise TstackError(f"--executor ray: Ray did not start within {RAY_START_SECONDS:.0f} s ({reason[:160]}); "
                                  "use --executor process") from None
            time.sleep(1.0)
    atexit.register(ray.shutdown)


def _iter_ray(fn: Callable[[T], R], chunks: list[Sequence[T]], workers: int) -> Iterator[list[R]]:
    try:
        import ray
    except ImportError:
        raise TstackError("--executor ray needs Ray: pip install 'tstack[ray]'") from None
    _start_ray(ray, workers)
    remote = ray.remote(_apply)
    fn_ref = ray.put(fn)
    refs = [remote.remote(fn_ref, c) for c in chunks]
    for ref in refs:  # in order, so results line up with items
        try:
            yield ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, TstackError):  # the worker's own one-line error, not Ray's wrapper
                raise e.cause from None
            raise


def pmap(fn: Callable[[T], R], items: Sequence[T], executor: str = "process", workers: int | None = None,
         progress: Callable[[int], None] | None = None) -> list[R]:
    """[fn(x) for x in items], in order, spread over workers; ``progress(n)`` is called per finished chunk.

    ``fn`` must be picklable (a module-level function or a functools.partial of one).
    """
    if executor not in EXECUTORS:
        raise TstackError(f"--executor {executor[:40]!r} is not one of {', '.join(EXECUTORS)}")
    workers = workers or os.cpu_count() or 1
    size = max(1, min(256, len(items) // (workers * 4) or 1))
    chunks = _chunks(list(items), size)
    if executor == "serial" or (executor == "process" and (workers == 1 or len(chunks) == 1)):
        it: Iterator[list[R]] = (_apply(fn, c) for c in chunks)
    elif executor == "ray":
        it = _iter_ray(fn, chunks, workers)
    else:
        it = _iter_process(fn, chunks, workers)
    out: list[R] = []
    for res in it:
        out.extend(res)
        if progress:
            progress(len(res))
    return out
