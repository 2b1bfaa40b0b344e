"""Weighted vector norms, induced matrix norms and log-norms (matrix measures).

Notes
-----
With weights ``eta > 0`` the ℓ∞ and ℓ1 norms are ``‖x‖_{∞,η} = max_i |x_i|/η_i`` and
``‖x‖_{1,η} = Σ_i η_i |x_i|``; their induced norms and log-norms are those of the
diagonally scaled matrices ``diag(η)⁻¹ A diag(η)`` and ``diag(η) A diag(η)⁻¹``.
For ℓ2 a positive definite ``P`` gives ``‖x‖_{2,P} = sqrt(xᵀ P x)``.

References
----------
C. A. Desoer and M. Vidyasagar, *Feedback Systems: Input-Output Properties*, 1975.
F. Bullo, *Contraction Theory for Dynamical Systems*, 2022, chapter 2.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numba import njit

from ._conv import Conv2d
from ._validation import as_positive_definite, as_square_matrix, as_weights, _finite_array

__all__ = [
    "vector_norm",
    "induced_norm",
    "mu_inf",
    "mu_1",
    "mu_2",
    "log_norm",
]

_P_VALUES = (1, 2, np.inf)


def _check_p(p) -> float:
    if p in ("inf", "infinity"):
        p = np.inf
    if p not in _P_VALUES:
        raise ValueError(f"p must be one of 1, 2, inf; got {p!r}")
    return p


def _scale_inf(A: np.ndarray, eta: np.ndarray | None) -> np.ndarray:
    """``diag(η)⁻¹ A diag(η)``: the matrix whose plain ℓ∞ quantities are the η-weighted ones."""
    return A if eta is None else A * (eta[None, :] / eta[:, None])


@njit(cache=True)
def _mu_inf_compiled(A) -> float:
    """``μ∞(A)`` of a validated square array of any float dtype (row sums in float64)."""
    best = -np.inf
    for i in range(A.shape[0]):
        s = 0.0
        for j in range(A.shape[1]):
            s += abs(A[i, j])
        s += A[i, i] - abs(A[i, i])
        best = max(best, s)
    return best


def _row_measure(S: np.ndarray) -> np.ndarray:
    """Per-row ``s_ii + Σ_{j≠i} |s_ij|`` (the ℓ∞ log-norm before the max)."""
    d = np.diagonal(S)
    return d + np.abs(S).sum(axis=1) - np.abs(d)


def vector_norm(x, p=np.inf, eta=None, P=None) -> float:
    """Weighted vector norm ``‖x‖_{p,η}`` (``p`` in 1, ∞) or ``‖x‖_{2,P}``.

    Parameters
    ----------
    x : array_like, shape (n,)
    p : {1, 2, inf}
    eta : array_like, shape (n,), optional
        Positive weights for ``p`` in {1, inf}.
    P : array_like, shape (n, n), optional
        Positive definite weight for ``p = 2``.
    """
    p = _check_p(p)
    x = _finite_array(x, "x", 1)
    n = x.shape[0]
    if n == 0:
        raise ValueError("x must not be empty")
    eta = as_weights(eta, n)
    P = as_positive_definite(P, n)
    if p == 2:
        if eta is not None:
            raise ValueError("eta applies to p=1 or p=inf; use P for p=2")
        return float(np.sqrt(x @ P @ x)) if P is not None else float(np.linalg.norm(x))
    if P is not None:
        raise ValueError("P applies to p=2 only")
    if p == np.inf:
        return float(np.max(np.abs(x) / (1.0 if eta is None else eta)))
    return float(np.sum(np.abs(x) * (1.0 if eta is None else eta)))


def induced_norm(A, p=np.inf, eta=None, P=None) -> float:
    """Induced matrix norm ``‖A‖_{p,η}`` (or ``‖A‖_{2,P}``) for ``p`` in {1, 2, ∞}.

    Notes
    -----
    ``‖A‖_{∞,η} = ‖diag(η)⁻¹ A diag(η)‖_∞`` (max row sum),
    ``‖A‖_{1,η} = ‖diag(η) A diag(η)⁻¹‖_1`` (max column sum),
    ``‖A‖_{2,P} = ‖P^{1/2} A P^{-1/2}‖_2 = sqrt(λ_max(AᵀPA, P))``.
    """
    p = _check_p(p)
    A = as_square_matrix(A)
    n = A.shape[0]
    eta = as_weights(eta, n)
    P = as_positive_definite(P, n)
    if p == 2:
        if eta is not None:
            raise ValueError("eta applies to p=1 or p=inf; use P for p=2")
        if P is None:
            return float(np.linalg.norm(A, 2))
        top = scipy.linalg.eigh(A.T @ P @ A, P, eigvals_only=True)[-1]
        return float(np.sqrt(max(top, 0.0)))
    if P is not None:
        raise ValueError("P applies to p=2 only")
    if p == np.inf:
        return float(np.abs(_scale_inf(A, eta)).sum(axis=1).max())
    return float(np.abs(_scale_inf(A.T, eta)).sum(axis=1).max())


def mu_inf(A, eta=None) -> float:
    """ℓ∞ log-norm ``μ_{∞,η}(A) = max_i (a_ii + Σ_{j≠i} |a_ij| η_j/η_i)``.

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution: every quantity from its kernel, per output channel
        (``eta`` then holds one weight per channel).
    eta : array_like, shape (n,), optional
        Positive weights (default all ones).

    Notes
    -----
    ``μ_{∞,η}(A) = μ_∞(diag(η)⁻¹ A diag(η))``. The set ``{A : μ_∞(A) ≤ γ}`` is a
    polyhedron: one convex piecewise-linear inequality per row.

    References
    ----------
    S. Jafarpour, A. Davydov, A. Proskurnikov, F. Bullo, "Robust Implicit Networks via
    Non-Euclidean Contractions", NeurIPS 2021.
    """
    if isinstance(A, Conv2d):  # per output channel, from the kernel (contraction/_conv.py)
        diag, off = A.row_data(eta)
        return float((diag + off).max())
    A = as_square_matrix(A)
    eta = as_weights(eta, A.shape[0])
    return float(_row_measure(_scale_inf(A, eta)).max())


def mu_1(A, eta=None) -> float:
    """ℓ1 log-norm ``μ_{1,η}(A) = μ_1(diag(η) A diag(η)⁻¹) = μ_{∞,η}(Aᵀ)``.

    Notes
    -----
    Column form: ``max_j (a_jj + Σ_{i≠j} |a_ij| η_i/η_j)``. ℓ1 and ℓ∞ weightings are dual,
    which is why the adjoint iteration contracts in ``‖·‖_{1,η}``.
    """
    A = as_square_matrix(A)
    eta = as_weights(eta, A.shape[0])
    return float(_row_measure(_scale_inf(A.T, eta)).max())


def mu_2(A, P=None) -> float:
    """ℓ2 log-norm ``μ_{2,P}(A) = λ_max`` of the symmetric part of ``P^{1/2} A P^{-1/2}``.

    Notes
    -----
    Computed as the largest generalised eigenvalue of ``((PA + AᵀP)/2, P)``, which avoids
    the matrix square root. Without ``P`` this is ``λ_max((A + Aᵀ)/2)``.
    """
    A = as_square_matrix(A)
    P = as_positive_definite(P, A.shape[0])
    if P is None:
        return float(np.linalg.eigvalsh(0.5 * (A + A.T))[-1])
    S = 0.5 * (P @ A + A.T @ P)
    return float(scipy.linalg.eigh(S, P, eigvals_only=True)[-1])


def log_norm(A, p=np.inf, eta=None, P=None) -> float:
    """Log-norm ``μ_p`` dispatching on ``p`` in {1, 2, ∞} (weights as in :func:`mu_inf`)."""
    p = _check_p(p)
    if p == 2:
        if eta is not None:
            raise ValueError("eta applies to p=1 or p=inf; use P for p=2")
        return mu_2(A, P)
    if P is not None:
        raise ValueError("P applies to p=2 only")
    return mu_inf(A, eta) if p == np.inf else mu_1(A, eta)
