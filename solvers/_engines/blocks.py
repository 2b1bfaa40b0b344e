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

import numba
import numpy as np
from numba.core.cpu import ParallelOptions

from .threads import SMALL_GEMM_WORK, blas_threads

__all__ = ["MIN_BLOCK_ROWS", "PRANGE_ONLY", "thread_count", "block_bounds", "blas_policy", "use_blocks"]

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
    """``[[lo, hi], …]`` (int64): ``batch`` rows in at most ``threads`` contiguous blocks of at
    least :data:`MIN_BLOCK_ROWS` rows (one block for small batches)."""
    threads = thread_count() if threads is None else threads
    nblocks = max(1, min(threads, batch // MIN_BLOCK_ROWS))
    size = -(-batch // nblocks)
    return np.array([(lo, min(batch, lo + size)) for lo in range(0, batch, size)], dtype=np.int64)


#: Calls of each kernel variant so far (see :func:`use_blocks`).
_calls: collections.Counter = collections.Counter()


def use_blocks(variant, blocks: int) -> bool:
    """Whether a call of ``variant`` (a hashable key of a kernel and its argument types) runs on
    its ``blocks`` thread blocks (a parallel driver) or as one block (the block kernel itself).

    A parallel driver is a compilation of its own, of seconds, on first use. It pays off for a
    variant that is called again, not for a single call: a variant's first call runs as one
    block, and its parallel driver is compiled (or loaded from the cache) from its second call
    on. The results are the same either way: blocks never interact.
    """
    if blocks <= 1:
        return False
    _calls[variant] += 1
    return _calls[variant] > 1


def blas_policy(blocks: int, work: int):
    """The BLAS threads around a compiled call on ``blocks`` thread blocks whose batch-wide
    product takes ``work`` multiply-adds: one BLAS thread when there are several blocks or the
    product is small (:data:`~.threads.SMALL_GEMM_WORK`), BLAS's own pool otherwise."""
    if blocks > 1 or work < SMALL_GEMM_WORK:
        return blas_threads(1)
    return contextlib.nullcontext()
