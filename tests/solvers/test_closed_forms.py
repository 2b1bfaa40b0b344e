"""Closed forms: affine pieces with known fixed points, starts at the fixed point, max_iter edges."""

from __future__ import annotations

import numpy as np
import pytest

import contraction
import solvers
from _solver_helpers import certificate_scale, residual

# Methods guaranteed on every matrix below (‖A‖∞ < 1 makes picard guaranteed too).
ALL_METHODS = solvers.METHODS
N = 6


def _small_norm_matrix(rng, kappa=0.8, neg_diag=False):
    G = rng.standard_normal((N, N))
    if neg_diag:
        G[np.diag_indices(N)] = -rng.uniform(1.0, 5.0, N)
    return contraction.project_norm_inf(G, kappa)


def _linear_cases(rng):
    """``(name, A, W, spec, x*)`` where σ is affine near x*, so x* solves a linear system."""
    cases = []
    for neg_diag in (False, True):
        A = _small_norm_matrix(rng, 0.8, neg_diag)
        I = np.eye(N)
        # relu, every z* > 0: x = A x + w.
        xs = rng.uniform(0.5, 2.0, (3, N))
        W = xs @ (I - A).T
        X = np.linalg.solve(I - A, W.T).T
        cases.append((f"relu-positive-{neg_diag}", A, W, "relu", X))
        # leaky relu, every z* < 0: x = s (A x + w)  ⇔  (I − s A) x = s w.
        s = 0.1
        W = -rng.uniform(1.0, 3.0, (3, N)) - 2.0 * np.abs(A).sum(axis=1)  # z < 0 whenever |x| ≤ 2
        X = np.linalg.solve(I - s * A, s * W.T).T
        assert np.all(X @ A.T + W < 0)
        cases.append((f"leaky-negative-{neg_diag}", A, W, ("leaky_relu", s), X))
        # hard tanh, linear region |z*| < 1: x = A x + w.
        xs = rng.uniform(-0.9, 0.9, (3, N))
        W = xs @ (I - A).T
        X = np.linalg.solve(I - A, W.T).T
        cases.append((f"hardtanh-linear-{neg_diag}", A, W, "hard_tanh", X))
        # hard tanh, saturated: |w_i| > 1 + ‖A‖∞ forces x*_i = sign(w_i).
        W = np.sign(rng.standard_normal((3, N))) * (1.5 + np.abs(A).sum(axis=1))
        cases.append((f"hardtanh-saturated-{neg_diag}", A, W, "hard_tanh", np.sign(W)))
        # tanh with w = 0: x* = 0.
        cases.append((f"tanh-zero-{neg_diag}", A, np.zeros((3, N)), "tanh", np.zeros((3, N))))
    return cases


_CASES = _linear_cases(np.random.default_rng(11))
_IDS = [c[0] for c in _CASES]


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_affine_piece_fixed_point(case, method, engine):
    _, A, W, spec, X = case
    atol = 1e-11
    res = solvers.solve(A, W, method=method, activation=spec, atol=atol, engine=engine, max_iter=5000)
    assert res.status == solvers.Status.SUCCESS, res
    assert res.converged.all()
    err = np.abs(res.x - X).max(axis=1)
    # The a-posteriori certificate holds, and the tolerance bounds the error.
    assert np.all(err <= res.error_bound + 1e-14)
    assert np.all(err <= atol * certificate_scale(A) + 1e-13)
    np.testing.assert_allclose(res.residual, residual(A, W, res.x, spec), rtol=1e-10, atol=1e-15)
    assert res.method == method and res.engine == engine


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("case", _CASES, ids=_IDS)
def test_start_at_fixed_point_takes_zero_iterations(case, method, engine):
    _, A, W, spec, X = case
    res = solvers.solve(A, W, method=method, activation=spec, atol=1e-12, x0=X, engine=engine, record=True)
    assert res.status == solvers.Status.SUCCESS
    np.testing.assert_array_equal(res.iterations, 0)
    assert res.history.shape == (1, W.shape[0])
    # Splittings start from u0 = (1 − α) x0 + α (A x0 + w), whose prox is x0 again.
    np.testing.assert_allclose(res.x, X, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_max_iter_one_with_tight_tolerance(method, engine):
    _, A, W, spec, _ = _CASES[0]
    res = solvers.solve(A, W, method=method, activation=spec, atol=1e-15, max_iter=1, engine=engine, record=True)
    assert res.status == solvers.Status.MAX_ITER
    assert not res.converged.any()
    np.testing.assert_array_equal(res.iterations, 1)
    np.testing.assert_array_equal(res.sample_status, int(solvers.Status.MAX_ITER))
    assert res.history.shape == (2, W.shape[0])
    np.testing.assert_array_equal(res.residual, res.history[-1])
    assert not res.success


@pytest.mark.parametrize("method", ALL_METHODS)
def test_max_iter_zero(method, engine, rng):
    _, A, W, spec, X = _CASES[0]
    x0 = rng.uniform(0.0, 1.0, W.shape)
    res = solvers.solve(A, W, method=method, activation=spec, max_iter=0, x0=x0, engine=engine, record=True)
    assert res.status == solvers.Status.MAX_ITER
    np.testing.assert_array_equal(res.iterations, 0)
    assert res.history.shape == (1, W.shape[0])
    if method not in ("peaceman_rachford", "douglas_rachford"):
        # No step taken: the start is returned unchanged and its residual reported.
        np.testing.assert_array_equal(res.x, x0)
        np.testing.assert_allclose(res.residual, residual(A, W, x0, spec), rtol=1e-12)
    # At the fixed point max_iter=0 is enough.
    res = solvers.solve(A, W, method=method, activation=spec, atol=1e-12, max_iter=0, x0=X, engine=engine)
    assert res.status == solvers.Status.SUCCESS
    np.testing.assert_array_equal(res.iterations, 0)


def test_zero_matrix_converges_in_one_step(engine):
    """A = 0: T(x) = σ(w) is constant, so picard lands on x* = σ(w) after one step."""
    W = np.array([[-1.0, 0.5, 2.0], [3.0, -0.2, 0.0]])
    res = solvers.solve(np.zeros((3, 3)), W, method="picard", atol=0.0, engine=engine)
    assert res.success
    np.testing.assert_array_equal(res.iterations, 1)
    np.testing.assert_array_equal(res.x, np.maximum(W, 0))
    np.testing.assert_array_equal(res.residual, 0.0)


def test_scalar_linear_rate_average(engine):
    """n = 1, A = a ∈ (0, 1), relu, w > 0: picard error shrinks exactly by a each step."""
    a, w = 0.5, 1.0
    res = solvers.solve([[a]], [w], method="average", atol=1e-9, engine=engine, record=True)
    xs = w / (1 - a)
    k = np.arange(res.history.shape[0])
    # x_k = xs (1 − a^k), r_k = |a x_k + w − x_k| = w a^k.
    np.testing.assert_allclose(res.history[:, 0], w * a**k, rtol=1e-12)
    assert res.iterations[0] == int(np.ceil(np.log(1e-9 / w) / np.log(a)))
    np.testing.assert_allclose(res.x, [xs * (1 - a ** res.iterations[0])], rtol=1e-14)
