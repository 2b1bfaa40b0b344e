"""Every method against a high-accuracy reference on random well-posed instances, and its
iteration count against the bound its contraction factor gives.

The reference (``_solver_helpers.reference_fixed_point``) is independent of the solvers: an
averaged iteration written out here, then Newton polish to a residual ≤ 1e-14.
"""

from __future__ import annotations

import numpy as np
import pytest

import contraction
import solvers
from _solver_helpers import (
    ACTIVATION_SPECS,
    MU_CASES,
    NORM_CASES,
    TINY,
    act_id,
    certificate_scale,
    problem,
    reference,
    reference_fixed_point,
    residual,
    well_posed,
)

ATOL = 1e-9
#: Methods guaranteed on the whole μ∞ family (picard is not: it needs ‖A‖∞ < 1 or a_ii ≥ 0).
MU_METHODS = ("average", "forward_backward", "peaceman_rachford", "douglas_rachford", "anderson")
SPLITTINGS = ("peaceman_rachford", "douglas_rachford")


def _cases(method):
    cases = [("norm", p, nd) for p, nd in NORM_CASES]
    if method != "picard":
        cases += [("mu", p, nd) for p, nd in MU_CASES]
    return cases


def _check_against_reference(A, W, X, res, spec, tag):
    assert res.status == solvers.Status.SUCCESS, (tag, res)
    err = np.abs(res.x - X).max(axis=1)
    scale = certificate_scale(A)
    # The certificate: ‖x − x*‖∞ ≤ r / (1 − max(0, μ∞(A))) (the reference is itself
    # within ~1e-14 · scale of x*).
    np.testing.assert_allclose(res.error_bound, res.residual * scale, rtol=1e-12, err_msg=tag)
    assert np.all(err <= res.error_bound + TINY * scale), (tag, err, res.error_bound)
    # ... and the tolerance: r ≤ atol, so ‖x − x*‖∞ ≤ atol / (1 − max(0, μ)).
    assert np.all(res.residual <= ATOL), tag
    assert np.all(err <= ATOL * scale + TINY * scale), (tag, err)
    # The reported residual is the fixed-point residual of the returned x, up to the
    # rounding of σ(Ax + w) − x: a few ulps of |x| (two BLAS libraries sum A x differently).
    ulps = 4 * np.finfo(np.float64).eps * max(1.0, float(np.abs(res.x).max()))
    np.testing.assert_allclose(res.residual, residual(A, W, res.x, spec), rtol=1e-9, atol=ulps, err_msg=tag)


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
@pytest.mark.parametrize("method", solvers.METHODS)
def test_method_matches_reference(method, spec, engine):
    for kind, param, nd in _cases(method):
        A, W = problem(kind, param, nd)
        X = reference(kind, param, nd, spec)
        res = solvers.solve(A, W, method=method, activation=spec, atol=ATOL, engine=engine, max_iter=20_000)
        _check_against_reference(A, W, X, res, spec, (kind, param, nd))


