"""The batch split into thread blocks and the BLAS policy around them, in one place.

Samples never interact, so a batch is split once into one contiguous block of rows per
thread, and each thread runs a whole compiled kernel on its block (numba's ``prange`` over the
blocks): one parallel region per call, no synchronisation per iteration. Meanwhile BLAS is
held at one thread: each block's products are single-threaded, and idle BLAS pools would spin
against the blocks. The solvers (:func:`.numba_engine.solve_blocks`) and training's fused step
split and run their batches this way.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import time

import numba
import numpy as np
from numba.core.cpu import ParallelOptions

from . import compilation
from .threads import SMALL_GEMM_WORK, blas_threads

__all__ = ["MIN_BLOCK_ROWS", "PRANGE_ONLY", "thread_count", "block_bounds", "blas_policy", "use_blocks",
           "serial_work"]

#: ``njit(parallel=PRANGE_ONLY)``: only the explicit ``prange`` loop over the blocks runs in
#: parallel; numba's other parallel passes (array expressions, reductions, fusion) stay off,
#: which also keeps the parallel drivers quick to compile. An options object, not a dict:
#: numba empties a dict of options on its first compilation.
PRANGE_ONLY = ParallelOptions({"prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
                               "setitem": False, "numpy": False, "stencil": False, "fusion": False})

#: Fewest samples per thread block: below it a second thread costs more than it saves.
MIN_BLOCK_ROWS = 16


def thread_count() -> int:
    """Threads a batch may be split over: numba's thread count (``numba.set_num_threads``)."""
    return numba.get_num_threads()


def block_bounds(batch: int, threads: int | None = None) -> np.ndarray:
    """``[[lo, hi], …]`` (int64): ``batch`` rows in at most ``threads`` contiguous blocks whose
    sizes differ by one at most, each of at least :data:`MIN_BLOCK_ROWS` rows (one block for
    small batches)."""
    threads = thread_count() if threads is None else threads
    return _bounds(batch, threads).copy()


@functools.lru_cache(maxsize=64)
def _bounds(batch: int, threads: int) -> np.ndarray:
    """:func:`block_bounds` (computed once per batch size: a training step asks every time)."""
    nblocks = max(1, min(threads, batch // MIN_BLOCK_ROWS))
    edges = [batch * i // nblocks for i in range(nblocks + 1)]
    return np.array(list(zip(edges[:-1], edges[1:])), dtype=np.int64)


#: Seconds of serial work after which a variant's parallel driver is compiled (see
#: :func:`use_blocks`).
PARALLEL_AFTER_SECONDS = 1.0

_serial_seconds: collections.Counter = collections.Counter()
_ready: set = set()
_checked: set = set()


def use_blocks(variant, blocks: int, driver=None, args=()) -> bool:
    """Whether a call of ``variant`` (a hashable key of a kernel and its argument types) runs its
    ``blocks`` thread blocks in parallel through ``driver`` (called with ``args``), or one after
    the other through the block kernel itself.

    A parallel driver is a compilation of its own, seconds on first use, cached on disk
    afterwards. It is used at once when it is compiled already or in numba's disk cache, and
    otherwise once the variant has run :data:`PARALLEL_AFTER_SECONDS` of serial work in this
    process (:class:`serial_work` records it, compile time excluded): a short run never waits
    for a compilation it would not earn back. Blocks never interact and the same blocks run either way, so the
    results are the same to the bit.
    """
    if blocks <= 1:
        return False
    if variant in _ready:
        return True
    if variant not in _checked and driver is not None:
        _checked.add(variant)
        if _compiled_or_cached(driver, args):
            _ready.add(variant)
            return True
    if _serial_seconds[variant] >= PARALLEL_AFTER_SECONDS:
        _ready.add(variant)
        return True
    return False


class serial_work:
    """``with serial_work(variant):`` records the seconds of a call of ``variant`` that runs
    its blocks one after the other; a call during which numba compiled records nothing
    (compile time is not work)."""

    __slots__ = ("variant", "start", "compiled")

    def __init__(self, variant):
        self.variant = variant

    def __enter__(self):
        self.compiled = compilation.compilations()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is None and compilation.compilations() == self.compiled:
            _serial_seconds[self.variant] += time.perf_counter() - self.start
        return False


def _compiled_or_cached(driver, args) -> bool:
    """Whether ``driver`` has machine code for ``args`` in memory or in numba's disk cache
    (without compiling anything)."""
    try:
        sig = tuple(driver.typeof_pyval(a) for a in args)
        if sig in driver.overloads:
            return True
        return driver._cache.load_overload(sig, driver.targetctx) is not None
    except Exception:  # another numba: the variant earns its driver by its serial work instead
        return False


def blas_policy(blocks: int, work: int):
    """The BLAS threads around a compiled call on ``blocks`` thread blocks whose batch-wide
    product takes ``work`` multiply-adds: one BLAS thread when there are several blocks or the
    product is small (:data:`~.threads.SMALL_GEMM_WORK`), BLAS's own pool otherwise."""
    if blocks > 1 or work < SMALL_GEMM_WORK:
        return blas_threads(1)
    return contextlib.nullcontext()
