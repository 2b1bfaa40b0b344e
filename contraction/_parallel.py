"""numba's ``parallel`` option for the package's compiled kernels.

``parallel=True`` parallelises more than the ``prange`` loops: every whole-array expression
and allocation (``np.zeros``, ``a.copy()``, ``x /= k``, ``a.sum()``) becomes a parallel loop of
its own, with a launch and a barrier each. The kernels here parallelise one loop over thread
blocks and keep the rest serial, on purpose: the fused training step (Fashion-MNIST batch,
n = 100, float32, 2 cores) took 0.484-0.490 ms per call with ``parallel=True`` and
0.466-0.467 ms with ``prange`` alone (best of 15 rounds, both compiled in one process).
"""

from __future__ import annotations

from numba.core.cpu import ParallelOptions

__all__ = ["PRANGE_ONLY"]

#: ``njit(parallel=PRANGE_ONLY)``: only the explicit ``prange`` loops run in parallel. An
#: options object, not a dict: numba pops the keys of a dict it is given, so a shared dict
#: would be empty (every option on) for the second kernel compiled with it.
PRANGE_ONLY = ParallelOptions(
    {
        "prange": True,
        "comprehension": False,
        "reduction": False,
        "inplace_binop": False,
        "setitem": False,
        "numpy": False,
        "stencil": False,
        "fusion": False,
    }
)
