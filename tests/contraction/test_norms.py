"""Norms and log-norms: closed forms on hand matrices and the standard facts on random ones."""

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

import contraction as c
from _contraction_helpers import (
    PROPERTY,
    random_matrix,
    random_spd,
    random_weights,
    row_measures,
    seeds,
    sizes,
)

PAPER = np.array([[-100.0, 50.0], [0.0, 0.0]])
SMALL = np.array([[1.0, -2.0], [3.0, 4.0]])


# ---------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------


def test_paper_matrix_closed_forms():
    assert c.mu_inf(PAPER) == 0.0
    assert c.induced_norm(PAPER, np.inf) == 150.0
    assert c.mu_1(PAPER) == 50.0  # column 1: 0 + |50|
    assert c.induced_norm(PAPER, 1) == 100.0
    # sym part [[-100, 25], [25, 0]]: λ_max = (-100 + sqrt(100² + 4·25²)) / 2
    assert c.mu_2(PAPER) == pytest.approx((-100 + np.sqrt(12500.0)) / 2, rel=1e-12)
    # AᵀA = [[1e4, -5e3], [-5e3, 2500]] has eigenvalues {12500, 0}
    assert c.induced_norm(PAPER, 2) == pytest.approx(np.sqrt(12500.0), rel=1e-12)


def test_paper_matrix_weighted_closed_forms():
    # η = (1, 2): row 0 is -100 + 50·2 = 0, row 1 is 0.
    assert c.mu_inf(PAPER, eta=[1.0, 2.0]) == pytest.approx(0.0, abs=1e-12)
    # η = (2, 1): row 0 is -100 + 50/2 = -75, row 1 is 0; the norm's row 0 is 100 + 25.
    assert c.mu_inf(PAPER, eta=[2.0, 1.0]) == pytest.approx(0.0, abs=1e-12)
    assert c.induced_norm(PAPER, np.inf, eta=[2.0, 1.0]) == pytest.approx(125.0, rel=1e-14)
    # ℓ1 with η = (2, 1): column j is a_jj + Σ_i |a_ij| η_i/η_j: col 1 = 0 + 50·2 = 100.
    assert c.mu_1(PAPER, eta=[2.0, 1.0]) == pytest.approx(100.0, rel=1e-14)
    assert c.induced_norm(PAPER, 1, eta=[2.0, 1.0]) == pytest.approx(100.0, rel=1e-14)


def test_small_matrix_closed_forms():
    assert c.mu_inf(SMALL) == 7.0  # max(1 + 2, 4 + 3)
    assert c.induced_norm(SMALL, np.inf) == 7.0
    assert c.mu_1(SMALL) == 6.0  # max(1 + 3, 4 + 2)
    assert c.induced_norm(SMALL, 1) == 6.0
    # sym part [[1, 0.5], [0.5, 4]]
    assert c.mu_2(SMALL) == pytest.approx((5 + np.sqrt(9 + 1)) / 2, rel=1e-12)
    assert c.induced_norm(SMALL, 2) == pytest.approx(np.linalg.svd(SMALL, compute_uv=False)[0])


def test_mu_of_negative_definite_diagonal_is_its_largest_entry():
    D = np.diag([-3.0, -1.0, -2.0])
    for p in (1, 2, np.inf):
        assert c.log_norm(D, p) == pytest.approx(-1.0, abs=1e-14)
        assert c.induced_norm(D, p) == pytest.approx(3.0, abs=1e-14)


def test_one_by_one():
    A = np.array([[-2.5]])
    for p in (1, 2, np.inf):
        assert c.log_norm(A, p) == pytest.approx(-2.5)
        assert c.induced_norm(A, p) == pytest.approx(2.5)


def test_vector_norms_closed_forms():
    x = np.array([3.0, -4.0])
    assert c.vector_norm(x) == 4.0
    assert c.vector_norm(x, 1) == 7.0
    assert c.vector_norm(x, 2) == pytest.approx(5.0)
    assert c.vector_norm(x, np.inf, eta=[1.0, 2.0]) == 3.0  # max(3/1, 4/2)
    assert c.vector_norm(x, 1, eta=[1.0, 2.0]) == 11.0  # 3 + 2·4
    assert c.vector_norm(x, 2, P=np.diag([1.0, 4.0])) == pytest.approx(np.sqrt(73.0))


