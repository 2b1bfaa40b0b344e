"""Thread policy for the BLAS pools around small, many-times-repeated solves.

An equilibrium solve is a loop of small GEMMs (batch × n × n). For the sizes of training
(100 × 100 × 100) a second BLAS thread saves little per product and costs more in wake-ups,
and idle BLAS pools keep spinning after a call, against the engine's own threads
(benchmarks/README.md has the measurements).
"""

from __future__ import annotations

import contextlib

__all__ = ["SMALL_GEMM_WORK", "blas_threads", "blas_threads_for"]

#: Multiply-adds of one repeated product (batch · n · n) below which BLAS runs on one thread.
SMALL_GEMM_WORK = 1 << 23


_libraries = None


def _blas_libraries():
    """The loaded BLAS libraries' threadpoolctl controllers, found once per process (scanning
    the loaded libraries is slow; a get/set of a thread count on a kept controller is cheap,
    cheaper than entering ``ThreadpoolController.limit`` on every solve)."""
    global _libraries
    if _libraries is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional: without it the BLAS keeps its default threads
            _libraries = ()
        else:
            import scipy.linalg  # noqa: F401  (loads scipy's BLAS, the one numba's np.dot calls)

            _libraries = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries


@contextlib.contextmanager
def blas_threads(limit: int):
    """Hold every loaded BLAS at no more than ``limit`` threads inside the block."""
    saved = []
    for lib in _blas_libraries():
        threads = lib.get_num_threads()
        if threads is not None and threads > limit:
            lib.set_num_threads(limit)
            saved.append((lib, threads))
    try:
        yield
    finally:
        for lib, threads in saved:
            lib.set_num_threads(threads)


@contextlib.contextmanager
def blas_threads_for(batch: int, n: int):
    """Limit BLAS to one thread inside the block when the product ``batch · n · n`` is small."""
    if batch * n * n >= SMALL_GEMM_WORK:
        yield
        return
    with blas_threads(1):
        yield
