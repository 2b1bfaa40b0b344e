"""Optimal diagonal weights: Perron–Frobenius theory, with a cvxpy cross-check.

Notes
-----
For the Metzler majorant ``⌈A⌉`` (diagonal kept, off-diagonal entries replaced by their
absolute values), ``inf_η μ_{∞,η}(A) = α(⌈A⌉)``, the spectral abscissa; for irreducible
``⌈A⌉`` the infimum is attained at its right Perron vector ``v``, since then
``⌈A⌉ v = α v`` makes every row of ``diag(v)⁻¹ ⌈A⌉ diag(v)`` sum to ``α``. Likewise
``inf_η ‖A‖_{∞,η} = ρ(|A|)``. For a reducible majorant the infimum may not be attained: we
perturb the off-diagonal pattern to make it irreducible and shrink the perturbation until
the weights are within the requested tolerance of the infimum.

References
----------
A. Berman and R. J. Plemmons, *Nonnegative Matrices in the Mathematical Sciences*, 1994.
S. Jafarpour et al., "Robust Implicit Networks via Non-Euclidean Contractions", NeurIPS 2021.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse.csgraph as csgraph

from ._norms import induced_norm, mu_inf
from ._validation import as_finite_scalar, as_square_matrix

__all__ = [
    "metzler_majorant",
    "spectral_abscissa",
    "spectral_radius",
    "is_irreducible",
    "optimal_weights",
]

logger = logging.getLogger(__name__)

_KINDS = ("log_norm", "norm")
_METHODS = ("perron", "cvxpy")


def metzler_majorant(A) -> np.ndarray:
    """``⌈A⌉``: keep the diagonal of ``A``, take absolute values off the diagonal."""
    A = as_square_matrix(A)
    M = np.abs(A)
    np.fill_diagonal(M, np.diagonal(A))
    return M


def spectral_abscissa(A) -> float:
    """``α(A) = max Re λ(A)``."""
    A = as_square_matrix(A)
    return float(np.linalg.eigvals(A).real.max())


def spectral_radius(A) -> float:
    """``ρ(A) = max |λ(A)|``."""
    A = as_square_matrix(A)
    return float(np.abs(np.linalg.eigvals(A)).max())


def is_irreducible(A) -> bool:
    """Whether the directed graph of the off-diagonal pattern of ``A`` is strongly connected."""
    A = as_square_matrix(A)
    pattern = A != 0
    np.fill_diagonal(pattern, False)
    n_comp = csgraph.connected_components(pattern, directed=True, connection="strong")[0]
    return bool(n_comp == 1)


def _perron_vector(M: np.ndarray) -> np.ndarray:
    """Right eigenvector of the rightmost eigenvalue of a Metzler matrix, made positive."""
    w, V = np.linalg.eig(M)
    v = np.abs(V[:, np.argmax(w.real)].real)
    top = v.max()
    if top <= 0 or not np.isfinite(top):
        return np.ones(M.shape[0])
    # Components lost to round-off are floored so the weights stay positive.
    return np.maximum(v / top, np.finfo(float).tiny ** 0.5)


def _objective(A: np.ndarray, kind: str):
    if kind == "log_norm":
        return metzler_majorant(A), lambda eta: mu_inf(A, eta)
    return np.abs(A), lambda eta: induced_norm(A, np.inf, eta)


def _weights_perron(A: np.ndarray, kind: str, tol: float):
    M, value_at = _objective(A, kind)
    n = A.shape[0]
    target = float(np.linalg.eigvals(M).real.max())
    eta = _perron_vector(M)
    best = (eta, value_at(eta))
    if best[1] - target <= tol or n == 1:
        return best
    # Reducible (or nearly so): perturb the off-diagonal pattern to make it irreducible.
    E = np.ones((n, n)) - np.eye(n)
    scale = max(np.abs(M).max(), 1.0)
    for eps in scale * np.logspace(-2, -14, 25):
        eta = _perron_vector(M + eps * E)
        val = value_at(eta)
        if val < best[1]:
            best = (eta, val)
        if best[1] - target <= tol:
            break
    if best[1] - target > tol:
        logger.warning(
            "optimal_weights: reached %.3e above the infimum %.6g (tolerance %.1e); "
            "the infimum is not attained for this reducible matrix",
            best[1] - target,
            target,
            tol,
        )
    return best


def _weights_cvxpy(A: np.ndarray, kind: str, bound: float = 30.0):
    import cvxpy as cp

    n = A.shape[0]
    _, value_at = _objective(A, kind)
    y = cp.Variable(n)
    t = cp.Variable()
    absA = np.abs(A)
    cons = [y[0] == 0, y <= bound, y >= -bound]
    for i in range(n):
        if kind == "log_norm":
            cols = [j for j in range(n) if j != i and absA[i, j] > 0]
            const = A[i, i]
        else:
            cols = [j for j in range(n) if absA[i, j] > 0]
            const = 0.0
        if cols:
            expo = cp.exp(y[cols] - y[i])
            cons.append(const + absA[i, cols] @ expo <= t)
        else:
            cons.append(const <= t)
    cp.Problem(cp.Minimize(t), cons).solve()
    if y.value is None:
        raise RuntimeError("cvxpy failed to solve the optimal-weight problem")
    eta = np.exp(y.value - y.value.max())
    return eta, value_at(eta)


def optimal_weights(A, kind: str = "log_norm", method: str = "perron", tol: float = 1e-9):
    """Diagonal weights ``η`` minimising ``μ_{∞,η}(A)`` (or ``‖A‖_{∞,η}``).

    Parameters
    ----------
    A : array_like, shape (n, n)
    kind : {"log_norm", "norm"}
        Minimise the ℓ∞ log-norm (infimum ``α(⌈A⌉)``) or the induced ℓ∞ norm
        (infimum ``ρ(|A|)``).
    method : {"perron", "cvxpy"}
        Perron vector of the majorant (exact, fast), or the convex program
        ``min t  s.t.  a_ii + Σ_{j≠i} |a_ij| e^{y_j − y_i} ≤ t`` in ``y = log η``
        (a reference; ``|y| ≤ 30``).
    tol : float
        For reducible majorants: accept weights whose value is within ``tol`` of the
        infimum (absolute). A warning is logged when this is not reached.

    Returns
    -------
    eta : ndarray, shape (n,)
        Positive weights, normalised so that ``max(eta) == 1``.
    value : float
        ``μ_{∞,η}(A)`` (or ``‖A‖_{∞,η}``) at the returned weights, never below the infimum.
    """
    A = as_square_matrix(A).astype(np.float64)
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    tol = as_finite_scalar(tol, "tol", low=0.0)
    if method == "perron":
        return _weights_perron(A, kind, tol)
    return _weights_cvxpy(A, kind)