def test_weighted_norm_of_weight_vector_is_one():
    eta = np.array([0.5, 2.0, 7.0])
    assert c.vector_norm(eta, np.inf, eta=eta) == pytest.approx(1.0)
    assert c.vector_norm(1.0 / eta, 1, eta=eta) == pytest.approx(3.0)


@pytest.mark.parametrize("p", [1, 2, np.inf, "inf", "infinity"])
def test_log_norm_dispatch(p):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 4))
    expected = {1: c.mu_1(A), 2: c.mu_2(A)}.get(p, c.mu_inf(A))
    assert c.log_norm(A, p) == expected


def test_log_norm_dispatch_weighted():
    rng = np.random.default_rng(4)
    A = rng.standard_normal((5, 5))
    eta = random_weights(rng, 5)
    P = random_spd(rng, 5)
    assert c.log_norm(A, np.inf, eta=eta) == c.mu_inf(A, eta)
    assert c.log_norm(A, 1, eta=eta) == c.mu_1(A, eta)
    assert c.log_norm(A, 2, P=P) == c.mu_2(A, P)
    assert c.log_norm(A) == c.mu_inf(A)  # default p is inf


# ---------------------------------------------------------------------------------------
# facts on random matrices
# ---------------------------------------------------------------------------------------


def _instance(seed, n):
    rng = np.random.default_rng(seed)
    scale = float(np.exp(rng.uniform(-2, 2)))
    A = random_matrix(rng, n, scale, neg_diag=bool(rng.integers(2)))
    B = random_matrix(rng, n, scale)
    return rng, A, B


def _all_measures(rng, n):
    """(log_norm, induced_norm, description) triples for p in 1, 2, ∞, plain and weighted."""
    eta = random_weights(rng, n)
    P = random_spd(rng, n)
    return [
        (lambda M: c.mu_inf(M), lambda M: c.induced_norm(M, np.inf), "inf"),
        (lambda M: c.mu_1(M), lambda M: c.induced_norm(M, 1), "1"),
        (lambda M: c.mu_2(M), lambda M: c.induced_norm(M, 2), "2"),
        (lambda M: c.mu_inf(M, eta), lambda M: c.induced_norm(M, np.inf, eta), "inf,eta"),
        (lambda M: c.mu_1(M, eta), lambda M: c.induced_norm(M, 1, eta), "1,eta"),
        (lambda M: c.mu_2(M, P), lambda M: c.induced_norm(M, 2, P=P), "2,P"),
    ]


def _tol(*mats):
    return 1e-10 * max(1.0, *(np.abs(M).sum() for M in mats))


@PROPERTY
@given(seed=seeds, n=sizes)
def test_spectral_abscissa_below_log_norm_below_norm(seed, n):
    rng, A, _ = _instance(seed, n)
    abscissa = np.linalg.eigvals(A).real.max()
    tol = _tol(A)
    for mu, norm, name in _all_measures(rng, n):
        m = mu(A)
        assert abscissa <= m + tol, name
        assert m <= norm(A) + tol, name
        assert -norm(A) <= m + tol, name  # |μ(A)| ≤ ‖A‖ as well


@PROPERTY
@given(seed=seeds, n=sizes)
def test_subadditivity(seed, n):
    rng, A, B = _instance(seed, n)
    tol = _tol(A, B)
    for mu, norm, name in _all_measures(rng, n):
        assert mu(A + B) <= mu(A) + mu(B) + tol, name
        assert norm(A + B) <= norm(A) + norm(B) + tol, name


