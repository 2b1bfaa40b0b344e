"""Thread policy for the BLAS pools around small, many-times-repeated solves.

An equilibrium solve is a loop of small GEMMs (batch × n × n). For the sizes of training
(100 × 100 × 100) a second BLAS thread saves microseconds per product and costs far more in
wake-ups, and on a loaded machine the idle pools spin against each other: an epoch measured
29 s with two BLAS threads against 1.9 s with one (benchmarks/bench_train.py, 2 cores).
"""

from __future__ import annotations

import contextlib

__all__ = ["SMALL_GEMM_WORK", "blas_threads_for"]

#: Multiply-adds of one repeated product (batch · n · n) below which BLAS runs on one thread.
SMALL_GEMM_WORK = 1 << 23


_controller = None


def _get_controller():
    """One ``ThreadpoolController`` per process: creating one scans the loaded libraries
    (~1.4 ms); entering its ``limit`` costs ~20 µs."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional: without it the BLAS keeps its default threads
            _controller = False
        else:
            _controller = ThreadpoolController()
    return _controller


@contextlib.contextmanager
def blas_threads_for(batch: int, n: int):
    """Limit BLAS to one thread inside the block when the product ``batch · n · n`` is small."""
    controller = _get_controller() if batch * n * n < SMALL_GEMM_WORK else None
    if not controller:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield
