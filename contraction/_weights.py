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
from ._conv import Conv2d
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


def _perron_vector(M: np.ndarray, refine: int = 3) -> np.ndarray:
    """Right eigenvector of the rightmost eigenvalue of a Metzler matrix, made positive.

    ``eig``'s small components carry absolute, not relative, accuracy; a few steps of
    inverse iteration with a shift just right of the abscissa restore them: for
    ``σ > α(M)``, ``−(M − σI)⁻¹`` is entrywise nonnegative, so positivity is kept.
    """
    n = M.shape[0]
    w, V = np.linalg.eig(M)
    i = np.argmax(w.real)
    v = np.abs(V[:, i].real)
    top = v.max()
    if top <= 0 or not np.isfinite(top):
        return np.ones(n)
    v = v / top
    sigma = w[i].real + 1e-8 * max(1.0, abs(w[i].real), np.abs(M).max())
    for _ in range(refine):
        try:
            u = -np.linalg.solve(M - sigma * np.eye(n), v)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(u)) or u.max() <= 0:
            break
        v = np.maximum(u, 0.0) / u.max()
    # Components lost to round-off are floored so the weights stay positive.
    return np.maximum(v, np.finfo(float).tiny ** 0.5)


def _objective(A: np.ndarray, kind: str):
    if kind == "log_norm":
        return metzler_majorant(A), lambda eta: mu_inf(A, eta)
    return np.abs(A), lambda eta: induced_norm(A, np.inf, eta)


def _topological_blocks(M: np.ndarray):
    """Strongly connected components of the off-diagonal pattern, in an order where every
    coupling ``m_ij ≠ 0`` goes from an earlier block (row ``i``) to a later one (column ``j``)."""
    pattern = M != 0
    np.fill_diagonal(pattern, False)
    k, labels = csgraph.connected_components(pattern, directed=True, connection="strong")
    cond = np.zeros((k, k), dtype=bool)
    rows, cols = np.nonzero(pattern)
    cond[labels[rows], labels[cols]] = True
    np.fill_diagonal(cond, False)
    indeg = cond.sum(axis=0)
    order, ready = [], [b for b in range(k) if indeg[b] == 0]
    while ready:  # Kahn's algorithm on the condensation (a DAG)
        b = ready.pop()
        order.append(b)
        for c in np.flatnonzero(cond[b]):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    return [np.flatnonzero(labels == b) for b in order]


def _weights_blocks(M: np.ndarray, value_at, target: float, tol: float):
    """Weights for a reducible majorant: Perron vectors per block, blocks scaled by ``t^p``.

    In block-triangular order the couplings into later blocks are multiplied by
    ``η_j/η_i ≤ t``, so each row exceeds its block's abscissa by at most ``t · K``.
    """
    blocks = _topological_blocks(M)
    v = np.empty(M.shape[0])
    position = np.empty(M.shape[0], dtype=int)
    for p, idx in enumerate(blocks):
        v[idx] = _perron_vector(M[np.ix_(idx, idx)])
        position[idx] = p
    later = position[None, :] > position[:, None]
    K = float(((np.abs(M) * later) * v[None, :] / v[:, None]).sum(axis=1).max())
    depth = max(len(blocks) - 1, 1)
    floor = np.log(np.finfo(float).tiny) / depth  # keep t^depth representable
    # Half the tolerance: the value must land inside it despite round-off.
    log_t = min(0.0, max(np.log(0.5 * tol / K) if K > 0 else 0.0, floor))
    eta = v * np.exp(log_t * position)
    return eta / eta.max(), value_at(eta / eta.max())


def _weights_perron(A: np.ndarray, kind: str, tol: float):
    M, value_at = _objective(A, kind)
    target = float(np.linalg.eigvals(M).real.max())
    if is_irreducible(M):
        eta = _perron_vector(M)
        best = (eta, value_at(eta))
    else:
        best = _weights_blocks(M, value_at, target, tol)
    if best[1] - target > tol:
        logger.warning(
            "optimal_weights: reached %.3e above the infimum %.6g (tolerance %.1e)",
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
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution gets one weight per channel (``eta`` of shape (C,)): the Perron
        weights of its channel majorant (``Conv2d.channel_majorant``), for which
        ``μ_{∞,η}`` of the operator equals that of the majorant (its infimum over channel
        weights: the majorant's spectral abscissa).
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
    if isinstance(A, Conv2d):  # one weight per channel, from the channel majorant (contraction/_conv.py)
        if kind != "log_norm":
            raise ValueError(f"kind must be 'log_norm' for a convolution, got {kind!r}")
        A = A.channel_majorant()
    A = as_square_matrix(A).astype(np.float64)
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    tol = as_finite_scalar(tol, "tol", low=0.0)
    if method == "perron":
        return _weights_perron(A, kind, tol)
    return _weights_cvxpy(A, kind)
