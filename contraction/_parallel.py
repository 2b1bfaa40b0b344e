"""numba's ``parallel`` option for the package's compiled kernels.

``parallel=True`` parallelises more than the ``prange`` loops: every whole-array expression
and allocation (``np.zeros``, ``a.copy()``, ``x /= k``, ``a.sum()``) becomes a parallel loop of
its own, with a launch and a barrier each. The kernels here parallelise one loop over thread
blocks and keep the rest serial, on purpose: the fused training step measured 0.13 ms of such
launches per call (of 0.58 ms) with ``parallel=True``, 0.055 ms with ``prange`` alone.
"""

from __future__ import annotations

__all__ = ["PRANGE_ONLY"]

#: ``njit(parallel=PRANGE_ONLY)``: only the explicit ``prange`` loops run in parallel.
PRANGE_ONLY = {
    "prange": True,
    "comprehension": False,
    "reduction": False,
    "inplace_binop": False,
    "setitem": False,
    "numpy": False,
    "stencil": False,
    "fusion": False,
}
