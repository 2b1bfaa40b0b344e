"""The batch split into thread blocks: one place for the split, the threads and the BLAS policy.

Samples never interact, so a batch is split once into one contiguous block of rows per thread
and each thread runs a whole compiled kernel on its block (``nogil``): one hand-off per call,
no synchronisation per iteration. Block 0 runs on the calling thread, the others on a
persistent pool of daemon threads (daemons, so that Ctrl-C during a first compilation is
never held up by a worker). Meanwhile BLAS is held at one thread: each block's products are
single-threaded, and idle BLAS pools would spin against the blocks.
"""

from __future__ import annotations

import queue
import threading

import numba

from .threads import SMALL_GEMM_WORK, blas_threads

__all__ = ["MIN_BLOCK_ROWS", "thread_count", "block_bounds", "run_blocks"]

#: Fewest samples per thread block: below it a second thread costs more than it saves.
MIN_BLOCK_ROWS = 16


def thread_count() -> int:
    """Threads a batch may be split over: numba's thread count (``numba.set_num_threads``)."""
    return numba.get_num_threads()


def block_bounds(batch: int, threads: int | None = None) -> list[tuple[int, int]]:
    """``[(lo, hi), …]``: ``batch`` rows in at most ``threads`` contiguous blocks of at least
    :data:`MIN_BLOCK_ROWS` rows (one block for small batches)."""
    threads = thread_count() if threads is None else threads
    nblocks = max(1, min(threads, batch // MIN_BLOCK_ROWS))
    size = -(-batch // nblocks)
    return [(lo, min(batch, lo + size)) for lo in range(0, batch, size)]


class _Worker:
    """A daemon thread that runs the calls it is handed, one at a time."""

    def __init__(self):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="nemon-block", daemon=True).start()

    def _loop(self):
        while True:
            fn, args = self.tasks.get()
            try:
                self.done.put((fn(*args), None))
            except BaseException as exc:  # handed back to the caller, raised there
                self.done.put((None, exc))


_workers: list[_Worker] = []
_lock = threading.Lock()


def _pool(size: int) -> list[_Worker]:
    with _lock:
        while len(_workers) < size:
            _workers.append(_Worker())
        return _workers[:size]


def run_blocks(kernel, bounds, args_of, work: int = 0) -> list:
    """``[kernel(*args_of(lo, hi)) for (lo, hi) in bounds]``, the blocks on separate threads.

    ``kernel`` must release the GIL (``@njit(nogil=True)``) for the blocks to overlap.
    ``work`` (multiply-adds of one product of the whole batch) decides the BLAS threads of a
    single block: below :data:`~.threads.SMALL_GEMM_WORK` it runs on one BLAS thread, above it
    keeps BLAS's pool; several blocks always run on one BLAS thread each.
    """
    if len(bounds) == 1:
        lo, hi = bounds[0]
        if work >= SMALL_GEMM_WORK:
            return [kernel(*args_of(lo, hi))]
        with blas_threads(1):
            return [kernel(*args_of(lo, hi))]
    workers = _pool(len(bounds) - 1)
    results = [None] * len(bounds)
    with blas_threads(1):
        for worker, (lo, hi) in zip(workers, bounds[1:]):
            worker.tasks.put((kernel, args_of(lo, hi)))
        try:
            results[0] = kernel(*args_of(*bounds[0]))
            errors = []
            for i, worker in enumerate(workers, start=1):
                results[i], exc = worker.done.get()
                if exc is not None:
                    errors.append(exc)
        except BaseException:
            # Interrupted (Ctrl-C) or failed on this thread: the workers' blocks may still
            # run (a first compilation can take seconds); they are dropped from the pool, so
            # that their late results never reach another call, and left to finish.
            _discard(workers)
            raise
    if errors:
        raise errors[0]
    return results


def _discard(workers) -> None:
    with _lock:
        for worker in workers:
            if worker in _workers:
                _workers.remove(worker)