def _factor(A, res):
    return contraction.contraction_factor(A, res.alpha, res.method)


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
@pytest.mark.parametrize("method", ("picard", "average", "forward_backward", "anderson"))
def test_iterations_within_factor_bound(method, spec, engine):
    """From x0 = 0: ``k ≤ iteration_bound(ρ, r(x0), atol)`` (+1 slack); anderson's safeguard
    accepts an averaged step at least every other iteration, so ``k ≤ 2·bound + 2``."""
    for kind, param, nd in _cases(method):
        A, W = problem(kind, param, nd)
        res = solvers.solve(
            A, W, method=method, activation=spec, atol=ATOL, engine=engine, record=True, max_iter=20_000
        )
        rho = _factor(A, res)
        assert rho < 1.0
        r0 = res.history[0]
        np.testing.assert_allclose(r0, residual(A, W, np.zeros_like(W), spec), rtol=1e-12)
        bound = np.array([contraction.iteration_bound(rho, r, ATOL) for r in r0])
        limit = 2 * bound + 2 if method == "anderson" else bound + 1
        assert res.success and np.all(res.iterations <= limit), (kind, param, nd, res.iterations, limit)


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
@pytest.mark.parametrize("method", SPLITTINGS)
def test_splitting_iterations_within_derived_bound(method, spec, engine):
    """(derived) x_k = prox(u_k) is 1-Lipschitz in u, so with ρ the factor in u:
    ``r(x_k) ≤ (1 + ‖A‖∞) ‖x_k − x*‖∞ ≤ (1 + ‖A‖∞) ρ^k ‖u0 − u*‖∞``, where
    ``u = (1 − α) x + α (A x + w)``; hence k ≤ iteration_bound(ρ, (1 + ‖A‖∞)‖u0 − u*‖, atol)."""
    for kind, param, nd in _cases(method):
        A, W = problem(kind, param, nd)
        X = reference(kind, param, nd, spec)
        res = solvers.solve(A, W, method=method, activation=spec, atol=ATOL, engine=engine, record=True)
        rho, a = _factor(A, res), res.alpha
        assert rho < 1.0, (kind, param, nd, rho)  # (derived) ℓ∞ guarantee for α ≤ 1/(1 − a_min)
        u0 = a * W  # x0 = 0
        u_star = (1 - a) * X + a * (X @ A.T + W)
        lip = 1.0 + contraction.induced_norm(A, np.inf)
        e0 = np.abs(u0 - u_star).max(axis=1)
        bound = np.array([contraction.iteration_bound(rho, lip * e, ATOL) for e in e0])
        assert res.success and np.all(res.iterations <= bound + 1), (kind, param, nd, res.iterations, bound)
        # And the residual history stays under the geometric envelope all the way.
        k = np.arange(res.history.shape[0])[:, None]
        envelope = lip * e0[None, :] * rho**k
        assert np.all(np.nan_to_num(res.history, nan=0.0) <= envelope * (1 + 1e-9) + TINY)


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
def test_average_residual_contracts_every_step(spec, engine):
    """``r(x_{k+1}) ≤ ρ r(x_k)``: the averaged map is ρ-Lipschitz in ℓ∞ for α ≤ α*."""
    for kind, param, nd in _cases("average"):
        A, W = problem(kind, param, nd)
        res = solvers.solve(A, W, method="average", activation=spec, atol=1e-12, engine=engine, record=True)
        rho = _factor(A, res)
        if kind == "mu":
            # The closed form of DESIGN.md section 4 at α*.
            mu = contraction.mu_inf(A)
            np.testing.assert_allclose(rho, 1 - res.alpha * (1 - max(0.0, mu)), rtol=1e-12)
        h = res.history
        excess = h[1:] - rho * h[:-1]
        assert np.nanmax(excess) <= 1e-14, (kind, param, nd, np.nanmax(excess))


@pytest.mark.parametrize("spec", ("relu", "tanh"))
@pytest.mark.parametrize("method", MU_METHODS)
def test_relative_tolerance(method, spec, engine):
    """With atol = 0 the rule is r ≤ rtol ‖x‖∞."""
    A, W = problem("mu", 0.5, True)
    W = W + 3.0  # keep ‖x‖∞ away from 0
    res = solvers.solve(A, W, method=method, activation=spec, atol=0.0, rtol=1e-8, engine=engine)
    assert res.success
    assert np.all(res.residual <= 1e-8 * np.abs(res.x).max(axis=1))
    assert np.all(res.residual > 0)  # the rule stopped it, not an exact hit


@pytest.mark.parametrize("method", ("average", "forward_backward", "anderson") + SPLITTINGS)
def test_smaller_alpha_is_still_guaranteed(method, engine):
    """Any α ∈ (0, α*] keeps the guarantee (no warning) and reaches the same fixed point."""
    A, W = problem("mu", 0.9, True)
    X = reference("mu", 0.9, True, "relu")
    alpha = 0.5 * contraction.optimal_alpha(A, method)
    res = solvers.solve(A, W, method=method, alpha=alpha, atol=ATOL, engine=engine, max_iter=20_000)
    assert res.alpha == alpha
    _check_against_reference(A, W, X, res, "relu", method)


