"""One map over configurations: local worker processes by default, Ray when asked, serial for debugging."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from functools import partial
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
    """Results in order; on any exit before the end (an error, Ctrl-C, SIGTERM) the workers are killed, not awaited."""
    pool = multiprocessing.Pool(workers, initializer=_worker_signals)
    try:
        yield from pool.imap(partial(_apply, fn), chunks)
        pool.close()
    finally:
        pool.terminate()  # after close(): the workers have finished; otherwise they are stopped now
        pool.join()


def _worker_signals() -> None:
    """Workers leave Ctrl-C to the parent (which stops them) and die quietly on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
