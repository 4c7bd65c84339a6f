"""One map over configurations: local worker processes by default, Ray when asked, serial for debugging."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from tstack.errors import TstackError

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("process", "ray", "serial")


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


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


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


def _iter_ray(fn: Callable[[T], R], chunks: list[Sequence[T]], workers: int) -> Iterator[list[R]]:
    try:
        import ray
    except ImportError:
        raise TstackError("--executor ray needs Ray: pip install 'tstack[ray]'") from None
    started = not ray.is_initialized()
    if started:
        # A local instance keeps Ray's default (token) security; its notice about that is not ours to print.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
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
    finally:
        if started:
            ray.shutdown()


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
