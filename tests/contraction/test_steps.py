"""Step sizes, contraction factors on sampled Jacobians, iteration and error bounds."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import contraction as c
from _contraction_helpers import (
    ACTIVATIONS,
    PROPERTY,
    averaged_fixed_point,
    inf_norm,
    random_matrix,
    random_weights,
    relu,
    seeds,
    sizes,
    small_sizes,
    vertices,
)

SPLITTINGS = ("forward_backward", "peaceman_rachford", "douglas_rachford")


def _alpha_star(A):
    return 1.0 / (1.0 - min(0.0, float(np.diagonal(A).min())))


def _alpha_split(A):
    a_min = float(np.diagonal(A).min())
    return 1.0 / (1.0 - a_min) if a_min < 1.0 else 1.0


def _jacobian(A, d, alpha, method):
    """The Jacobian of one step of ``method`` at ``D = diag(d)``, written from DESIGN.md."""
    n = A.shape[0]
    I = np.eye(n)
    D = np.diag(d)
    if method in ("average", "picard", "anderson"):
        return (1 - alpha) * I + alpha * D @ A
    if method == "forward_backward":
        return D @ ((1 - alpha) * I + alpha * A)
    M = (1 + alpha) * I - alpha * A
    PR = (2 * np.linalg.inv(M) - I) @ (2 * D - I)
    return PR if method == "peaceman_rachford" else 0.5 * (I + PR)


def _contractive(rng, n, gamma=None, weighted=False, neg_diag=None):
    """A with μ∞,η(A) ≤ γ < 1 by projection (γ random in [-2, 0.99] unless given)."""
    neg = bool(rng.integers(2)) if neg_diag is None else neg_diag
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1, 1.5))), neg_diag=neg)
    eta = random_weights(rng, n) if weighted else None
    gamma = float(rng.uniform(-2.0, 0.99)) if gamma is None else gamma
    return c.project_mu_inf(A, gamma, eta), eta


# ---------------------------------------------------------------------------------------
# optimal_alpha
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "diag, expected",
    [
        ([0.5, 0.2], {"average": 1.0, "anderson": 1.0, "picard": 1.0, "split": 1.25}),
        ([0.0, 0.3], {"average": 1.0, "anderson": 1.0, "picard": 1.0, "split": 1.0}),
        ([-3.0, 1.0], {"average": 0.25, "anderson": 0.25, "picard": 1.0, "split": 0.25}),
        ([-1.0, -0.5], {"average": 0.5, "anderson": 0.5, "picard": 1.0, "split": 0.5}),
        ([1.0, 2.0], {"average": 1.0, "anderson": 1.0, "picard": 1.0, "split": 1.0}),
    ],
)
def test_optimal_alpha_closed_forms(diag, expected):
    A = np.diag(diag) + np.array([[0.0, 7.0], [-3.0, 0.0]])  # off-diagonal entries are irrelevant
    for method in c.METHODS:
        key = "split" if method in SPLITTINGS else method
        assert c.optimal_alpha(A, method) == pytest.approx(expected[key], rel=1e-15)


def test_optimal_alpha_default_method_is_average():
    A = np.diag([-4.0, 0.0])
    assert c.optimal_alpha(A) == c.optimal_alpha(A, "average") == 0.2


@PROPERTY
@given(seed=seeds, n=sizes)
def test_optimal_alpha_random(seed, n):
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, 2.0, neg_diag=bool(rng.integers(2)))
    assert c.optimal_alpha(A, "average") == pytest.approx(_alpha_star(A), rel=1e-15)
    assert c.optimal_alpha(A, "anderson") == c.optimal_alpha(A, "average")
    assert c.optimal_alpha(A, "picard") == 1.0
    for m in SPLITTINGS:
        alpha = c.optimal_alpha(A, m)
        assert alpha == pytest.approx(_alpha_split(A), rel=1e-15)
        # the largest step keeping every (1 − α) + α a_ii ≥ 0
        assert np.all((1 - alpha) + alpha * np.diagonal(A) >= -1e-12)
    assert 0 < c.optimal_alpha(A) <= 1


def test_resolvent_matrix():
    A = np.array([[1.0, 2.0], [3.0, -4.0]])
    np.testing.assert_allclose(c.resolvent_matrix(A, 0.5), np.array([[1.0, -1.0], [-1.5, 3.5]]))


# ---------------------------------------------------------------------------------------
# contraction_factor against sampled Jacobians
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", c.METHODS)
@PROPERTY
@given(seed=seeds, n=small_sizes, weighted=st.booleans())
def test_factor_is_sup_over_sampled_jacobians(method, seed, n, weighted):
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1.5, 1.5))), neg_diag=bool(rng.integers(2)))
    eta = random_weights(rng, n) if weighted else None
    if method == "picard":
        alpha = 1.0
    else:
        base = c.optimal_alpha(A, method)
        alpha = float(base * np.exp(rng.uniform(-2.0, 1.0)))  # inside and outside the guaranteed range
    factor = c.contraction_factor(A, alpha, method, eta=eta)
    tol = 1e-10 * max(1.0, factor)
    for d in rng.uniform(0.0, 1.0, (100, n)):
        assert inf_norm(_jacobian(A, d, alpha, method), eta) <= factor + tol
    at_vertices = max(inf_norm(_jacobian(A, d, alpha, method), eta) for d in vertices(n))
    assert at_vertices == pytest.approx(factor, abs=tol)


def _instance(rng, n, weighted):
    """``(A, η)``: a random matrix of random scale, self-loops perhaps strongly negative, and
    random weights or ``None``."""
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1.5, 1.5))), neg_diag=bool(rng.integers(2)))
    return A, (random_weights(rng, n) if weighted else None)


@PROPERTY
@given(seed=seeds, n=small_sizes, weighted=st.booleans())
def test_per_unit_factor_is_sup_over_sampled_jacobians(seed, n, weighted):
    rng = np.random.default_rng(seed)
    A, eta = _instance(rng, n, weighted)
    # per-unit steps inside and outside each row's guaranteed range
    alpha = c.optimal_alpha(A, per_unit=True) * np.exp(rng.uniform(-2.0, 1.0, n))
    factor = c.contraction_factor(A, alpha, "average", eta=eta)
    tol = 1e-10 * max(1.0, factor)

    def jacobian(d):
        return np.diag(1 - alpha) + np.diag(alpha * d) @ A

    for d in rng.uniform(0.0, 1.0, (100, n)):
        assert inf_norm(jacobian(d), eta) <= factor + tol
    assert max(inf_norm(jacobian(d), eta) for d in vertices(n)) == pytest.approx(factor, abs=tol)


@PROPERTY
@given(seed=seeds, n=sizes, weighted=st.booleans())
def test_optimal_per_unit_steps(seed, n, weighted):
    A, eta = _instance(np.random.default_rng(seed), n, weighted)
    steps = c.optimal_alpha(A, per_unit=True)
    np.testing.assert_allclose(steps, 1 / (1 - np.minimum(0, np.diagonal(A))), rtol=1e-15)
    assert steps.min() == pytest.approx(c.optimal_alpha(A), rel=1e-15)
    # each row's own closed form
    S = np.diag(1 / eta) @ A @ np.diag(eta) if weighted else A
    mu_rows = np.diagonal(S) + np.abs(S).sum(axis=1) - np.abs(np.diagonal(S))
    factor = c.contraction_factor(A, steps, "average", eta)
    assert factor == pytest.approx(float((1 - steps * (1 - np.maximum(0, mu_rows))).max()), abs=1e-12)
    if c.mu_inf(A, eta) <= 1:  # well-posed: never above the single step's factor
        assert factor <= c.contraction_factor(A, None, "average", eta) + 1e-12
    # a contracting row's factor decreases in its own step up to 1/(1 − min(0, a_ii))
    for i in range(n if factor < 1 else 0):
        shorter = steps.copy()
        shorter[i] *= 0.5
        assert c.contraction_factor(A, shorter, "average", eta) >= factor - 1e-12


def test_per_unit_steps_reject_bad_input():
    A = np.array([[-1.0, 0.5], [0.2, 0.3]])
    # rows: max(|1 − 0.5|, |1 − 0.5 − 0.5| + 0.25) = 0.5 and max(0, |0.3| + 0.2) = 0.5
    assert c.contraction_factor(A, np.array([0.5, 1.0])) == pytest.approx(0.5)
    assert c.contraction_factor(A, np.array([0.25, 1.0])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="method='average' only"):
        c.optimal_alpha(A, "forward_backward", per_unit=True)
    with pytest.raises(ValueError, match="method='average' only"):
        c.contraction_factor(A, np.ones(2), "peaceman_rachford")
    with pytest.raises(ValueError, match=r"one step per unit \(2 entries\), got 3"):
        c.contraction_factor(A, np.ones(3))
    with pytest.raises(ValueError, match="finite positive"):
        c.contraction_factor(A, np.array([0.5, 0.0]))
    with pytest.raises(ValueError, match="finite positive"):
        c.contraction_factor(A, np.array([0.5, np.nan]))


def test_factor_default_alpha_is_optimal_alpha():
    rng = np.random.default_rng(5)
    A, eta = _contractive(rng, 5, weighted=True, neg_diag=True)
    for method in c.METHODS:
        assert c.contraction_factor(A, None, method, eta) == c.contraction_factor(
            A, c.optimal_alpha(A, method), method, eta
        )
    # picard ignores alpha; anderson reports the averaged step's factor
    assert c.contraction_factor(A, 0.3, "picard") == c.contraction_factor(A, 1.0, "average")
    assert c.contraction_factor(A, 0.3, "anderson", eta) == c.contraction_factor(A, 0.3, "average", eta)


@PROPERTY
@given(seed=seeds, n=sizes, weighted=st.booleans(), frac=st.floats(1e-3, 1.0))
def test_average_closed_form(seed, n, weighted, frac):
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1.5, 1.5))), neg_diag=bool(rng.integers(2)))
    eta = random_weights(rng, n) if weighted else None
    mu = c.mu_inf(A, eta)
    alpha = frac * _alpha_star(A)
    expected = 1 - alpha * (1 - max(0.0, mu))
    assert c.contraction_factor(A, alpha, "average", eta) == pytest.approx(expected, abs=1e-12 * max(1, abs(mu)))
    if mu < 1:
        # the factor decreases in α on (0, α*], so α* is the best guaranteed step
        assert c.contraction_factor(A, None, "average", eta) <= c.contraction_factor(A, alpha, "average", eta) + 1e-12


@PROPERTY
@given(seed=seeds, n=sizes, weighted=st.booleans(), frac=st.floats(1e-3, 1.0))
def test_forward_backward_closed_form(seed, n, weighted, frac):
    # DESIGN (derived): factor 1 − α(1 − μ) for α ∈ (0, 1/(1 − a_min)], no positive part.
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1.5, 1.5))), neg_diag=bool(rng.integers(2)))
    eta = random_weights(rng, n) if weighted else None
    a_min = float(np.diagonal(A).min())
    if a_min >= 1:
        A = A - (a_min + 0.5) * np.eye(n)
        a_min = -0.5
    mu = c.mu_inf(A, eta)
    alpha = frac / (1 - a_min)
    expected = 1 - alpha * (1 - mu)
    assert c.contraction_factor(A, alpha, "forward_backward", eta) == pytest.approx(
        expected, abs=1e-12 * max(1, abs(mu))
    )
    # it beats the averaged iteration at the same step exactly when μ < 0
    avg = c.contraction_factor(A, min(alpha, _alpha_star(A)), "average", eta)
    if mu < 0 and alpha <= _alpha_star(A):
        assert c.contraction_factor(A, alpha, "forward_backward", eta) < avg


def test_forward_backward_beats_average_on_negative_diagonal():
    A = np.array([[-4.0, 1.0], [0.5, -3.0]])  # μ∞ = -2.5, a_min = -4
    mu = -2.5
    assert c.contraction_factor(A, method="average") == pytest.approx(1 - 0.2)  # 1 − α*(1 − 0)
    assert c.contraction_factor(A, method="forward_backward") == pytest.approx(1 - 0.2 * (1 - mu))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("neg_diag", [False, True])
def test_splittings_contract_in_linf_under_nemon(weighted, neg_diag):
    # DESIGN (derived): PR and DR contract in ℓ∞,η for α ≤ 1/(1 − a_min) when μ∞,η(A) < 1.
    # Proof behind the test: 2M⁻¹ − I = M⁻¹((1 − α)I + αA), ‖M⁻¹‖ ≤ 1/(1 + α(1 − μ)) and, on
    # this step range, ‖(1 − α)I + αA‖ = 1 − α(1 − μ); so the factor is at most
    # (1 − α(1 − μ)) / (1 + α(1 − μ)) < 1. This holds on every instance below.
    rng = np.random.default_rng(100 + 2 * weighted + neg_diag)
    for _ in range(400):
        n = int(rng.integers(1, 9))
        A, eta = _contractive(rng, n, weighted=weighted, neg_diag=neg_diag)
        mu = c.mu_inf(A, eta)
        assert mu < 1
        a_min = float(np.diagonal(A).min())
        limit = 1.0 / (1.0 - a_min)
        for alpha in (limit, limit * rng.uniform(0, 1), limit * rng.uniform(0, 1) ** 4):
            pr = c.contraction_factor(A, alpha, "peaceman_rachford", eta)
            dr = c.contraction_factor(A, alpha, "douglas_rachford", eta)
            q = alpha * (1 - mu)
            assert pr <= (1 - q) / (1 + q) + 1e-12
            assert pr < 1 and dr < 1
            assert dr == pytest.approx(0.5 * (1 + pr), abs=1e-15)


def test_splitting_step_range_is_needed_for_linf():
    # Beyond α = 1/(1 − a_min) the ℓ∞ guarantee is lost even with μ∞(A) = 0.5.
    A = np.array([[0.0, -0.5], [-2.0, -1.5]])
    assert c.mu_inf(A) == 0.5 and c.optimal_alpha(A, "peaceman_rachford") == pytest.approx(0.4)
    # α = 2: M = [[3, 1], [4, 6]], 2M⁻¹ − I = [[-1, -1], [-4, -4]]/7
    assert c.contraction_factor(A, 2.0, "peaceman_rachford") == pytest.approx(8 / 7, rel=1e-14)
    assert c.contraction_factor(A, 2.0, "douglas_rachford") == pytest.approx(15 / 14, rel=1e-14)
    assert c.contraction_factor(A, 0.4, "peaceman_rachford") < 1


@PROPERTY
@given(seed=seeds, n=sizes, log_alpha=st.floats(-4.0, 4.0))
def test_reflected_resolvent_is_ell2_contraction_under_mon(seed, n, log_alpha):
    # DESIGN: PR/DR are guaranteed in ℓ2 under mon for any α > 0: with F = I − A strongly
    # monotone, ‖(I − αF)y‖² − ‖(I + αF)y‖² = −4α yᵀFy < 0, so ‖2M⁻¹ − I‖₂ < 1.
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1, 1.5))))
    A -= (c.mu_2(A) - rng.uniform(-3.0, 0.99)) * np.eye(n)
    assert c.mu_2(A) < 1
    alpha = float(np.exp(log_alpha))
    M = c.resolvent_matrix(A, alpha)
    K = 2 * np.linalg.inv(M) - np.eye(n)
    m = 1 - c.mu_2(A)
    assert np.linalg.norm(K, 2) < 1
    # quantitatively: ‖K‖₂² ≤ 1 − 4αm / ‖M‖₂²
    assert np.linalg.norm(K, 2) ** 2 <= 1 - 4 * alpha * m / np.linalg.norm(M, 2) ** 2 + 1e-12
    # and the PR map u ↦ K(2D − I)u is nonexpansive in ℓ2 for every slope pattern
    for d in rng.uniform(0, 1, (20, n)):
        assert np.linalg.norm(K @ (2 * np.diag(d) - np.eye(n)), 2) <= 1 + 1e-12


# ---------------------------------------------------------------------------------------
# iteration_bound
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factor, r0, tol, expected",
    [
        (0.5, 1.0, 0.25, 2),
        (0.5, 1.0, 0.3, 2),
        (0.5, 1.0, 0.2, 3),
        (0.9, 1.0, 1e-8, 175),  # log(1e-8)/log(0.9) = 174.8
        (0.1, 10.0, 2e-6, 7),  # 10·0.1⁷ = 1e-6 ≤ 2e-6 < 10·0.1⁶
        (0.5, 1.0, 1.0, 0),  # already within tolerance
        (0.5, 0.0, 1e-12, 0),
        (0.99, 1e-9, 1e-8, 0),
        (1.0, 1.0, 0.5, math.inf),
        (1.5, 1.0, 0.5, math.inf),
        (0.0, 1.0, 0.5, 1),
    ],
)
def test_iteration_bound_closed_forms(factor, r0, tol, expected):
    assert c.iteration_bound(factor, r0, tol) == expected


@PROPERTY
@given(
    factor=st.floats(1e-6, 1 - 1e-6),
    r0=st.floats(1e-8, 1e8),
    tol=st.floats(1e-12, 1e2),
)
def test_iteration_bound_is_minimal(factor, r0, tol):
    k = c.iteration_bound(factor, r0, tol)
    assert isinstance(k, int)
    assert factor**k * r0 <= tol * (1 + 1e-9)
    if k > 0:
        assert factor ** (k - 1) * r0 > tol * (1 - 1e-9)


@pytest.mark.parametrize("weighted", [False, True])
@PROPERTY
@given(seed=seeds, n=sizes, frac=st.floats(0.2, 1.0))
def test_averaged_trajectory_within_iteration_bound(weighted, seed, n, frac):
    rng = np.random.default_rng(seed)
    A, eta = _contractive(rng, n, weighted=weighted)
    w = rng.standard_normal(n) * 2
    scale = np.ones(n) if eta is None else eta
    alpha = frac * _alpha_star(A)
    factor = c.contraction_factor(A, alpha, "average", eta)
    assert factor < 1

    def residual(x):
        return float(np.max(np.abs(relu(A @ x + w) - x) / scale))

    x = np.zeros(n)
    r0 = residual(x)
    tol = max(1e-9, 1e-6 * r0)
    bound = c.iteration_bound(factor, r0, tol)
    r = r0
    for k in range(bound + 1):
        r = residual(x)
        # r(x_k) ≤ ρ^k r(x0), tight when the worst row stays active: rounding over hundreds of
        # steps puts r a few 1e-9 (relative) above it (seeds 2274130095 and 1554719317, n 3 and 6).
        assert r <= factor**k * r0 * (1 + 1e-7) + 1e-14
        if r <= tol:
            break
        x = (1 - alpha) * x + alpha * relu(A @ x + w)
    assert r <= tol, (k, bound)


# ---------------------------------------------------------------------------------------
# error_bound
# ---------------------------------------------------------------------------------------


def test_error_bound_closed_forms():
    A = np.array([[-1.0, 0.5], [0.25, 0.5]])  # μ∞ = 0.75
    assert c.error_bound(A, 1e-3) == pytest.approx(4e-3)
    B = np.array([[-1.0, 0.5], [0.25, -0.5]])  # μ∞ = -0.25: no gain from μ < 0 in this form
    assert c.error_bound(B, 1e-3) == pytest.approx(1e-3)
    assert c.error_bound(A, 0.0) == 0.0
    out = c.error_bound(A, [1e-3, 2e-3])
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, [4e-3, 8e-3])
    assert isinstance(c.error_bound(A, 1e-3), float)
    assert c.error_bound(np.array([[1.0]]), 1e-3) == math.inf
    assert np.all(np.isinf(c.error_bound(np.array([[0.5, 0.7], [0.0, 0.0]]), [1.0, 2.0])))
    # weighted: η = (1, 4) gives rows -1 + 0.5·4 = 1 ≥ 1 → no certificate
    assert c.error_bound(A, 1e-3, eta=[1.0, 4.0]) == math.inf


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
@PROPERTY
@given(seed=seeds, n=sizes)
def test_error_bound_holds_along_trajectories(activation, weighted, seed, n):
    rng = np.random.default_rng(seed)
    act = ACTIVATIONS[activation]
    A, eta = _contractive(rng, n, gamma=float(rng.uniform(-3.0, 0.9)), weighted=weighted)
    w = rng.standard_normal(n) * 2
    scale = np.ones(n) if eta is None else eta
    x_star = averaged_fixed_point(A, w, act, tol=1e-14)
    # iterates of a deliberately slow averaged iteration from a random start
    x = rng.standard_normal(n) * 3
    alpha = 0.3 * _alpha_star(A)
    for _ in range(60):
        r = float(np.max(np.abs(act(A @ x + w) - x) / scale))
        err = float(np.max(np.abs(x - x_star) / scale))
        assert err <= c.error_bound(A, r, eta) * (1 + 1e-9) + 1e-12
        x = (1 - alpha) * x + alpha * act(A @ x + w)


# ---------------------------------------------------------------------------------------
# local_rate: the spectral radius of the step's Jacobian at an equilibrium
# ---------------------------------------------------------------------------------------


def _steps(rng, A, per_unit):
    """α* or the per-unit steps, sometimes shortened (any positive step is allowed)."""
    if per_unit:
        return c.optimal_alpha(A, per_unit=True) * np.exp(rng.uniform(-1.0, 0.0, A.shape[0]))
    return float(c.optimal_alpha(A) * np.exp(rng.uniform(-1.0, 0.0)))


def _slopes(rng, batch, n):
    """Slopes in [0, 1], about a third of them exactly 0 (inactive ReLU units)."""
    return rng.uniform(0.0, 1.0, (batch, n)) * (rng.random((batch, n)) > 0.3)


@PROPERTY
@given(seed=seeds, n=small_sizes, per_unit=st.booleans())
def test_local_rate_is_the_spectral_radius_of_the_jacobian(seed, n, per_unit):
    rng = np.random.default_rng(seed)
    A, _ = _instance(rng, n, False)
    alpha = _steps(rng, A, per_unit)
    d = _slopes(rng, 3, n)
    rates = c.local_rate(A, d, alpha, iterations=4000)
    steps = alpha * np.ones(n)
    for di, rate in zip(d, rates):
        J = np.diag(1 - steps) + np.diag(steps * di) @ A
        on = di > 0  # units of slope 0 only decay, by |1 − α_i|: J is block triangular
        np.testing.assert_array_equal(J[~on][:, ~on], np.diag(1 - steps[~on]))
        np.testing.assert_array_equal(J[~on][:, on], 0)
        rho = float(np.abs(np.linalg.eigvals(J[on][:, on])).max()) if on.any() else 0.0
        assert rate == pytest.approx(rho, rel=5e-3, abs=1e-6)


@PROPERTY
@given(seed=seeds, n=sizes, per_unit=st.booleans())
def test_local_rate_never_exceeds_the_factor(seed, n, per_unit):
    rng = np.random.default_rng(seed)
    A, _ = _instance(rng, n, False)
    alpha = c.optimal_alpha(A, per_unit=True) * np.exp(rng.uniform(-2.0, 1.0, n)) if per_unit else \
        float(c.optimal_alpha(A) * np.exp(rng.uniform(-2.0, 1.0)))  # inside and outside the step range
    rates = c.local_rate(A, _slopes(rng, 4, n), alpha, iterations=int(rng.integers(2, 60)))
    assert np.all(rates >= 0)
    assert np.all(rates <= c.contraction_factor(A, alpha) * (1 + 1e-12))


def test_local_rate_closed_forms():
    A = np.array([[-1.0, -1.9], [-0.9, -1.0]])  # mutual inhibition: μ∞ = 0.9, α* = 1/2
    # Both units active, α = 1/2: J = [[0, −0.95], [−0.45, 0]], eigenvalues ±√(0.95 · 0.45).
    assert c.local_rate(A, np.ones(2)) == pytest.approx(math.sqrt(0.95 * 0.45), rel=1e-12)
    assert c.contraction_factor(A) == pytest.approx(0.95)
    # Unit 1 inactive: its error decays by 1 − α on its own; unit 0 alone has J_00 = 1 − α + α a_00 = 0.
    assert c.local_rate(A, np.array([1.0, 0.0])) == 0.0
    assert c.local_rate(A, np.array([1.0, 0.0]), 0.25) == pytest.approx(0.5, rel=1e-12)  # 1 − 0.25 − 0.25
    # No unit active: nothing is coupled.
    assert c.local_rate(A, np.zeros((3, 2)), np.array([0.5, 0.25])).tolist() == [0.0, 0.0, 0.0]
    # Slopes 1/2: J = (1 − α) I + α diag(1/2) A = I/2 + A/4.
    J = 0.5 * np.eye(2) + 0.5 * 0.5 * A
    assert c.local_rate(A, np.full(2, 0.5), iterations=1000) == pytest.approx(
        float(np.abs(np.linalg.eigvals(J)).max()), rel=1e-9)
    out = c.local_rate(A, np.ones((2, 2)))
    assert isinstance(out, np.ndarray) and out.shape == (2,)
    assert isinstance(c.local_rate(A, np.ones(2)), float)


@pytest.mark.parametrize("padding", ["circular", "zeros"])
def test_local_rate_of_a_convolution_is_that_of_its_matrix(padding):
    rng = np.random.default_rng(3)
    C, H, W = 2, 4, 5
    op = c.project_mu_inf(c.Conv2d(rng.standard_normal((C, C, 3, 3)) * 0.4, (H, W), padding), 0.9)
    M = op.to_dense()
    d = _slopes(rng, 3, op.n)
    per_channel = c.optimal_alpha(op, per_unit=True)
    assert per_channel.shape == (C,)
    for alpha, dense_alpha in [(None, None), (0.3, 0.3), (per_channel, np.repeat(per_channel, H * W)),
                               (np.repeat(per_channel, H * W), np.repeat(per_channel, H * W))]:
        np.testing.assert_allclose(c.local_rate(op, d, alpha), c.local_rate(M, d, dense_alpha), rtol=1e-10)
    # another implementation of the same product gives the same rates
    np.testing.assert_allclose(c.local_rate(op, d, per_channel, product=lambda V: V @ M.T),
                               c.local_rate(op, d, per_channel), rtol=1e-10)


def test_local_rate_rejects_bad_input():
    A = np.array([[-1.0, 0.5], [0.2, 0.3]])
    for slopes, match in [(np.ones(3), r"slopes must have shape \(2,\) or \(batch, 2\).*got \(3,\)"),
                          (np.ones((1, 2, 2)), r"got \(1, 2, 2\)"),
                          (np.array([0.5, 1.5]), r"slopes must be finite and in \[0, 1\]"),
                          (np.array([-0.1, 1.0]), r"in \[0, 1\]"),
                          (np.array([np.nan, 1.0]), r"finite"),
                          ("ab", r"slopes must be an array")]:
        with pytest.raises(ValueError, match=match):
            c.local_rate(A, slopes)
    for iterations in (1, 0, 2.5, True, "10"):
        with pytest.raises(ValueError, match=r"iterations must be an integer >= 2"):
            c.local_rate(A, np.ones(2), iterations=iterations)
    for seed in (-1, 0.5, None):
        with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
            c.local_rate(A, np.ones(2), seed=seed)
    with pytest.raises(ValueError, match=r"one step per unit \(2 entries\), got 3"):
        c.local_rate(A, np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match=r"alpha must be"):
        c.local_rate(A, np.ones(2), 0.0)
    with pytest.raises(ValueError, match=r"product must be a callable V -> V A\^T"):
        c.local_rate(A, np.ones(2), product=A)
    with pytest.raises(ValueError, match="square operator"):
        c.local_rate(c.Conv2d(np.zeros((2, 1, 3, 3)), (4, 4)), np.ones(16))
