"""Plain-numpy references and instance builders for the solver tests.

Kept in a uniquely named module (not ``conftest.py``) so that test files can import it
without clashing with other test folders that have no ``__init__.py``. Nothing here calls
:mod:`solvers`: the references are independent of the code under test.
"""

from __future__ import annotations

import functools

import numpy as np

import contraction

#: Activation specs exercised everywhere (names as accepted by ``solvers.solve``).
ACTIVATION_SPECS = ("relu", ("leaky_relu", 0.1), "hard_tanh", "tanh", "softplus")
#: Log-norm bounds of the random well-posed instances (negative, zero, positive, near 1).
MUS = (-2.0, -0.5, 0.0, 0.5, 0.9, 0.99)
#: Slack for floating-point round-off in inequalities between computed quantities.
TINY = 1e-13


def act_id(spec) -> str:
    """A readable pytest id for an activation spec."""
    return spec if isinstance(spec, str) else f"{spec[0]}-{spec[1]}"


def sigma(spec, z):
    """σ(z), written out independently of ``solvers._activations``."""
    name, slope = (spec, 0.0) if isinstance(spec, str) else spec
    z = np.asarray(z, dtype=np.float64)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z >= 0, z, slope * z)
    if name == "hard_tanh":
        return np.clip(z, -1.0, 1.0)
    if name == "tanh":
        return np.tanh(z)
    if name == "softplus":
        return np.logaddexp(0.0, z)
    raise AssertionError(name)


def dsigma(spec, z):
    """σ'(z) (at a kink: the slope of the linear piece, as the library documents)."""
    name, slope = (spec, 0.0) if isinstance(spec, str) else spec
    z = np.asarray(z, dtype=np.float64)
    if name == "relu":
        return (z >= 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z >= 0, 1.0, slope)
    if name == "hard_tanh":
        return (np.abs(z) <= 1).astype(np.float64)
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    if name == "softplus":
        return 0.5 * (1.0 + np.tanh(0.5 * z))
    raise AssertionError(name)


def residual(A, W, X, spec):
    """Per-sample ℓ∞ fixed-point residual ``‖σ(A x + w) − x‖_∞`` (rows of a batch)."""
    X2, W2 = np.atleast_2d(X).astype(np.float64), np.atleast_2d(W).astype(np.float64)
    return np.abs(sigma(spec, X2 @ np.asarray(A, np.float64).T + W2) - X2).max(axis=1)


def well_posed(rng, n, mu, neg_diag=False, scale=1.0):
    """``project_mu_inf`` of a Gaussian matrix (optionally with diagonal ``−U(1, 5)``)."""
    G = rng.standard_normal((n, n)) * scale / np.sqrt(n)
    if neg_diag:
        G[np.diag_indices(n)] = -rng.uniform(1.0, 5.0, n)
    return contraction.project_mu_inf(G, mu)


def reference_fixed_point(A, W, spec, tol=1e-14, max_avg=200_000):
    """High-accuracy ``x*`` for ``μ∞(A) < 1``: own averaged iteration, then Newton polish.

    The averaged iteration ``x⁺ = x + α*(σ(Ax + w) − x)`` contracts in ℓ∞ with factor
    ``1 − α*(1 − max(0, μ))``; Newton on ``x − σ(Ax + w)`` (Jacobian ``I − D A``, nonsingular
    because ``μ∞(DA) ≤ max(0, μ) < 1``) then removes the remaining error in a few steps.
    Every Newton step is kept only if it lowers the residual. Returns ``x*`` with shape of W.
    """
    A = np.asarray(A, np.float64)
    W = np.asarray(W, np.float64)
    W2 = np.atleast_2d(W)
    n = A.shape[0]
    alpha = 1.0 / (1.0 - min(0.0, float(np.diagonal(A).min())))
    X = np.zeros_like(W2)
    for _ in range(max_avg):
        R = sigma(spec, X @ A.T + W2) - X
        if np.abs(R).max() <= 1e-7:
            break
        X = X + alpha * R
    eye = np.eye(n)
    for _ in range(50):
        Z = X @ A.T + W2
        R = sigma(spec, Z) - X
        r = np.abs(R).max(axis=1)
        if r.max() <= tol:
            break
        D = dsigma(spec, Z)
        for s in range(X.shape[0]):
            step = np.linalg.solve(eye - D[s][:, None] * A, R[s])
            trial = X[s] + step
            if np.abs(sigma(spec, A @ trial + W2[s]) - trial).max() < r[s]:
                X[s] = trial
            else:  # Newton stalled (kink): fall back to one averaged step
                X[s] = X[s] + alpha * R[s]
    assert residual(A, W2, X, spec).max() <= max(tol, 1e3 * np.finfo(float).eps), "reference failed"
    return X[0] if W.ndim == 1 else X


