"""The adjoint solve ``λ = g + (λ ⊙ σ'(z*)) A`` against dense solves and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import contraction
import solvers
from _solver_helpers import (
    ACTIVATION_SPECS,
    TINY,
    act_id,
    certificate_scale,
    dense_adjoint,
    dsigma,
    problem,
    reference,
    reference_fixed_point,
)

ATOL = 1e-10
ITERATIVE = ("picard", "average", "anderson")
MU_CASES = (("mu", 0.5, False), ("mu", 0.9, True), ("mu", -2.0, True), ("mu", 0.99, False))
NORM_CASES = (("norm", 0.5, True), ("norm", 0.9, False))


def _cases(method):
    return NORM_CASES if method == "picard" else MU_CASES + NORM_CASES


def _adjoint_inputs(kind, param, nd, spec, seed=0):
    A, W = problem(kind, param, nd)
    X = reference(kind, param, nd, spec)
    Z = X @ A.T + W
    G = np.random.default_rng(seed).standard_normal(W.shape)
    return A, Z, G


def _l1_residual(A, Z, G, lam, spec):
    return np.abs(G + (lam * dsigma(spec, Z)) @ A - lam).sum(axis=1)


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
@pytest.mark.parametrize("method", ITERATIVE)
def test_adjoint_matches_dense_solve(method, spec, engine):
    for kind, param, nd in _cases(method):
        A, Z, G = _adjoint_inputs(kind, param, nd, spec)
        lam_ref = dense_adjoint(A, Z, G, spec)
        lam, res = solvers.solve_adjoint(A, Z, G, method=method, activation=spec, atol=ATOL, engine=engine)
        tag = (kind, param, nd)
        assert isinstance(res, solvers.AdjointResult)
        assert res.status == solvers.Status.SUCCESS, tag
        assert lam.shape == G.shape and lam.dtype == np.float64
        # ℓ1 residual criterion, reported per sample.
        r1 = _l1_residual(A, Z, G, lam, spec)
        np.testing.assert_allclose(res.residual, r1, rtol=1e-8, atol=1e-15, err_msg=str(tag))
        assert np.all(res.residual <= ATOL), tag
        # Dual certificate: ‖λ − λ*‖₁ ≤ r₁ / (1 − max(0, μ∞(A))) since μ₁(Aᵀ D) = μ∞(D A).
        err1 = np.abs(lam - lam_ref).sum(axis=1)
        scale = certificate_scale(A)
        assert np.all(err1 <= res.residual * scale + TINY * scale * (1 + np.abs(lam_ref).sum(axis=1))), tag


@pytest.mark.parametrize("method", ITERATIVE)
def test_adjoint_iterations_within_l1_bound(method, engine):
    """The averaged adjoint map contracts in ℓ1 with the forward factor: from λ0 = 0 the ℓ1
    residual is ‖g‖₁, so k ≤ iteration_bound(ρ, ‖g‖₁, atol) (anderson: 2·bound + 2)."""
    for kind, param, nd in _cases(method):
        A, Z, G = _adjoint_inputs(kind, param, nd, "tanh")
        lam, res = solvers.solve_adjoint(A, Z, G, method=method, activation="tanh", atol=ATOL, engine=engine, record=True)
        rho = contraction.contraction_factor(A, res.alpha, method)
        np.testing.assert_allclose(res.history[0], np.abs(G).sum(axis=1), rtol=1e-12)
        bound = np.array([contraction.iteration_bound(rho, r, ATOL) for r in res.history[0]])
        limit = 2 * bound + 2 if method == "anderson" else bound + 1
        assert res.success and np.all(res.iterations <= limit), (kind, param, nd, res.iterations, limit)
        if method != "anderson":
            h = res.history
            assert np.nanmax(h[1:] - rho * h[:-1]) <= 1e-13


def test_adjoint_direct_matches_dense_solve():
    for spec in ACTIVATION_SPECS:
        A, Z, G = _adjoint_inputs("mu", 0.9, True, spec)
        lam, res = solvers.solve_adjoint(A, Z, G, method="direct", activation=spec, engine="numpy")
        assert res.success
        np.testing.assert_allclose(lam, dense_adjoint(A, Z, G, spec), rtol=1e-12, atol=1e-13)
        np.testing.assert_array_equal(res.iterations, 0)


@pytest.mark.parametrize("method", ITERATIVE)
def test_adjoint_one_dimensional_inputs_keep_shape(method, engine):
    A, Z, G = _adjoint_inputs("norm", 0.5, False, "relu")
    lam, res = solvers.solve_adjoint(A, Z[1], G[1], method=method, atol=ATOL, engine=engine)
    assert lam.shape == (A.shape[0],)
    assert res.converged.shape == (1,) and res.iterations.shape == (1,)
    lam_b, _ = solvers.solve_adjoint(A, Z, G, method=method, atol=ATOL, engine=engine)
    np.testing.assert_allclose(lam, lam_b[1], rtol=1e-12, atol=1e-14)


def test_adjoint_zero_iterations_at_solution(engine):
    A, Z, G = _adjoint_inputs("mu", 0.5, False, "tanh")
    lam_ref = dense_adjoint(A, Z, G, "tanh")
    lam, res = solvers.solve_adjoint(A, Z, G, activation="tanh", lam0=lam_ref, atol=1e-12, engine=engine)
    assert res.success
    np.testing.assert_array_equal(res.iterations, 0)
    np.testing.assert_array_equal(lam, lam_ref)


def test_adjoint_relative_tolerance(engine):
    A, Z, G = _adjoint_inputs("mu", 0.5, True, "relu")
    lam, res = solvers.solve_adjoint(A, Z, G, atol=0.0, rtol=1e-9, engine=engine)
    assert res.success
    assert np.all(res.residual <= 1e-9 * np.abs(lam).sum(axis=1))


# --- finite differences ------------------------------------------------------------------


def _loss_and_grad(A, w, g, spec, engine):
    """L(w) = <g, x*(w)> and the adjoint gradient ∂L/∂w = λ ⊙ σ'(z*)."""
    res = solvers.solve(A, w, activation=spec, atol=1e-14, engine=engine, max_iter=100_000)
    assert res.success
    z = A @ res.x + w
    lam, ares = solvers.solve_adjoint(A, z, g, activation=spec, atol=1e-14, engine=engine, max_iter=100_000)
    assert ares.success
    return res.x, z, lam * dsigma(spec, z)


