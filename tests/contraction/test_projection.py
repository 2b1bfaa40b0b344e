"""Exact projections onto {μ∞,η(A) ≤ γ} and {‖A‖∞ ≤ κ} against a cvxpy reference."""

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import contraction as c
from _contraction_helpers import PROPERTY, random_matrix, random_weights, row_measures, seeds, sizes

gammas = st.floats(min_value=-2.0, max_value=0.99)
kappas = st.floats(min_value=0.01, max_value=3.0)

_CLARABEL_OPTS = dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10)


def _reference_mu_inf(A, gamma, eta=None, diag_min=None):
    """argmin ‖X − A‖_F s.t. X_ii + Σ_{j≠i} |X_ij| η_j/η_i ≤ γ for every row (and
    X_ii ≥ diag_min when given) (cvxpy)."""
    n = A.shape[0]
    eta = np.ones(n) if eta is None else eta
    X = cp.Variable((n, n))
    cons = [] if diag_min is None else [cp.diag(X) >= diag_min]
    for i in range(n):
        others = [j for j in range(n) if j != i]
        expr = X[i, i]
        if others:
            expr = expr + cp.sum(cp.multiply(eta[others] / eta[i], cp.abs(X[i, others])))
        cons.append(expr <= gamma)
    cp.Problem(cp.Minimize(cp.sum_squares(X - A)), cons).solve(solver=cp.CLARABEL, **_CLARABEL_OPTS)
    return X.value


def _reference_norm_inf(A, kappa):
    X = cp.Variable(A.shape)
    cons = [cp.sum(cp.abs(X), axis=1) <= kappa]
    cp.Problem(cp.Minimize(cp.sum_squares(X - A)), cons).solve(solver=cp.CLARABEL, **_CLARABEL_OPTS)
    return X.value


def _instance(seed, n, weighted):
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1, 1.5))), neg_diag=bool(rng.integers(3) == 0))
    eta = random_weights(rng, n) if weighted else None
    return rng, A, eta


# ---------------------------------------------------------------------------------------
# project_mu_inf
# ---------------------------------------------------------------------------------------