@PROPERTY
@given(seed=seeds, n=sizes, k=st.floats(min_value=0.0, max_value=50.0))
def test_positive_homogeneity(seed, n, k):
    rng, A, _ = _instance(seed, n)
    tol = _tol(A) * max(1.0, k)
    for mu, norm, name in _all_measures(rng, n):
        assert mu(k * A) == pytest.approx(k * mu(A), abs=tol), name
        assert norm(k * A) == pytest.approx(k * norm(A), abs=tol), name
        assert norm(-k * A) == pytest.approx(k * norm(A), abs=tol), name


@PROPERTY
@given(seed=seeds, n=sizes)
def test_log_norm_of_identity_shift(seed, n):
    # μ(A + cI) = μ(A) + c for every log-norm.
    rng, A, _ = _instance(seed, n)
    shift = float(rng.normal() * 3)
    for mu, _, name in _all_measures(rng, n):
        assert mu(A + shift * np.eye(n)) == pytest.approx(mu(A) + shift, abs=_tol(A) + 1e-12), name


@PROPERTY
@given(seed=seeds, n=sizes)
def test_log_norm_is_derivative_of_norm(seed, n):
    # μ(A) = lim_{h→0+} (‖I + hA‖ − 1)/h; for ℓ1/ℓ∞ the quotient is exact once 1 + h a_ii > 0.
    rng, A, _ = _instance(seed, n)
    h = 1e-3 / max(1.0, np.abs(A).max())
    eta = random_weights(rng, n)
    I = np.eye(n)
    for p, weight in [(np.inf, None), (1, None), (np.inf, eta), (1, eta)]:
        quotient = (c.induced_norm(I + h * A, p, eta=weight) - 1.0) / h
        assert quotient == pytest.approx(c.log_norm(A, p, eta=weight), abs=1e-11 * max(1.0, np.abs(A).max()))
    # ℓ2: first order in h.
    h2 = 1e-6 / max(1.0, np.abs(A).max())
    quotient = (c.induced_norm(I + h2 * A, 2) - 1.0) / h2
    assert quotient == pytest.approx(c.mu_2(A), abs=1e-3 * max(1.0, np.abs(A).max()))


@PROPERTY
@given(seed=seeds, n=sizes)
def test_mu_inf_matches_elementwise_definition(seed, n):
    rng, A, _ = _instance(seed, n)
    eta = random_weights(rng, n)
    assert c.mu_inf(A) == pytest.approx(row_measures(A).max(), abs=_tol(A))
    assert c.mu_inf(A, eta) == pytest.approx(row_measures(A, eta).max(), abs=_tol(A) * eta.max() / eta.min())


@PROPERTY
@given(seed=seeds, n=sizes)
def test_duality_inf_and_one(seed, n):
    rng, A, _ = _instance(seed, n)
    eta = random_weights(rng, n)
    assert c.mu_inf(A, eta) == pytest.approx(c.mu_1(A.T, eta), rel=1e-12, abs=1e-12)
    assert c.mu_1(A, eta) == pytest.approx(c.mu_inf(A.T, eta), rel=1e-12, abs=1e-12)
    assert c.mu_inf(A) == c.mu_1(A.T)
    assert c.induced_norm(A, np.inf, eta) == pytest.approx(c.induced_norm(A.T, 1, eta), rel=1e-12)


@PROPERTY
@given(seed=seeds, n=sizes)
def test_weighted_equals_scaled(seed, n):
    rng, A, _ = _instance(seed, n)
    eta = random_weights(rng, n)
    S = np.diag(1.0 / eta) @ A @ np.diag(eta)
    S1 = np.diag(eta) @ A @ np.diag(1.0 / eta)
    tol = 1e-12 * max(1.0, np.abs(S).sum(), np.abs(S1).sum())
    assert c.mu_inf(A, eta) == pytest.approx(c.mu_inf(S), abs=tol)
    assert c.induced_norm(A, np.inf, eta) == pytest.approx(c.induced_norm(S, np.inf), abs=tol)
    assert c.mu_1(A, eta) == pytest.approx(c.mu_1(S1), abs=tol)
    assert c.induced_norm(A, 1, eta) == pytest.approx(c.induced_norm(S1, 1), abs=tol)
    # all-ones weights and constant weights are the unweighted quantities
    assert c.mu_inf(A, np.ones(n)) == c.mu_inf(A)
    assert c.mu_inf(A, 3.0 * eta) == pytest.approx(c.mu_inf(A, eta), abs=tol)


