"""Constraints on the implicit layer's matrix: feasibility of init, exact chain rule of the
parametrisations (finite differences), the certificates they promise (property tests), the
projections, validation; and the Lipschitz penalty with its subgradient."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import contraction
from solvers.training import CONSTRAINTS, Constraint, lipschitz_penalty, make_constraint
from _training_helpers import central_difference

GAMMAS = (-0.5, 0.0, 0.5, 0.9)
#: Slack for round-off in computed inequalities.
TINY = 1e-10


#: Constraints whose raw parameters are trainable (``zero`` freezes A = 0: no chain rule).
TRAINABLE = [name for name in CONSTRAINTS if name != "zero"]


def random_raw(con: Constraint, rng, n):
    """Generic raw parameters of ``con`` (same keys and shapes as its ``init``; not
    necessarily feasible before projection)."""
    raw = con.init(0.1 * rng.standard_normal((n, n)), np.random.default_rng(0))
    return {k: rng.standard_normal(v.shape) for k, v in raw.items()}




# -- init and feasibility -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONSTRAINTS))
@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9])
def test_init_satisfies_the_constraint(name, gamma, rng):
    con = make_constraint(name, gamma)
    for n, scale in ((1, 1.0), (6, 0.1), (6, 3.0)):
        A0 = scale * rng.standard_normal((n, n))
        raw = con.init(A0, np.random.default_rng(1))
        A = con.matrix(raw)
        assert A.shape == (n, n) and A.dtype == A0.dtype
        assert con.violation(A, raw) is None, (name, gamma, n, scale)
        if name != "none":
            assert con.violation(A) is None  # also without the raw weights (optimal weights)


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_init_does_not_alias_the_initial_matrix(name, rng):
    con = make_constraint(name, 0.5)
    A0 = rng.standard_normal((4, 4))
    before = A0.copy()
    raw = con.init(A0, np.random.default_rng(0))
    for v in raw.values():
        v += 1.0
    np.testing.assert_array_equal(A0, before)


def test_init_keeps_a_feasible_matrix_for_projected_constraints(rng):
    A0 = contraction.project_mu_inf(rng.standard_normal((5, 5)), 0.3)
    con = make_constraint("mu_inf", 0.5)
    np.testing.assert_array_equal(con.matrix(con.init(A0, rng)), A0)
    np.testing.assert_array_equal(make_constraint("none").init(A0, rng)["A"], A0)


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_init_is_float32_for_float32_matrices(name, rng):
    con = make_constraint(name, 0.5)
    A0 = (0.1 * rng.standard_normal((5, 5))).astype(np.float32)
    raw = con.init(A0, np.random.default_rng(0))
    assert all(v.dtype == np.float32 for v in raw.values())
    assert con.matrix(raw).dtype == np.float32


# -- chain rule -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TRAINABLE)
@pytest.mark.parametrize("seed", [0, 1])
def test_pullback_is_the_exact_chain_rule(name, seed):
    """``pullback(raw, gA)`` is the gradient of ``L(raw) = <gA, matrix(raw)>``."""
    rng = np.random.default_rng(seed)
    con = make_constraint(name, 0.7)
    n = 5
    raw = random_raw(con, rng, n)
    if name == "nemon_param":
        # |T| has a kink at 0: keep the entries away from it (FD steps are 1e-6).
        raw["T"] += np.sign(raw["T"]) * 0.05
    gA = rng.standard_normal((n, n))
    grads = con.pullback(raw, gA)
    assert set(grads) == set(raw)

    def L():
        return float(np.sum(gA * con.matrix(raw)))

    for key, P in raw.items():
        assert grads[key].shape == P.shape
        np.testing.assert_allclose(grads[key], central_difference(L, P), rtol=1e-6, atol=1e-7, err_msg=f"{name}.{key}")


def test_zero_constraint_freezes_A_at_zero(rng):
    con = make_constraint("zero", 0.5)
    raw = con.init(rng.standard_normal((4, 4)), rng)
    np.testing.assert_array_equal(con.matrix(raw), np.zeros((4, 4)))
    grads = con.pullback(raw, rng.standard_normal((4, 4)))
    assert set(grads) == set(raw) and all(not np.any(g) for g in grads.values())
    assert con.violation(np.zeros((4, 4)), raw) is None
    assert con.violation(np.full((4, 4), 0.1), raw) is not None


def test_nemon_param_with_zero_d_and_positive_T_is_closed_form(rng):
    n, gamma = 4, 0.6
    T = rng.uniform(0.1, 1.0, (n, n))
    A = make_constraint("nemon_param", gamma).matrix({"T": T, "d": np.zeros(n)})
    expected = T + np.diag(gamma - T.sum(axis=1))
    np.testing.assert_allclose(A, expected, rtol=1e-14)
    assert contraction.mu_inf(A) == pytest.approx(gamma, abs=1e-12)


def test_mon_matrix_closed_form(rng):
    n, gamma = 4, 0.3
    P, S = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    A = make_constraint("mon", gamma).matrix({"P": P, "S": S})
    np.testing.assert_allclose(A, gamma * np.eye(n) - P.T @ P + S - S.T, rtol=1e-14, atol=1e-14)


# -- certificates (property tests) -----------------------------------------------------------
@st.composite
def sizes_seeds_gammas(draw):
    return draw(st.integers(1, 6)), draw(st.integers(0, 2**32 - 1)), draw(st.floats(-2.0, 0.99))


@settings(max_examples=60, deadline=None)
@given(sizes_seeds_gammas(), st.floats(0.01, 3.0))
def test_nemon_param_certifies_weighted_mu_inf(case, scale):
    n, seed, gamma = case
    rng = np.random.default_rng(seed)
    con = make_constraint("nemon_param", gamma)
    raw = {"T": scale * rng.standard_normal((n, n)), "d": scale * rng.standard_normal(n)}
    A = con.matrix(raw)
    eta = con.weights(raw)
    np.testing.assert_allclose(eta, np.exp(-raw["d"]), rtol=1e-15)
    assert contraction.mu_inf(A, eta) <= gamma + TINY * (1 + scale * n)
    # Written out from the definition μ∞,η(A) = max_i a_ii + Σ_{j≠i} |a_ij| η_j / η_i:
    off = np.abs(A) * eta[None, :] / eta[:, None]
    np.fill_diagonal(off, 0.0)
    assert np.max(np.diagonal(A) + off.sum(axis=1)) <= gamma + TINY * (1 + scale * n)
    assert con.violation(A, raw) is None


@settings(max_examples=60, deadline=None)
@given(sizes_seeds_gammas(), st.floats(0.01, 3.0))
def test_mon_certifies_mu_2(case, scale):
    n, seed, gamma = case
    rng = np.random.default_rng(seed)
    con = make_constraint("mon", gamma)
    raw = {"P": scale * rng.standard_normal((n, n)), "S": scale * rng.standard_normal((n, n))}
    A = con.matrix(raw)
    assert contraction.mu_2(A) <= gamma + TINY * (1 + scale**2 * n)
    assert np.linalg.eigvalsh((A + A.T) / 2).max() <= gamma + TINY * (1 + scale**2 * n)
    assert con.violation(A, raw) is None


@settings(max_examples=60, deadline=None)
@given(sizes_seeds_gammas(), st.floats(0.01, 10.0))
def test_mu_inf_projection_is_feasible_and_idempotent(case, scale):
    n, seed, gamma = case
    rng = np.random.default_rng(seed)
    con = make_constraint("mu_inf", gamma)
    raw = con.project({"A": scale * rng.standard_normal((n, n))})
    assert contraction.mu_inf(raw["A"]) <= gamma + TINY * (1 + scale * n)
    assert con.violation(raw["A"], raw) is None
    np.testing.assert_allclose(con.project({"A": raw["A"].copy()})["A"], raw["A"], atol=1e-12 * (1 + scale))


@settings(max_examples=60, deadline=None)
@given(sizes_seeds_gammas(), st.floats(0.01, 10.0))
def test_norm_inf_projection_is_feasible_and_idempotent(case, scale):
    n, seed, gamma = case
    gamma = abs(gamma) % 1.0
    rng = np.random.default_rng(seed)
    con = make_constraint("norm_inf", gamma)
    raw = con.project({"A": scale * rng.standard_normal((n, n))})
    assert np.abs(raw["A"]).sum(axis=1).max() <= gamma + TINY * (1 + scale * n)
    assert con.violation(raw["A"], raw) is None
    np.testing.assert_allclose(con.project({"A": raw["A"].copy()})["A"], raw["A"], atol=1e-12 * (1 + scale))


@pytest.mark.parametrize("name", ["mu_inf", "norm_inf"])
def test_projection_keeps_float32(name, rng):
    con = make_constraint(name, 0.5)
    raw = con.project({"A": (3 * rng.standard_normal((6, 6))).astype(np.float32)})
    assert raw["A"].dtype == np.float32
    assert con.violation(raw["A"], raw) is None


@pytest.mark.parametrize("name", [name for name in CONSTRAINTS if name not in ("mu_inf", "norm_inf")])
def test_project_leaves_parametrised_constraints_alone(name, rng):
    con = make_constraint(name, 0.5)
    raw = random_raw(con, rng, 4)
    before = {k: v.copy() for k, v in raw.items()}
    after = con.project(raw)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_violation_reports_what_is_violated():
    A = 2.0 * np.eye(3)
    for name, what in (("mu_inf", "mu_inf(A)"), ("norm_inf", "||A||_inf"), ("mon", "mu_2(A)")):
        message = make_constraint(name, 0.5).violation(A)
        assert message is not None and what in message and name in message
    assert make_constraint("none").violation(A) is None
    raw = {"T": np.zeros((3, 3)), "d": np.zeros(3)}
    assert "mu_inf,eta" in make_constraint("nemon_param", 0.5).violation(A, raw)


def test_solver_methods_fit_the_guarantees():
    for name in CONSTRAINTS:
        con = make_constraint(name, 0.5)
        assert con.projected == (name in ("mu_inf", "norm_inf")), name
        if name == "mon":
            # Anderson for the adjoint; the network finishes unconverged samples densely.
            assert con.forward_method == "peaceman_rachford" and con.adjoint_method == "anderson"
        else:
            assert con.forward_method == "average" and con.adjoint_method == "average"


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mu-inf", "MU_INF", "", "spectral"])
def test_unknown_constraint_raises_value_error(name):
    with pytest.raises(ValueError, match="constraint must be one of"):
        make_constraint(name)


@pytest.mark.parametrize("name", ["mu_inf", "norm_inf", "nemon_param", "mon"])
@pytest.mark.parametrize("gamma", [1.0, 1.5, np.nan, np.inf, -np.inf])
def test_gamma_at_least_one_or_not_finite_raises_value_error(name, gamma):
    with pytest.raises(ValueError, match="gamma"):
        make_constraint(name, gamma)


def test_none_accepts_any_finite_gamma_but_not_nan():
    assert make_constraint("none", 5.0).gamma == 5.0
    with pytest.raises(ValueError, match="gamma"):
        make_constraint("none", np.nan)


def test_norm_inf_radius_must_be_nonnegative():
    with pytest.raises(ValueError, match="gamma"):
        make_constraint("norm_inf", -0.1)
    assert make_constraint("mu_inf", -0.1).gamma == -0.1  # a negative log-norm bound is fine


# -- the Lipschitz penalty -----------------------------------------------------------------
def generic_point(rng, n=5, m=4, q=3):
    """A, B, C with nonzero entries and unique maximising rows (so the penalty is smooth)."""
    while True:
        A = contraction.project_mu_inf(rng.standard_normal((n, n)), 0.4) + 0.01 * rng.standard_normal((n, n))
        B, C = rng.standard_normal((n, m)), rng.standard_normal((q, n))
        rows_A = np.diagonal(A) + np.abs(A).sum(1) - np.abs(np.diagonal(A))
        gaps = [np.diff(np.sort(r))[-1] for r in (rows_A, np.abs(B).sum(1), np.abs(C).sum(1))]
        if min(gaps) > 1e-2 and np.abs(A).min() > 1e-3 and np.abs(B).min() > 1e-3 and np.abs(C).min() > 1e-3 \
                and contraction.mu_inf(A) < 0.9:
            return A, B, C


def test_lipschitz_penalty_value(rng):
    for _ in range(5):
        A, B, C = generic_point(rng)
        value, _ = lipschitz_penalty(A, B, C)
        expected = np.abs(C).sum(1).max() * np.abs(B).sum(1).max() / (1 - contraction.mu_inf(A))
        assert value == pytest.approx(expected, rel=1e-13)
        assert value == pytest.approx(contraction.lipschitz_bound(A, B, C), rel=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lipschitz_penalty_gradient_matches_finite_differences(seed):
    A, B, C = generic_point(np.random.default_rng(seed))
    _, grads = lipschitz_penalty(A, B, C)
    params = {"A": A, "B": B, "C": C}

    def f():
        return lipschitz_penalty(A, B, C)[0]

    for key, P in params.items():
        assert grads[key].shape == P.shape
        np.testing.assert_allclose(grads[key], central_difference(f, P), rtol=1e-6, atol=1e-6, err_msg=key)


def test_lipschitz_penalty_accepts_float32(rng):
    A, B, C = generic_point(rng)
    value, grads = lipschitz_penalty(A.astype(np.float32), B.astype(np.float32), C.astype(np.float32))
    assert value == pytest.approx(lipschitz_penalty(A, B, C)[0], rel=1e-5)


@pytest.mark.parametrize("diag", [1.0, 1.5])
def test_lipschitz_penalty_needs_mu_inf_below_one(diag, rng):
    A = diag * np.eye(3)
    with pytest.raises(ValueError, match="mu_inf"):
        lipschitz_penalty(A, rng.standard_normal((3, 2)), rng.standard_normal((2, 3)))


# -- a floor on the diagonal (mu_inf) -------------------------------------------------------------
def test_diag_min_is_kept_by_project_and_checked_by_violation(rng):
    con = make_constraint("mu_inf", 0.5, diag_min=-1.0)
    A = rng.standard_normal((6, 6)) * 3.0
    A[np.diag_indices(6)] = -5.0
    P = con.project({"A": A})["A"]
    assert contraction.mu_inf(P) <= 0.5 + 1e-12 and np.diagonal(P).min() >= -1.0 - 1e-12
    assert con.violation(P) is None
    low = P.copy()
    low[0, :] = 0.0
    low[0, 0] = -3.0  # mu_inf fine, diagonal below the floor
    message = con.violation(low)
    assert message is not None and "diag_min" in message
    assert make_constraint("mu_inf", 0.5).violation(low) is None  # no floor: feasible


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="norm_inf", gamma=0.5, diag_min=-1.0), "mu_inf' only"),
    (dict(name="mu_inf", gamma=0.5, diag_min=0.7), "diag_min"),
    (dict(name="mu_inf", gamma=0.5, diag_min=float("nan")), "diag_min"),
])
def test_bad_diag_min_raises_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_constraint(**kwargs)