def test_project_mu_inf_hand():
    # Row 0: t = 1, v = (3,): 1 + 3 ≤ 0 fails; (1 − τ) + (3 − τ) = 0 → τ = 2 → (-1, 1).
    # Row 1: -5 + 1 ≤ 0 holds: unchanged.
    A = np.array([[1.0, 3.0], [1.0, -5.0]])
    np.testing.assert_allclose(c.project_mu_inf(A, 0.0), [[-1.0, 1.0], [1.0, -5.0]], atol=1e-15)
    # Row with a small off-diagonal entry that gets zeroed: t = 2, v = (0.1, -4).
    # Both active: (2 − τ) + (0.1 − τ) + (4 − τ) = 0 → τ = 2.0333 > 0.1, so drop 0.1:
    # (2 − τ) + (4 − τ) = 0 → τ = 3 → (-1, 0, -1).
    A = np.array([[2.0, 0.1, -4.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    P = c.project_mu_inf(A, 0.0)
    np.testing.assert_allclose(P[0], [-1.0, 0.0, -1.0], atol=1e-15)
    np.testing.assert_array_equal(P[1:], A[1:])
    # n = 1: min(a, γ)
    assert c.project_mu_inf(np.array([[3.0]]), 0.5)[0, 0] == 0.5
    assert c.project_mu_inf(np.array([[-3.0]]), 0.5)[0, 0] == -3.0


def test_project_mu_inf_paper_matrix_is_feasible_already():
    A = np.array([[-100.0, 50.0], [0.0, 0.0]])
    np.testing.assert_array_equal(c.project_mu_inf(A, 0.0), A)
    P = c.project_mu_inf(A, -1.0)  # row 1 must move its diagonal from 0 to -1
    np.testing.assert_allclose(P, [[-100.0, 50.0], [0.0, -1.0]])


def test_project_mu_inf_returns_new_array():
    A = np.array([[-1.0, 0.1], [0.2, -1.0]])
    P = c.project_mu_inf(A, 0.5)
    assert P is not A
    P[0, 0] = 42.0
    assert A[0, 0] == -1.0


@PROPERTY
@given(seed=seeds, n=sizes, gamma=gammas, weighted=st.booleans())
def test_project_mu_inf_feasible_idempotent_rows(seed, n, gamma, weighted):
    rng, A, eta = _instance(seed, n, weighted)
    P = c.project_mu_inf(A, gamma, eta)
    assert c.mu_inf(P, eta) <= gamma + 1e-10 * max(1.0, np.abs(A).max())
    np.testing.assert_allclose(c.project_mu_inf(P, gamma, eta), P, rtol=0, atol=1e-12 * max(1.0, np.abs(A).max()))
    # rows already feasible are returned bit for bit
    feasible = row_measures(A, eta) <= gamma
    np.testing.assert_array_equal(P[feasible], A[feasible])
    # infeasible rows land on the boundary, with the signs kept and magnitudes shrunk
    infeasible = ~feasible
    if infeasible.any():
        np.testing.assert_allclose(row_measures(P, eta)[infeasible], gamma, atol=1e-10 * max(1.0, np.abs(A).max()))
    off = ~np.eye(n, dtype=bool)
    assert np.all(np.abs(P[off]) <= np.abs(A[off]))
    assert np.all(P[off] * A[off] >= 0)
    assert np.all(np.diagonal(P) <= np.diagonal(A))


@PROPERTY
@given(seed=seeds, n=sizes, gamma=gammas, weighted=st.booleans())
def test_project_mu_inf_nonexpansive(seed, n, gamma, weighted):
    rng, A, eta = _instance(seed, n, weighted)
    B = A + random_matrix(rng, n, float(np.exp(rng.uniform(-3, 1))))
    dist = np.linalg.norm(c.project_mu_inf(A, gamma, eta) - c.project_mu_inf(B, gamma, eta))
    assert dist <= np.linalg.norm(A - B) * (1 + 1e-12) + 1e-13


@PROPERTY
@given(seed=seeds, n=sizes, gamma=gammas, weighted=st.booleans())
def test_project_mu_inf_variational_inequality(seed, n, gamma, weighted):
    rng, A, eta = _instance(seed, n, weighted)
    P = c.project_mu_inf(A, gamma, eta)
    scale = max(1.0, np.abs(A).sum())
    for _ in range(10):
        Z = c.project_mu_inf(random_matrix(rng, n, float(np.exp(rng.uniform(-1, 2)))), gamma, eta)
        Z = Z + rng.uniform(0, 1) * (P - Z)  # also points on segments (convexity)
        assert np.sum((A - P) * (Z - P)) <= 1e-9 * scale * max(1.0, np.abs(Z).sum())


@pytest.mark.parametrize("seed", range(24))
def test_project_mu_inf_matches_cvxpy(seed):
    rng = np.random.default_rng(seed)
    n = 1 + seed % 8
    weighted = seed % 3 != 0
    _, A, eta = _instance(seed, n, weighted)
    gamma = float(rng.uniform(-2.0, 0.99))
    P = c.project_mu_inf(A, gamma, eta)
    X = _reference_mu_inf(A, gamma, eta)
    assert np.linalg.norm(P - X) <= 1e-7 * max(1.0, np.linalg.norm(A))
    # the reference is not closer than the exact projection
    assert np.linalg.norm(P - A) <= np.linalg.norm(X - A) + 1e-9 * max(1.0, np.linalg.norm(A))


# ---------------------------------------------------------------------------------------
# project_norm_inf
# ---------------------------------------------------------------------------------------


def test_project_norm_inf_hand():
    # Row (3, -1): ℓ1 = 4 > 2: (3 − τ) + (1 − τ) = 2 → τ = 1 → (2, 0).
    # Row (0.5, 0.5): feasible.
    A = np.array([[3.0, -1.0], [0.5, 0.5]])
    np.testing.assert_allclose(c.project_norm_inf(A, 2.0), [[2.0, 0.0], [0.5, 0.5]], atol=1e-15)
    # rectangular, all entries shrink: (1, -2, 3) onto ℓ1 ≤ 3 → τ = 1 → (0, -1, 2)
    np.testing.assert_allclose(c.project_norm_inf(np.array([[1.0, -2.0, 3.0]]), 3.0), [[0.0, -1.0, 2.0]], atol=1e-15)


def test_project_norm_inf_zero_radius():
    # κ = 0: the ball is {0}; τ* is the largest |a_ij| of each row (a boundary case of the sort).
    A = np.array([[1.0, -2.0, 0.0], [3.0, 0.5, 3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(c.project_norm_inf(A, 0.0), np.zeros((3, 3)))
    rng = np.random.default_rng(9)
    np.testing.assert_array_equal(c.project_norm_inf(rng.standard_normal((4, 7)), 0), np.zeros((4, 7)))


def test_project_norm_inf_zero_radius_on_zero_matrix():
    np.testing.assert_array_equal(c.project_norm_inf(np.zeros((2, 3)), 0.0), np.zeros((2, 3)))


def _rect(seed):
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    return rng, rng.standard_normal((n, m)) * float(np.exp(rng.uniform(-1, 1.5)))


@PROPERTY
@given(seed=seeds, kappa=kappas)
def test_project_norm_inf_feasible_idempotent(seed, kappa):
    rng, A = _rect(seed)
    P = c.project_norm_inf(A, kappa)
    assert P.shape == A.shape
    assert np.abs(P).sum(axis=1).max() <= kappa + 1e-10 * max(1.0, np.abs(A).max())
    np.testing.assert_allclose(c.project_norm_inf(P, kappa), P, rtol=0, atol=1e-12 * max(1.0, np.abs(A).max()))
    feasible = np.abs(A).sum(axis=1) <= kappa
    np.testing.assert_array_equal(P[feasible], A[feasible])
    np.testing.assert_allclose(np.abs(P[~feasible]).sum(axis=1), kappa, rtol=1e-12)
    assert np.all(P * A >= 0) and np.all(np.abs(P) <= np.abs(A))
    if A.shape[0] == A.shape[1]:
        # ‖A‖∞ ≤ κ implies μ∞(A) ≤ κ: the norm ball lies in the log-norm polytope
        assert c.mu_inf(P) <= kappa + 1e-10 * max(1.0, np.abs(A).max())


@PROPERTY
@given(seed=seeds, kappa=kappas)
def test_project_norm_inf_nonexpansive_and_variational(seed, kappa):
    rng, A = _rect(seed)
    B = A + rng.standard_normal(A.shape) * float(np.exp(rng.uniform(-3, 1)))
    PA, PB = c.project_norm_inf(A, kappa), c.project_norm_inf(B, kappa)
    assert np.linalg.norm(PA - PB) <= np.linalg.norm(A - B) * (1 + 1e-12) + 1e-13
    for _ in range(10):
        Z = c.project_norm_inf(rng.standard_normal(A.shape) * 3, kappa)
        assert np.sum((A - PA) * (Z - PA)) <= 1e-9 * max(1.0, np.abs(A).sum()) * max(1.0, np.abs(Z).sum())


@pytest.mark.parametrize("seed", range(12))
def test_project_norm_inf_matches_cvxpy(seed):
    rng, A = _rect(1000 + seed)
    kappa = float(rng.uniform(0.01, 3.0))
    P = c.project_norm_inf(A, kappa)
    X = _reference_norm_inf(A, kappa)
    assert np.linalg.norm(P - X) <= 1e-7 * max(1.0, np.linalg.norm(A))


# --------------------------------------------------------------------------- compiled vs sorting


def _awkward_matrix(rng, n, m=None):
    """Scaled Gaussian entries with exact zeros and ties (rounded entries) mixed in."""
    A = rng.standard_normal((n, n if m is None else m)) * rng.choice([1e-3, 1.0, 30.0])
    A[rng.random(A.shape) < 0.3] = 0.0
    if rng.random() < 0.5:
        A = np.round(A)
    return A


@PROPERTY
@given(seed=seeds, n=sizes, gamma=st.floats(-3.0, 3.0), weighted=st.booleans())
def test_project_mu_inf_compiled_matches_sorting_reference(seed, n, gamma, weighted):
    """Michelot's active-set iteration (default) and the sort-based root agree."""
    from contraction._projection import _project_mu_inf_sorted

    rng = np.random.default_rng(seed)
    A = _awkward_matrix(rng, n)
    eta = random_weights(rng, n) if weighted else None
    got = c.project_mu_inf(A, gamma, eta)
    ref = _project_mu_inf_sorted(A, gamma, eta)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * (1 + np.abs(A).max()))


@PROPERTY
@given(seed=seeds, n=sizes, kappa=st.floats(0.0, 5.0))
def test_project_norm_inf_compiled_matches_sorting_reference(seed, n, kappa):
    from contraction._projection import _project_norm_inf_sorted

    rng = np.random.default_rng(seed)
    A = _awkward_matrix(rng, n, m=int(rng.integers(1, 12)))
    np.testing.assert_allclose(c.project_norm_inf(A, kappa), _project_norm_inf_sorted(A, kappa), rtol=0,
                               atol=1e-12 * (1 + np.abs(A).max()))


# ---------------------------------------------------------------------------------------
# project_mu_inf with a floor on the diagonal
# ---------------------------------------------------------------------------------------


def test_project_mu_inf_diag_min_hand():
    # γ = 0.5, d = -1: in s = a_ii − d ≥ 0 each row is an ℓ1 ball of radius γ − d = 1.5.
    # Row 0: s = max(-3 + 1, 0) = 0 and |2| > 1.5 → (0, 1.5) → a_00 = -1, a_01 = 1.5.
    # Row 1: (0.5, s = 3): both active, 3.5 − 2τ = 1.5 → τ = 1 > 0.5, so a_10 drops out;
    # 3 − τ = 1.5 → τ = 1.5 → s = 1.5 → a_11 = 0.5, a_10 = 0.
    A = np.array([[-3.0, 2.0], [0.5, 2.0]])
    P = c.project_mu_inf(A, 0.5, diag_min=-1.0)
    np.testing.assert_allclose(P, [[-1.0, 1.5], [0.0, 0.5]], atol=1e-15)
    # A floor below every diagonal the plain projection produces changes nothing.
    np.testing.assert_array_equal(c.project_mu_inf(A, 0.5, diag_min=-10.0), c.project_mu_inf(A, 0.5))


def test_project_mu_inf_diag_min_above_gamma_is_an_error():
    with pytest.raises(ValueError, match="diag_min"):
        c.project_mu_inf(np.eye(2), 0.5, diag_min=0.6)
    with pytest.raises(ValueError, match="diag_min"):
        c.project_mu_inf(np.eye(2), 0.5, diag_min=np.nan)
    # diag_min = gamma leaves one point per row: a_ii = γ, every other entry 0
    np.testing.assert_array_equal(c.project_mu_inf(np.ones((3, 3)), 0.5, diag_min=0.5), 0.5 * np.eye(3))


@pytest.mark.parametrize("seed", range(16))
def test_project_mu_inf_diag_min_matches_cvxpy(seed):
    rng = np.random.default_rng(seed)
    n = 1 + seed % 7
    _, A, eta = _instance(seed, n, seed % 2 == 1)
    gamma = float(rng.uniform(-1.0, 0.99))
    diag_min = gamma - float(rng.uniform(0.0, 3.0))
    P = c.project_mu_inf(A, gamma, eta, diag_min=diag_min)
    X = _reference_mu_inf(A, gamma, eta, diag_min)
    assert np.linalg.norm(P - X) <= 1e-7 * max(1.0, np.linalg.norm(A))
    assert np.linalg.norm(P - A) <= np.linalg.norm(X - A) + 1e-9 * max(1.0, np.linalg.norm(A))


@PROPERTY
@given(seed=seeds, n=sizes, gamma=gammas, drop=st.floats(0.0, 4.0), weighted=st.booleans())
def test_project_mu_inf_diag_min_feasible_idempotent_variational(seed, n, gamma, drop, weighted):
    rng, A, eta = _instance(seed, n, weighted)
    diag_min = gamma - drop
    P = c.project_mu_inf(A, gamma, eta, diag_min=diag_min)
    tol = 1e-10 * max(1.0, np.abs(A).max())
    assert c.mu_inf(P, eta) <= gamma + tol
    assert np.diagonal(P).min() >= diag_min - tol
    np.testing.assert_allclose(c.project_mu_inf(P, gamma, eta, diag_min=diag_min), P, rtol=0, atol=10 * tol)
    scale = max(1.0, np.abs(A).sum())
    for _ in range(5):
        Z = c.project_mu_inf(random_matrix(rng, n, float(np.exp(rng.uniform(-1, 2)))), gamma, eta, diag_min=diag_min)
        Z = Z + rng.uniform(0, 1) * (P - Z)
        assert np.sum((A - P) * (Z - P)) <= 1e-9 * scale * max(1.0, np.abs(Z).sum())
