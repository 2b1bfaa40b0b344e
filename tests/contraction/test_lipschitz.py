"""Lipschitz bounds of u ↦ x*(u) against difference quotients, and certified radii."""

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
    random_matrix,
    random_weights,
    relu,
    seeds,
    sizes,
)


def _network(rng, n, weighted=False, gamma=None):
    neg = bool(rng.integers(2))
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1, 1.5))), neg_diag=neg)
    eta = random_weights(rng, n) if weighted else None
    gamma = float(rng.uniform(-3.0, 0.8)) if gamma is None else gamma
    A = c.project_mu_inf(A, gamma, eta)
    m = int(rng.integers(1, 5))
    B = rng.standard_normal((n, m))
    b = rng.standard_normal(n)
    return A, B, b, eta


def _x_star(A, B, b, u, act):
    return averaged_fixed_point(A, B @ u + b, act, tol=1e-13)


# ---------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------


def test_hand_values():
    A = np.array([[-1.0, 0.5], [0.25, -0.5]])  # rows -0.5, -0.25: μ∞ = -0.25
    B = np.array([[1.0, -1.0], [0.5, 0.0]])  # ‖B‖∞ = 2
    C = np.array([[1.0, 2.0], [0.0, -1.0]])  # ‖C‖∞ = 3
    assert c.lipschitz_bound(A, B) == pytest.approx(2 / 1.25)
    assert c.lipschitz_bound(A, B, form="paper") == pytest.approx(2.0)
    assert c.lipschitz_bound(A, B, C) == pytest.approx(3 * 2 / 1.25)
    assert c.lipschitz_bound(A, B, C, form="paper") == pytest.approx(6.0)
    # η = (1, 0.5): rows -1 + 0.5·0.5 = -0.75 and -0.5 + 0.25/0.5 = 0 → μ = 0;
    # ‖diag(η)⁻¹B‖ = max(2, 0.5/0.5) = 2; ‖C diag(η)‖ = max(1 + 1, 0.5) = 2.
    eta = np.array([1.0, 0.5])
    assert c.lipschitz_bound(A, B, eta=eta) == pytest.approx(2.0)
    assert c.lipschitz_bound(A, B, C, eta=eta) == pytest.approx(4.0)


def test_infinite_when_not_contractive():
    A = np.array([[0.5, 0.5], [0.0, 0.0]])  # μ∞ = 1
    B = np.eye(2)
    for form in ("tight", "paper"):
        assert c.lipschitz_bound(A, B, form=form) == math.inf
        assert c.lipschitz_bound(A * 3, B, np.eye(2), form=form) == math.inf
    # ... but good weights can restore a finite bound
    assert c.lipschitz_bound(A, B, eta=[1.0, 0.5]) < math.inf


@PROPERTY
@given(seed=seeds, n=sizes, weighted=st.booleans(), with_c=st.booleans())
def test_tight_never_above_paper(seed, n, weighted, with_c):
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-2, 1.5))), neg_diag=bool(rng.integers(2)))
    B = rng.standard_normal((n, 3))
    C = rng.standard_normal((2, n)) if with_c else None
    eta = random_weights(rng, n) if weighted else None
    mu = c.mu_inf(A, eta)
    tight = c.lipschitz_bound(A, B, C, eta=eta)
    paper = c.lipschitz_bound(A, B, C, eta=eta, form="paper")
    if mu >= 1:
        assert tight == paper == math.inf
        return
    assert tight <= paper
    if mu >= 0:
        assert tight == paper
    else:
        assert tight == pytest.approx(paper / (1 - mu), rel=1e-12)
    assert tight == c.lipschitz_bound(A, B, C, eta=eta, form="tight")


# ---------------------------------------------------------------------------------------
# soundness against the true fixed-point map
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
@PROPERTY
@given(seed=seeds, n=sizes)
def test_difference_quotients_below_bound(activation, weighted, seed, n):
    rng = np.random.default_rng(seed)
    act = ACTIVATIONS[activation]
    A, B, b, eta = _network(rng, n, weighted)
    C = rng.standard_normal((3, n))
    scale = np.ones(n) if eta is None else eta
    L = c.lipschitz_bound(A, B, eta=eta)
    L_out = c.lipschitz_bound(A, B, C, eta=eta)
    if c.mu_inf(A, eta) < 0:
        assert L < c.lipschitz_bound(A, B, eta=eta, form="paper")
    m = B.shape[1]
    for _ in range(4):
        u1 = rng.standard_normal(m) * 2
        du = rng.standard_normal(m) * float(np.exp(rng.uniform(-4, 0)))
        x1 = _x_star(A, B, b, u1, act)
        x2 = _x_star(A, B, b, u1 + du, act)
        dx = x1 - x2
        size = float(np.max(np.abs(du)))
        assert np.max(np.abs(dx) / scale) <= L * size + 1e-9
        assert np.max(np.abs(C @ dx)) <= L_out * size + 1e-9


