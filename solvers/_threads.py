"""Thread policy for the BLAS pools around small, many-times-repeated solves.

An equilibrium solve is a loop of small GEMMs (batch × n × n). For the sizes of training
(100 × 100 × 100) a second BLAS thread saves microseconds per product and costs far more in
wake-ups, and on a loaded machine the idle pools spin against each other: an epoch measured
29 s with two BLAS threads against 1.9 s with one (benchmarks/bench_train.py, 2 cores).
"""

from __future__ import annotations

import contextlib

__all__ = ["SMALL_GEMM_WORK", "blas_threads_for"]

#: batch · n (rows times width of the repeated product) below which BLAS runs on one thread.
SMALL_GEMM_WORK = 1 << 18


@contextlib.contextmanager
def blas_threads_for(batch: int, n: int):
    """Limit BLAS to one thread inside the block when ``batch · n`` is small."""
    if batch * n >= SMALL_GEMM_WORK:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the BLAS keeps its default threads
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