@PROPERTY
@given(seed=seeds, n=sizes)
def test_mu_2_weighted_matches_matrix_square_root(seed, n):
    rng, A, _ = _instance(seed, n)
    P = random_spd(rng, n)
    R = np.real(scipy.linalg.sqrtm(P))
    S = R @ A @ np.linalg.inv(R)
    expected = np.linalg.eigvalsh(0.5 * (S + S.T))[-1]
    assert c.mu_2(A, P) == pytest.approx(expected, abs=1e-8 * max(1.0, np.abs(S).max()))
    assert c.induced_norm(A, 2, P=P) == pytest.approx(np.linalg.norm(S, 2), rel=1e-8, abs=1e-12)
    assert c.mu_2(A, np.eye(n)) == pytest.approx(c.mu_2(A), abs=1e-12 * max(1.0, np.abs(A).max()))


@PROPERTY
@given(seed=seeds, n=sizes)
def test_induced_norm_consistency(seed, n):
    rng, A, _ = _instance(seed, n)
    eta = random_weights(rng, n)
    P = random_spd(rng, n)
    cases = [
        (np.inf, dict(), dict()),
        (1, dict(), dict()),
        (2, dict(), dict()),
        (np.inf, dict(eta=eta), dict(eta=eta)),
        (1, dict(eta=eta), dict(eta=eta)),
        (2, dict(P=P), dict(P=P)),
    ]
    for _ in range(10):
        x = rng.standard_normal(n) * np.exp(rng.uniform(-3, 3, n))
        for p, mkw, vkw in cases:
            lhs = c.vector_norm(A @ x, p, **vkw)
            rhs = c.induced_norm(A, p, **mkw) * c.vector_norm(x, p, **vkw)
            assert lhs <= rhs * (1 + 1e-10) + 1e-300, (p, mkw.keys())


@PROPERTY
@given(seed=seeds, n=sizes)
def test_weighted_inf_norm_is_attained(seed, n):
    # The max row sum of diag(η)⁻¹ A diag(η) is reached at x = η ⊙ sign(row), so the
    # induced norm is the supremum and not just an upper bound.
    rng, A, _ = _instance(seed, n)
    eta = random_weights(rng, n)
    S = np.diag(1.0 / eta) @ A @ np.diag(eta)
    i = int(np.argmax(np.abs(S).sum(axis=1)))
    x = eta * np.where(S[i] >= 0, 1.0, -1.0)
    assert c.vector_norm(x, np.inf, eta=eta) == pytest.approx(1.0)
    assert c.vector_norm(A @ x, np.inf, eta=eta) == pytest.approx(c.induced_norm(A, np.inf, eta), rel=1e-12)


@PROPERTY
@given(seed=seeds, n=sizes)
def test_log_norm_bounds_matrix_exponential(seed, n):
    # d/dt ‖e^{tA} x‖ ≤ μ(A) ‖e^{tA} x‖, hence ‖e^{A}‖ ≤ e^{μ(A)} (Coppel), for p = 2, P and ∞, η.
    rng, A, _ = _instance(seed, n)
    A = A / max(1.0, np.abs(A).max())
    eta = random_weights(rng, n)
    P = random_spd(rng, n)
    E = scipy.linalg.expm(A)
    assert c.induced_norm(E, 2) <= np.exp(c.mu_2(A)) * (1 + 1e-9)
    assert c.induced_norm(E, 2, P=P) <= np.exp(c.mu_2(A, P)) * (1 + 1e-9)
    assert c.induced_norm(E, np.inf, eta) <= np.exp(c.mu_inf(A, eta)) * (1 + 1e-9)
    assert c.induced_norm(E, 1, eta) <= np.exp(c.mu_1(A, eta)) * (1 + 1e-9)