def _central_differences(A, W_plus, W_minus, g, spec, engine, h):
    xp = solvers.solve(A, W_plus, activation=spec, atol=1e-14, engine=engine, max_iter=100_000)
    xm = solvers.solve(A, W_minus, activation=spec, atol=1e-14, engine=engine, max_iter=100_000)
    assert xp.success and xm.success
    return (xp.x @ g - xm.x @ g) / (2 * h)


@pytest.mark.parametrize("spec", ("tanh", "softplus", "relu", ("leaky_relu", 0.1)), ids=act_id)
@pytest.mark.parametrize("nd", (False, True), ids=("plain", "negdiag"))
def test_adjoint_gradient_wrt_w_matches_finite_differences(spec, nd, engine):
    A, W = problem("mu", 0.9, nd)
    w = W[2]
    g = np.random.default_rng(3).standard_normal(w.shape)
    x, z, v = _loss_and_grad(A, w, g, spec, engine)
    n, h = w.size, 1e-6
    if spec in ("relu", ("leaky_relu", 0.1)):
        # Away from kinks (|δz| is of order h), so the piecewise-linear map is smooth near w.
        assert np.abs(z).min() > 1e3 * h, np.abs(z).min()
    E = h * np.eye(n)
    fd = _central_differences(A, w + E, w - E, g, spec, engine, h)
    np.testing.assert_allclose(v, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("spec", ("tanh", "relu"), ids=act_id)
def test_adjoint_gradient_wrt_A_matches_finite_differences(spec, engine):
    """∂L/∂A = v x*ᵀ (DESIGN.md section 6)."""
    rng = np.random.default_rng(8)
    n = 4
    A = contraction.project_mu_inf(rng.standard_normal((n, n)), 0.5)
    w = rng.uniform(0.5, 1.5, n) * np.sign(rng.standard_normal(n))
    g = rng.standard_normal(n)
    x, z, v = _loss_and_grad(A, w, g, spec, engine)
    if spec == "relu":
        assert np.abs(z).min() > 1e-3
    h = 1e-6
    fd = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            E = np.zeros((n, n))
            E[i, j] = h
            xp = reference_fixed_point(A + E, w, spec)
            xm = reference_fixed_point(A - E, w, spec)
            fd[i, j] = (g @ xp - g @ xm) / (2 * h)
    np.testing.assert_allclose(np.outer(v, x), fd, rtol=1e-6, atol=1e-7)