def certificate_scale(A) -> float:
    """``1 / (1 − max(0, μ∞(A)))``: turns a residual into an ℓ∞ error bound."""
    return 1.0 / (1.0 - max(0.0, contraction.mu_inf(A)))


def dense_adjoint(A, Z, G, spec):
    """Per-sample dense solve of ``λ (I − diag(σ'(z)) A) = g`` (row vectors)."""
    A = np.asarray(A, np.float64)
    Z2, G2 = np.atleast_2d(Z), np.atleast_2d(G)
    n = A.shape[0]
    lam = np.empty_like(G2, dtype=np.float64)
    for s in range(G2.shape[0]):
        M = np.eye(n) - dsigma(spec, Z2[s])[:, None] * A
        lam[s] = np.linalg.solve(M.T, G2[s])
    return lam[0] if np.ndim(G) == 1 else lam


# --- Cached random instances (seeded, so every test sees the same problems) -------------

#: State size and batch of the random instances (small: the numba kernels compile once
#: per dtype, and the numpy engine is a Python loop).
N, BATCH = 8, 4
#: (μ, strongly negative diagonal) of the ``project_mu_inf`` family.
MU_CASES = tuple((mu, nd) for mu in MUS for nd in (False, True))
#: (κ, negative diagonal) of the ``project_norm_inf`` family, where picard is guaranteed.
NORM_CASES = tuple((kappa, nd) for kappa in (0.5, 0.9, 0.99) for nd in (False, True))


@functools.lru_cache(maxsize=None)
def _problem(kind: str, param: float, neg_diag: bool):
    seed = 5000 + 10 * int(round(100 * param)) + (7 if kind == "norm" else 0) + int(neg_diag)
    rng = np.random.default_rng(seed)
    if kind == "mu":
        A = well_posed(rng, N, param, neg_diag)
    else:
        G = rng.standard_normal((N, N)) * 2.0 / np.sqrt(N)
        if neg_diag:
            G[np.diag_indices(N)] = -rng.uniform(1.0, 5.0, N)
        A = contraction.project_norm_inf(G, param)
    # Rows of different sizes put samples on different pieces of σ and stop them at
    # different iterations.
    W = rng.standard_normal((BATCH, N)) * np.array([0.3, 1.0, 2.0, 4.0])[:, None]
    return A, W


def problem(kind: str, param: float, neg_diag: bool):
    """``(A, W)`` of a cached instance: ``kind`` is ``"mu"`` (``μ∞(A) ≤ param``) or
    ``"norm"`` (``‖A‖∞ ≤ param``). Returns fresh copies."""
    A, W = _problem(kind, float(param), bool(neg_diag))
    return A.copy(), W.copy()


@functools.lru_cache(maxsize=None)
def _reference(kind, param, neg_diag, spec):
    A, W = _problem(kind, float(param), bool(neg_diag))
    return reference_fixed_point(A, W, spec)


def reference(kind: str, param: float, neg_diag: bool, spec):
    """High-accuracy fixed point of :func:`problem` for activation ``spec`` (a copy)."""
    return _reference(kind, float(param), bool(neg_diag), spec).copy()


def all_cases():
    """Every ``(kind, param, neg_diag)`` instance: both families."""
    return [("mu", p, nd) for p, nd in MU_CASES] + [("norm", p, nd) for p, nd in NORM_CASES]