def test_forward_backward_beats_average_when_mu_negative(engine):
    """(derived) FB's factor 1 − α(1 − μ) is below average's 1 − α(1 − max(0, μ)) when μ < 0
    (here FB saves a single iteration in all)."""
    A, W = problem("mu", -2.0, True)
    avg = solvers.solve(A, W, method="average", atol=ATOL, engine=engine)
    fb = solvers.solve(A, W, method="forward_backward", atol=ATOL, engine=engine)
    assert contraction.contraction_factor(A, fb.alpha, "forward_backward") < contraction.contraction_factor(
        A, avg.alpha, "average"
    )
    assert fb.iterations.sum() < avg.iterations.sum()


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
def test_weighted_well_posed_instance(spec, engine):
    """A = diag(d) A0 diag(d)⁻¹ has μ∞(A) ≫ 1 but μ∞,d(A) = μ∞(A0) < 1: every method except
    picard is still guaranteed (no warning), and the weighted error bound is a certificate."""
    rng = np.random.default_rng(2)
    A0 = well_posed(rng, 6, 0.8, True)
    d = np.exp(rng.uniform(-2, 2, 6))
    A = np.diag(d) @ A0 @ np.diag(1 / d)
    assert contraction.mu_inf(A) > 1 and contraction.mu_inf(A, d) < 1
    W = rng.standard_normal((4, 6))
    X = reference_fixed_point(A, W, spec)
    for method in MU_METHODS:
        res = solvers.solve(A, W, method=method, activation=spec, atol=ATOL, engine=engine, max_iter=20_000)
        assert res.success, method
        err = np.abs(res.x - X).max(axis=1)
        assert np.all(np.isfinite(res.error_bound))
        assert np.all(err <= res.error_bound + 1e-12), method


@pytest.mark.parametrize("spec", ("relu", "tanh"))
def test_picard_guaranteed_with_nonnegative_diagonal(spec, engine):
    """α* = 1 when every a_ii ≥ 0: picard is then the averaged iteration, guaranteed under
    μ∞(A) < 1 (which equals ‖A‖∞ for a nonnegative diagonal)."""
    rng = np.random.default_rng(9)
    G = rng.standard_normal((8, 8))
    G[np.diag_indices(8)] = np.abs(G[np.diag_indices(8)]) + 0.2
    A = contraction.project_norm_inf(G, 0.9)  # soft-thresholding keeps the signs
    assert np.diagonal(A).min() >= 0
    np.testing.assert_allclose(contraction.induced_norm(A, np.inf), contraction.mu_inf(A), rtol=1e-12)
    assert np.count_nonzero(A) > 16
    W = rng.standard_normal((3, 8))
    X = reference_fixed_point(A, W, spec)
    res = solvers.solve(A, W, method="picard", activation=spec, atol=ATOL, engine=engine, max_iter=20_000)
    _check_against_reference(A, W, X, res, spec, "picard")


@pytest.mark.parametrize("memory", (1, 2, 5, 20))
def test_anderson_memory(memory, engine):
    for kind, param, nd in (("mu", 0.9, True), ("mu", 0.99, False)):
        A, W = problem(kind, param, nd)
        X = reference(kind, param, nd, "tanh")
        res = solvers.solve(A, W, method="anderson", memory=memory, activation="tanh", atol=ATOL, engine=engine)
        _check_against_reference(A, W, X, res, "tanh", (memory, kind, param, nd))


def test_activation_object_equals_spec(engine):
    A, W = problem("mu", 0.5, True)
    a = solvers.solve(A, W, activation=solvers.Activation("leaky_relu", 0.2), engine=engine)
    b = solvers.solve(A, W, activation=("leaky_relu", 0.2), engine=engine)
    c = solvers.solve(A, W, activation=solvers.get_activation(("leaky_relu", 0.2)), engine=engine)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.x, c.x)
    assert a.activation == "leaky_relu"
