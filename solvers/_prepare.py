"""One compiled pass over the matrix of a solve: what ``solve`` needs to know about ``A``.

``solve`` checks ``A``, takes ``α*`` from its smallest diagonal entry, hands the engines
``Aᵀ`` (the row-batch product is ``X Aᵀ``) and turns residuals into error bounds with
``μ∞(A)``. Done by NumPy calls one after the other the checks cost about 14 µs a solve
(100 × 100: the finite check, the diagonal's minimum, μ∞); one compiled pass costs ~2 µs.
(The transpose stays NumPy's copy: 3.4 µs, against 9.7 µs for a tiled copy in numba.)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["matrix_facts", "all_finite"]


@njit(cache=True, fastmath={"reassoc", "contract"})
def matrix_facts(A):
    """``(finite, min a_ii, μ∞(A))`` of a square float array in one pass: whether every
    entry is finite, the smallest diagonal entry and the row-sum log-norm
    ``max_i (a_ii + Σ_{j≠i} |a_ij|)`` (accumulated in float64). ``reassoc`` only reorders
    the row sums (so that they vectorise); a NaN or inf still makes ``finite`` false."""
    n = A.shape[0]
    finite = True
    a_min = math.inf
    mu = -math.inf
    for i in range(n):
        s = 0.0
        for j in range(n):
            s += abs(float(A[i, j]))
        finite = finite and math.isfinite(s)
        d = float(A[i, i])
        a_min = min(a_min, d)
        mu = max(mu, s + d - abs(d))
    return finite, a_min, mu


@njit(cache=True, fastmath={"reassoc"})
def all_finite(flat) -> bool:
    """Whether every entry of a 1-D float array is finite: ``0 · v`` is 0 for finite ``v``
    and NaN otherwise (``reassoc`` lets the sum vectorise; NaN still propagates). A
    100 × 100 batch: 0.5 µs against 3 µs for ``np.isfinite(W).all()``."""
    acc = 0.0
    for i in range(flat.size):
        acc += flat[i] * 0.0
    return acc == 0.0
