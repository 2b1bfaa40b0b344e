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


class _Pool:
    """Get and set one BLAS library's thread count; OpenBLAS through its own C functions
    (found once), so that a get/set pair costs a fraction of a microsecond."""

    def __init__(self, controller):
        self.get, self.set = controller.get_num_threads, controller.set_num_threads
        if getattr(controller, "internal_api", None) == "openblas":
            try:  # threadpoolctl knows the symbol's prefix and suffix in each build
                get = controller._get_symbol("openblas_get_num_threads")
                put = controller._get_symbol("openblas_set_num_threads")
            except Exception:  # another threadpoolctl: keep its methods
                get = put = None
            if get is not None and put is not None:
                self.get, self.set = get, put


def _blas_libraries():
    """The loaded BLAS libraries' thread controls, found once per process (scanning the
    loaded libraries is slow)."""
    global _libraries
    if _libraries is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # optional: without it the BLAS keeps its default threads
            _libraries = ()
        else:
            import scipy.linalg  # noqa: F401  (loads scipy's BLAS, the one numba's np.dot calls)

            _libraries = tuple(_Pool(c) for c in ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries


class blas_threads:
    """``with blas_threads(limit):`` holds every loaded BLAS at no more than ``limit``
    threads inside the block (restored on exit)."""

    __slots__ = ("limit", "saved")

    def __init__(self, limit: int):
        self.limit = limit
        self.saved = []

    def __enter__(self):
        for lib in _blas_libraries():
            threads = lib.get()
            if threads is not None and threads > self.limit:
                lib.set(self.limit)
                self.saved.append((lib, threads))
        return self

    def __exit__(self, *exc):
        for lib, threads in self.saved:
            lib.set(threads)
        self.saved = []
        return False


@contextlib.contextmanager
def blas_threads_for(batch: int, n: int):
    """Limit BLAS to one thread inside the block when the product ``batch · n · n`` is small."""
    if batch * n * n >= SMALL_GEMM_WORK:
        yield
        return
    with blas_threads(1):
        yield
