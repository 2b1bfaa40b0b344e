"""Shared strategies and plain-numpy reference computations for the contraction tests.

Kept in a uniquely named module (not ``conftest.py``) so that test files can import it
without clashing with other test folders that have no ``__init__.py``.
"""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

#: Property-test settings for this suite: small, deterministic enough, no example database.
PROPERTY = settings(max_examples=50, deadline=None, database=None)

seeds = st.integers(min_value=0, max_value=2**32 - 1)
sizes = st.integers(min_value=1, max_value=8)
small_sizes = st.integers(min_value=1, max_value=6)
scales = st.floats(min_value=0.05, max_value=3.0, allow_nan=False, allow_infinity=False)


def random_matrix(rng, n, scale=1.0, neg_diag=False, m=None):
    """Gaussian ``(n, m)`` matrix with entries of size ``scale / sqrt(n)``; optionally a
    strongly negative diagonal (so ``a_min < 0`` and ``α* < 1``)."""
    m = n if m is None else m
    A = rng.standard_normal((n, m)) * scale / np.sqrt(n)
    if neg_diag:
        A[np.diag_indices(min(n, m))] = -rng.uniform(0.5, 5.0, min(n, m))
    return A


def random_weights(rng, n):
    """Positive weights spread over about two orders of magnitude."""
    return np.exp(rng.uniform(-2.5, 2.5, n))


def random_spd(rng, n):
    """A well-conditioned symmetric positive definite matrix."""
    Q = rng.standard_normal((n, n))
    return Q @ Q.T / n + 0.5 * np.eye(n)


def row_measures(A, eta=None):
    """Per-row ``a_ii + Σ_{j≠i} |a_ij| η_j/η_i`` written out element by element."""
    n = A.shape[0]
    eta = np.ones(n) if eta is None else eta
    out = np.empty(n)
    for i in range(n):
        out[i] = A[i, i] + sum(abs(A[i, j]) * eta[j] / eta[i] for j in range(n) if j != i)
    return out


def inf_norm(M, eta=None):
    """``‖M‖_{∞,η}`` from its definition ``‖diag(η)⁻¹ M diag(η)‖_∞`` (max row sum)."""
    if eta is not None:
        M = np.diag(1.0 / eta) @ M @ np.diag(eta)
    return float(np.abs(M).sum(axis=1).max())


def vertices(n):
    """All ``d ∈ {0, 1}^n`` as an array of shape (2^n, n)."""
    return np.array(list(itertools.product((0.0, 1.0), repeat=n)))


def relu(z):
    return np.maximum(z, 0.0)


ACTIVATIONS = {"relu": relu, "tanh": np.tanh}


def averaged_fixed_point(A, w, act=relu, tol=1e-13, max_iter=200_000, x0=None):
    """Reference solve of ``x = act(Ax + w)`` by the averaged iteration at ``α*``.

    Plain numpy, independent of the package. Requires ``μ_∞(A) < 1`` (no check here);
    stops at ``‖T(x) − x‖_∞ ≤ tol · max(1, ‖x‖_∞)`` and raises ``AssertionError`` when that
    is not reached.
    """
    a_min = float(np.diagonal(A).min())
    alpha = 1.0 / (1.0 - min(0.0, a_min))
    x = np.zeros(A.shape[0]) if x0 is None else np.array(x0, dtype=float)
    for _ in range(max_iter):
        Tx = act(A @ x + w)
        if np.max(np.abs(Tx - x)) <= tol * max(1.0, np.max(np.abs(x))):  # relative: round-off floor
            return x
        x = (1.0 - alpha) * x + alpha * Tx
    raise AssertionError(f"reference fixed-point loop did not reach {tol}")
