"""What a solver needs to know about ``A`` and its inputs, each in one compiled pass.

A solve checks ``A``, takes ``α*`` from its smallest diagonal entry and turns residuals into
error bounds with ``μ∞(A)``: :func:`matrix_facts` gives all three in one pass over ``A``
instead of three NumPy calls; :func:`all_finite` checks an input without a boolean temporary.
"""

from __future__ import annotations

import math

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
    and NaN otherwise (``reassoc`` lets the sum vectorise; NaN still propagates)."""
    acc = 0.0
    for i in range(flat.size):
        acc += flat[i] * 0.0
    return acc == 0.0
