"""Exact Euclidean projections onto {μ_{∞,η}(A) ≤ γ} and {‖A‖_∞ ≤ κ}: a soft threshold per row.

Notes
-----
Both sets are products over rows. For row ``i`` with free coordinate ``t`` (the diagonal,
for μ∞) and weighted entries ``v`` (weights ``w_j = η_j/η_i``), the projection onto
``f·t + Σ_j w_j |v_j| ≤ c`` is, by the KKT conditions with multiplier ``τ ≥ 0``,
``t ← t − f τ`` and ``v_j ← sign(v_j) max(|v_j| − τ w_j, 0)``, where ``τ`` is the root of
the decreasing piecewise-linear function

    g(τ) = f (t − f τ) − c + Σ_j w_j max(|v_j| − τ w_j, 0).

Its breakpoints are ``b_j = |v_j| / w_j``. Sorting them in decreasing order,
``g(b_k) < 0`` exactly for the entries that stay nonzero, so the active count is the
number of negative ``g(b_k)``, and on that segment ``g`` is linear:
``τ = (f t − c + Σ_active w_j |v_j|) / (f² + Σ_active w_j²)``. O(n log n) per row, all
rows at once; no bisection (:func:`_shrink_rows`, kept as the reference).

The default path (:func:`_project_rows`, compiled) finds the same root without sorting, by
Michelot's active-set iteration: ``g`` is convex and decreasing, and its linear piece with
every entry active lies below it, so that piece's root ``τ₀ ≤ τ*``; entries with
``b_j ≤ τ₀`` are then zero at ``τ*`` too and leave the active set, and the next linear
root ``τ₁`` satisfies ``τ₀ ≤ τ₁ ≤ τ*``. The active set only shrinks, so the iteration ends,
after a few O(n) passes, on the segment that holds ``τ*``.

References
----------
J. Duchi et al., "Efficient projections onto the ℓ1-ball for learning in high
dimensions", ICML 2008 (the unweighted, no-free-coordinate case).
L. Condat, "Fast projection onto the simplex and the ℓ1 ball", Math. Programming 158, 2016
(Michelot's algorithm).
S. Jafarpour et al., "Robust Implicit Networks via Non-Euclidean Contractions", NeurIPS 2021.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._conv import Conv2d, _channel_weights
from ._validation import as_finite_scalar, as_matrix, as_square_matrix, as_weights

__all__ = ["project_mu_inf", "project_norm_inf"]


def _shrink_rows(t, V, W, c, f):
    """Solve the row problems; ``t`` (rows,), ``V``/``W`` (rows, k), ``c`` scalar, ``f`` in {0, 1}.

    Returns the multipliers ``τ`` (rows,), zero for rows already feasible.
    """
    absV = np.abs(V)
    excess = f * t + (W * absV).sum(axis=1) - c
    tau = np.zeros(t.shape[0])
    rows = np.flatnonzero(excess > 0)
    if rows.size == 0:
        return tau
    absV, W, t = absV[rows], W[rows], t[rows]
    b = absV / W
    order = np.argsort(-b, axis=1, kind="stable")
    b = np.take_along_axis(b, order, axis=1)
    w2 = np.take_along_axis(W, order, axis=1) ** 2
    S2 = np.cumsum(w2, axis=1)
    S1 = np.cumsum(w2 * b, axis=1)  # Σ w_j |v_j| over the k largest breakpoints
    zeros = np.zeros((rows.size, 1))
    S1_ex = np.hstack([zeros, S1[:, :-1]])
    S2_ex = np.hstack([zeros, S2[:, :-1]])
    base = f * t - c
    g_at_b = base[:, None] + S1_ex - b * (f * f + S2_ex)
    active = (g_at_b < 0).sum(axis=1)
    if f == 0:
        # Without a free coordinate an infeasible row has τ* ≤ b_1; at τ* = b_1 (radius 0)
        # g(b_1) = 0 is not counted, but the first segment's formula still gives the root.
        active = np.maximum(active, 1)
    S1_full = np.hstack([zeros, S1])
    S2_full = np.hstack([zeros, S2])
    idx = np.arange(rows.size)
    tau[rows] = (base + S1_full[idx, active]) / (f * f + S2_full[idx, active])
    return np.maximum(tau, 0.0)


@njit(cache=True, parallel=True)
def _project_rows(A, ratio, c, free_diagonal):
    """Project every row of ``A`` onto ``f·a_ii + Σ_j w_ij |a_ij| ≤ c`` (a new array).

    ``free_diagonal``: μ∞ (``f = 1``, the diagonal is the free coordinate ``t`` and the
    off-diagonal entries carry weights ``w_ij = ratio[i, j]``, all ones when ``ratio`` is
    empty); otherwise ‖·‖∞ (``f = 0``, every entry in the ℓ1 part, unit weights).
    """
    rows, cols = A.shape
    out = A.copy()
    weighted = ratio.shape[0] > 0
    f = 1.0 if free_diagonal else 0.0
    for i in prange(rows):  # rows are independent: one block of rows per thread
        active = np.empty(cols, np.bool_)
        t = A[i, i] if free_diagonal else 0.0
        s1 = f * t - c
        s2 = f * f
        for j in range(cols):
            active[j] = not (free_diagonal and j == i)
            if active[j]:
                w = ratio[i, j] if weighted else 1.0
                s1 += w * abs(A[i, j])
                s2 += w * w
        if s1 <= 0.0:
            continue  # feasible row
        tau = s1 / s2
        while True:  # Michelot: drop the entries whose breakpoint b_j = |a_ij| / w_ij <= tau
            s1 = f * t - c
            s2 = f * f
            dropped = False
            for j in range(cols):
                if not active[j]:
                    continue
                w = ratio[i, j] if weighted else 1.0
                if abs(A[i, j]) <= tau * w:
                    active[j] = False
                    dropped = True
                else:
                    s1 += w * abs(A[i, j])
                    s2 += w * w
            if not dropped or s2 == 0.0:
                break
            tau = s1 / s2
        tau = max(tau, 0.0)
        for j in range(cols):
            if free_diagonal and j == i:
                out[i, j] = t - tau
                continue
            w = ratio[i, j] if weighted else 1.0
            a = abs(A[i, j]) - tau * w
            out[i, j] = math.copysign(a, A[i, j]) if a > 0.0 else 0.0
    return out


def _split(A: np.ndarray):
    n = A.shape[0]
    off = ~np.eye(n, dtype=bool)
    return np.diagonal(A).copy(), A[off].reshape(n, n - 1), off


def project_mu_inf(A, gamma: float, eta=None, diag_min=None) -> np.ndarray:
    """Euclidean (Frobenius) projection of ``A`` onto ``{A : μ_{∞,η}(A) ≤ γ}``, or onto
    ``{A : μ_{∞,η}(A) ≤ γ, a_ii ≥ diag_min}`` when ``diag_min`` is given.

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution: every quantity from its kernel, per output channel
        (``eta`` then holds one weight per channel).
    gamma : float
        Bound on the ℓ∞ log-norm (any real; ``γ < 1`` gives well-posedness).
    eta : array_like, shape (n,), optional
        Weights (default all ones).
    diag_min : float, optional
        Lower bound on the diagonal, ``≤ γ``. It bounds the optimal averaging step from below,
        ``α* = 1/(1 − min_i a_ii) ≥ 1/(1 − diag_min)``, and with it the iteration count: μ∞
        charges a self-loop by its signed value, so training left free drives self-loops far
        negative to buy larger off-diagonal weights, and ``α*`` towards 0.

    Returns
    -------
    ndarray, shape (n, n), or Conv2d
        The projection (a new array; feasible rows are unchanged). For a convolution, the
        convolution of the projected kernel: the Frobenius projection of the kernel, one row
        problem per output channel on its ``C k²`` taps.

    Notes
    -----
    Row ``i``: keep it when ``a_ii + Σ_{j≠i} |a_ij| η_j/η_i ≤ γ``; otherwise
    ``a_ii ← a_ii − τ``, ``a_ij ← sign(a_ij) max(|a_ij| − τ η_j/η_i, 0)`` with the unique
    ``τ > 0`` restoring equality (see the module notes).

    With ``diag_min = d``: in ``s = a_ii − d ≥ 0`` the row set is
    ``{|s| + Σ_{j≠i} w_j |a_ij| ≤ γ − d, s ≥ 0}``. Projecting ``max(s, 0)`` onto the weighted ℓ1
    ball ``{|s| + Σ w_j |a_ij| ≤ γ − d}`` solves it: for ``s ≥ 0`` the soft threshold keeps
    ``s ≥ 0``, and for ``s < 0`` the optimum has ``s = 0`` (any ``s > 0`` is farther and uses
    more of the budget), which is what projecting ``0`` gives.
    """
    if isinstance(A, Conv2d):
        return _project_conv(A, gamma, eta, diag_min)
    A = as_square_matrix(A).astype(np.float64)
    gamma = as_finite_scalar(gamma, "gamma")
    eta = as_weights(eta, A.shape[0])
    ratio = np.zeros((0, 0)) if eta is None else eta[None, :] / eta[:, None]
    if diag_min is None:
        return _project_rows(A, ratio, gamma, True)
    diag_min = as_finite_scalar(diag_min, "diag_min")
    if diag_min > gamma:
        raise ValueError(f"diag_min must be <= gamma (else the set is empty), got {diag_min} > {gamma}")
    d = np.diag_indices_from(A)
    S = A.copy()
    S[d] = np.maximum(A[d] - diag_min, 0.0)
    # The shifted diagonal joins the weighted ℓ1 part with weight η_i/η_i = 1.
    P = _project_rows(S, ratio, gamma - diag_min, False)
    P[d] += diag_min
    return P


def _project_conv(op: Conv2d, gamma, eta, diag_min) -> Conv2d:
    """:func:`project_mu_inf` of a convolution: one row problem per output channel, on its
    ``C k²`` taps with the centre tap of the same channel as the free diagonal (the Frobenius
    norm of the kernel is, up to the factor ``H W``, that of the matrix, and every row of a
    channel holds the same taps)."""
    gamma = as_finite_scalar(gamma, "gamma")
    if not op.square:
        raise ValueError(f"project_mu_inf needs a square convolution (C_out = C_in), got {op!r}")
    K = op.kernel
    C, k = op.out_channels, op.kernel_size
    p = k // 2
    eta = _channel_weights(eta, C)
    # Columns: the C centre taps first (so row c's diagonal entry is column c), then the rest.
    centre = np.zeros((C, k, k), dtype=bool)
    centre[:, p, p] = True
    order = np.concatenate([np.flatnonzero(centre.ravel()), np.flatnonzero(~centre.ravel())])
    M = np.ascontiguousarray(K.reshape(C, C * k * k)[:, order])
    channel = (order // (k * k))  # the input channel of each column
    ratio = np.zeros((0, 0)) if eta is None else np.ascontiguousarray(eta[channel][None, :] / eta[:, None])
    if diag_min is None:
        P = _project_rows(M, ratio, gamma, True)
    else:
        diag_min = as_finite_scalar(diag_min, "diag_min")
        if diag_min > gamma:
            raise ValueError(f"diag_min must be <= gamma (else the set is empty), got {diag_min} > {gamma}")
        d = np.arange(C)
        S = M.copy()
        S[d, d] = np.maximum(M[d, d] - diag_min, 0.0)
        P = _project_rows(S, ratio, gamma - diag_min, False)
        P[d, d] += diag_min
    out = np.empty_like(M)
    out[:, order] = P
    return op.with_kernel(out.reshape(K.shape))


def _project_mu_inf_sorted(A: np.ndarray, gamma: float, eta=None) -> np.ndarray:
    """The sorting reference for :func:`project_mu_inf` (validated float64 input)."""
    n = A.shape[0]
    t, V, off = _split(A)
    if eta is None:
        W = np.ones_like(V)
    else:
        W = (eta[None, :] / eta[:, None])[off].reshape(n, n - 1)
    tau = _shrink_rows(t, V, W, gamma, 1.0)
    out = np.empty_like(A)
    out[off] = (np.sign(V) * np.maximum(np.abs(V) - tau[:, None] * W, 0.0)).ravel()
    np.fill_diagonal(out, t - tau)
    return out


def project_norm_inf(A, kappa: float) -> np.ndarray:
    """Euclidean projection of ``A`` onto ``{A : ‖A‖_∞ ≤ κ}`` (an ℓ1 ball per row).

    Parameters
    ----------
    A : array_like, shape (n, m)
        Any real matrix (not necessarily square).
    kappa : float
        Radius, ``κ ≥ 0``.
    """
    A = as_matrix(A).astype(np.float64)
    kappa = as_finite_scalar(kappa, "kappa", low=0.0)
    return _project_rows(A, np.zeros((0, 0)), kappa, False)


def _project_norm_inf_sorted(A: np.ndarray, kappa: float) -> np.ndarray:
    """The sorting reference for :func:`project_norm_inf` (validated float64 input)."""
    tau = _shrink_rows(np.zeros(A.shape[0]), A, np.ones_like(A), kappa, 0.0)
    return np.sign(A) * np.maximum(np.abs(A) - tau[:, None], 0.0)