@pytest.mark.parametrize("a", [-3.0, -0.5, 0.0, 0.5, 0.9])
def test_scalar_bound_is_attained(a):
    # A = [[a]], B = [[1]], relu in its linear region: x* = u/(1 − a), so the quotient is 1/(1 − a).
    A, B = np.array([[a]]), np.array([[1.0]])
    L = c.lipschitz_bound(A, B)
    assert L == pytest.approx(1 / (1 - a))
    x1 = _x_star(A, B, np.zeros(1), np.array([1.0]), relu)
    x2 = _x_star(A, B, np.zeros(1), np.array([1.5]), relu)
    assert abs(x2[0] - x1[0]) / 0.5 == pytest.approx(L, rel=1e-10)
    if a < 0:
        assert L < c.lipschitz_bound(A, B, form="paper")  # the seed paper's form is loose here


def test_diagonal_bound_is_attained_in_the_worst_row():
    A = np.diag([-2.0, 0.25, -0.5])  # μ∞ = 0.25, row 1 is the worst
    B = np.array([[1.0, 0.0], [1.0, -1.0], [0.0, 1.0]])
    L = c.lipschitz_bound(A, B)
    assert L == pytest.approx(2 / 0.75)
    b = np.array([5.0, 5.0, 5.0])  # all coordinates in the linear region of relu
    u = np.zeros(2)
    du = np.array([0.1, -0.1])
    dx = _x_star(A, B, b, u + du, relu) - _x_star(A, B, b, u, relu)
    assert np.max(np.abs(dx)) == pytest.approx(L * 0.1, rel=1e-10)


# ---------------------------------------------------------------------------------------
# certified radius
# ---------------------------------------------------------------------------------------


def test_certified_radius_hand():
    logits = np.array([[3.0, 1.0, 0.0], [0.0, 0.5, 2.5]])
    C = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    radius, pred = c.certified_radius(logits, C, 0.5)
    # sample 0, k = 0: j = 1 margin 2 over ‖(1, -1)‖₁·0.5 = 1 → 2; j = 2 margin 3 over 0.5 → 6
    # sample 1, k = 2: j = 0 margin 2.5 over 0.5 → 5; j = 1 margin 2 over 0.5 → 4
    np.testing.assert_array_equal(pred, [0, 2])
    np.testing.assert_allclose(radius, [2.0, 4.0])


def test_certified_radius_ties_and_degenerate_rows():
    C = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    radius, pred = c.certified_radius(np.array([[1.0, 1.0, 0.0]]), C, 2.0)
    assert pred[0] == 0 and radius[0] == 0.0  # a tie certifies nothing
    # identical output rows with a positive margin can never swap
    radius, _ = c.certified_radius(np.array([[2.0, 0.0, 1.0]]), C, 2.0)
    assert radius[0] == pytest.approx(2.0 / (2 * 2.0))  # limited by class 1 only
    # identical rows and a tie: still 0
    radius, _ = c.certified_radius(np.array([[1.0, 0.0, 1.0]]), C, 2.0)
    assert radius[0] == 0.0
    # L = 0 (the output ignores the input): every positive margin is certified for all ε
    radius, _ = c.certified_radius(np.array([[1.0, 0.0, 0.5]]), C, 0.0)
    assert radius[0] == math.inf


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@PROPERTY
@given(seed=seeds, n=sizes)
def test_certified_radius_is_sound(activation, seed, n):
    rng = np.random.default_rng(seed)
    act = ACTIVATIONS[activation]
    A, B, b, _ = _network(rng, n, gamma=float(rng.uniform(-2.0, 0.5)))
    q = int(rng.integers(2, 5))
    C = rng.standard_normal((q, n))
    cvec = rng.standard_normal(q)
    u = rng.standard_normal(B.shape[1]) * 2
    logits = C @ _x_star(A, B, b, u, act) + cvec
    L = c.lipschitz_bound(A, B)
    radius, pred = c.certified_radius(logits[None, :], C, L)
    assert pred[0] == np.argmax(logits)
    r = float(radius[0])
    assert r >= 0
    # the radius is exactly the smallest margin-to-sensitivity ratio
    k = pred[0]
    ratios = [
        (logits[k] - logits[j]) / (np.abs(C[k] - C[j]).sum() * L) for j in range(q) if j != k
    ]
    assert r == pytest.approx(min(ratios), rel=1e-12)
    if not np.isfinite(r) or r == 0:
        return
    m = B.shape[1]
    deltas = np.vstack([rng.uniform(-1, 1, (6, m)), np.sign(rng.standard_normal((6, m)))]) * 0.99 * r
    for d in deltas:
        y = C @ _x_star(A, B, b, u + d, act) + cvec
        assert np.argmax(y) == k
        assert np.max(np.abs(y - logits)) <= max(np.abs(C).sum(axis=1)) * L * np.max(np.abs(d)) + 1e-9
