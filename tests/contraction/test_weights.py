"""Optimal diagonal weights: Perron vectors against cvxpy and against the infimum."""

import logging

import numpy as np
import pytest
from hypothesis import assume, given

import contraction as c
from _contraction_helpers import (
    PROPERTY,
    random_matrix,
    random_weights,
    row_measures,
    seeds,
    sizes,
)


def _dense(seed, n, neg_diag=None):
    """A random matrix with a dense (hence irreducible) off-diagonal pattern."""
    rng = np.random.default_rng(seed)
    neg = bool(rng.integers(2)) if neg_diag is None else neg_diag
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-1.5, 1.5))), neg_diag=neg)
    A[A == 0] = 1e-3
    return rng, A


def _infimum(A, kind):
    if kind == "log_norm":
        return c.spectral_abscissa(c.metzler_majorant(A))
    return c.spectral_radius(np.abs(A))


def _value(A, eta, kind):
    return c.mu_inf(A, eta) if kind == "log_norm" else c.induced_norm(A, np.inf, eta)


# ---------------------------------------------------------------------------------------
# metzler majorant, spectral quantities, irreducibility
# ---------------------------------------------------------------------------------------


def test_metzler_majorant_hand():
    A = np.array([[-1.0, -2.0, 0.0], [3.0, -4.0, -0.5], [-7.0, 0.0, 2.0]])
    expected = np.array([[-1.0, 2.0, 0.0], [3.0, -4.0, 0.5], [7.0, 0.0, 2.0]])
    np.testing.assert_array_equal(c.metzler_majorant(A), expected)
    np.testing.assert_array_equal(c.metzler_majorant(expected), expected)  # idempotent


def test_metzler_majorant_does_not_modify_input():
    A = np.array([[-1.0, -2.0], [-3.0, -4.0]])
    before = A.copy()
    c.metzler_majorant(A)
    np.testing.assert_array_equal(A, before)


@PROPERTY
@given(seed=seeds, n=sizes)
def test_metzler_majorant_properties(seed, n):
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, 2.0, neg_diag=bool(rng.integers(2)))
    M = c.metzler_majorant(A)
    off = ~np.eye(n, dtype=bool)
    assert np.all(M[off] >= 0)
    np.testing.assert_array_equal(np.diagonal(M), np.diagonal(A))
    np.testing.assert_array_equal(np.abs(M), np.abs(A))
    eta = random_weights(rng, n)
    # μ∞,η only sees |a_ij| off the diagonal, so A and ⌈A⌉ are indistinguishable to it,
    # and for a Metzler matrix the spectral abscissa is the Perron root (a real eigenvalue).
    assert c.mu_inf(M, eta) == c.mu_inf(A, eta)
    assert c.spectral_abscissa(A) <= c.spectral_abscissa(M) + 1e-10 * max(1.0, np.abs(A).sum())
    assert c.spectral_radius(A) <= c.spectral_radius(np.abs(A)) + 1e-10 * max(1.0, np.abs(A).sum())


def test_spectral_quantities_hand():
    R = np.array([[0.0, -1.0], [1.0, 0.0]])  # eigenvalues ±i
    assert c.spectral_abscissa(R) == pytest.approx(0.0, abs=1e-15)
    assert c.spectral_radius(R) == pytest.approx(1.0)
    A = np.diag([-3.0, 2.0])
    assert c.spectral_abscissa(A) == 2.0
    assert c.spectral_radius(A) == 3.0


@pytest.mark.parametrize(
    "A, expected",
    [
        ([[5.0]], True),
        ([[0.0, 1.0], [1.0, 0.0]], True),
        ([[0.0, 1.0], [0.0, 0.0]], False),
        ([[1.0, 0.0], [0.0, 1.0]], False),  # the diagonal does not count
        ([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], True),  # a 3-cycle
        ([[0.0, -1.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], False),  # block diagonal
        ([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], False),  # node 2 has no out-edge
        ([[9.0, 1.0, 0.0], [0.0, 9.0, 1.0], [-1.0, 0.0, 9.0]], True),  # negative entries count
    ],
)
def test_is_irreducible(A, expected):
    assert c.is_irreducible(np.array(A)) is expected


@PROPERTY
@given(seed=seeds, n=sizes)
def test_is_irreducible_random(seed, n):
    rng = np.random.default_rng(seed)
    assert c.is_irreducible(_dense(seed, n)[1])
    if n >= 2:
        T = np.triu(rng.standard_normal((n, n)))
        assert not c.is_irreducible(T)
        perm = rng.permutation(n)
        assert not c.is_irreducible(T[np.ix_(perm, perm)])  # irreducibility is permutation-invariant


# ---------------------------------------------------------------------------------------
# optimal weights
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["log_norm", "norm"])
@pytest.mark.parametrize("seed", range(6))
def test_perron_agrees_with_cvxpy(kind, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    _, A = _dense(seed, n)
    eta_p, val_p = c.optimal_weights(A, kind=kind, method="perron")
    eta_c, val_c = c.optimal_weights(A, kind=kind, method="cvxpy")
    assert val_c == pytest.approx(val_p, abs=1e-5 * max(1.0, abs(val_p)))
    assert val_c == pytest.approx(_value(A, eta_c, kind), abs=1e-12 * max(1.0, abs(val_c)))
    for eta in (eta_p, eta_c):
        assert np.all(eta > 0)
        assert eta.max() == pytest.approx(1.0, abs=1e-15)
    # Irreducible: the optimal weights are unique up to scale, so the two methods agree too.
    np.testing.assert_allclose(eta_c, eta_p, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", ["log_norm", "norm"])
@PROPERTY
@given(seed=seeds, n=sizes)
def test_perron_value_equals_infimum_when_irreducible(kind, seed, n):
    rng, A = _dense(seed, n)
    eta, value = c.optimal_weights(A, kind=kind)
    target = _infimum(A, kind)
    assert value == pytest.approx(target, abs=1e-8 * max(1.0, abs(target)))
    assert value == pytest.approx(_value(A, eta, kind), abs=1e-14 * max(1.0, abs(value)))
    assert np.all(eta > 0) and eta.max() == 1.0
    if kind == "log_norm":
        # The Perron vector equalises the rows: every weighted row measure equals α(⌈A⌉).
        np.testing.assert_allclose(row_measures(A, eta), target, atol=1e-8 * max(1.0, abs(target)))
        # ... and it is the right Perron vector of the majorant.
        M = c.metzler_majorant(A)
        np.testing.assert_allclose(M @ eta, target * eta, atol=1e-8 * max(1.0, np.abs(M).max()))


@pytest.mark.parametrize("kind", ["log_norm", "norm"])
@PROPERTY
@given(seed=seeds, n=sizes)
def test_no_weight_beats_the_infimum(kind, seed, n):
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, 1.5, neg_diag=bool(rng.integers(2)))
    A[rng.random((n, n)) < 0.4] = 0.0  # often reducible
    target = _infimum(A, kind)
    tol = 1e-10 * max(1.0, np.abs(A).sum())
    eta, value = c.optimal_weights(A, kind=kind)
    assert value >= target - tol
    assert np.all(eta > 0) and eta.max() == 1.0
    for _ in range(20):
        assert _value(A, random_weights(rng, n), kind) >= target - tol


def _reducible_instances():
    rng = np.random.default_rng(2024)
    out = []
    for n in (2, 3, 5, 8):
        out.append(("upper", np.triu(rng.standard_normal((n, n)))))
        out.append(("lower", np.tril(rng.standard_normal((n, n)) * 3)))
        out.append(("upper, negative diagonal", np.triu(random_matrix(rng, n, 1.0, neg_diag=True))))
    for n1, n2 in ((1, 2), (2, 2), (3, 4), (2, 5)):
        n = n1 + n2
        A = rng.standard_normal((n, n))
        A[n1:, :n1] = 0.0  # block upper-triangular
        out.append((f"block {n1}+{n2}", A))
        B = A.copy()
        B[:n1, :n1] += 2.0 * np.eye(n1)  # dominant top block
        out.append((f"block {n1}+{n2}, top dominant", B))
        C = A.copy()
        C[n1:, n1:] += 2.0 * np.eye(n2)  # dominant bottom block
        out.append((f"block {n1}+{n2}, bottom dominant", C))
    out.append(("diagonal", np.diag([-1.0, 0.5, 0.2])))
    out.append(("paper", np.array([[-100.0, 50.0], [0.0, 0.0]])))
    return out


def _rounding(A):
    # The weights sit on the tolerance boundary by construction; allow for round-off there.
    return 1e-12 * max(1.0, np.abs(A).max())


@pytest.mark.parametrize("kind", ["log_norm", "norm"])
@pytest.mark.parametrize("name, A", _reducible_instances(), ids=lambda v: v if isinstance(v, str) else "")
def test_reducible_value_within_tolerance_of_infimum(kind, name, A, caplog):
    assert not c.is_irreducible(A)
    target = _infimum(A, kind)
    with caplog.at_level(logging.CRITICAL, logger="contraction"):
        eta, value = c.optimal_weights(A, kind=kind, tol=1e-6)
    assert target - 1e-12 <= value <= target + 1e-6 + _rounding(A)
    assert value == pytest.approx(_value(A, eta, kind), abs=1e-12 * max(1.0, abs(value)))
    assert np.all(eta > 0) and eta.max() == 1.0


@pytest.mark.parametrize("kind", ["log_norm", "norm"])
@PROPERTY
@given(seed=seeds, n=sizes)
def test_reducible_random_within_tolerance(kind, seed, n):
    # Random sparse, often triangular, permuted matrices: block-triangular after reordering.
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, n, float(np.exp(rng.uniform(-2, 2))), neg_diag=bool(rng.integers(2)))
    A[rng.random((n, n)) < rng.uniform(0.3, 0.9)] = 0.0
    if rng.integers(2):
        A = np.triu(A)
    perm = rng.permutation(n)
    A = A[np.ix_(perm, perm)]
    assume(not c.is_irreducible(A))
    tol = float(rng.choice([1e-4, 1e-6]))
    target = _infimum(A, kind)
    logger = logging.getLogger("contraction")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)  # the boundary warning is tested on its own below
    try:
        eta, value = c.optimal_weights(A, kind=kind, tol=tol)
    finally:
        logger.setLevel(previous)
    # The weights land on infimum + tol by construction, and the per-block Perron vectors
    # carry round-off amplified by weight ratios up to 1/tol: allow 1e-9 (relative) on top.
    slack = 1e-9 * max(1.0, np.abs(A).max())
    assert target - slack <= value <= target + tol + slack
    assert np.all(eta > 0) and eta.max() == 1.0
    assert value == pytest.approx(_value(A, eta, kind), abs=1e-12 * max(1.0, abs(value)))


def test_paper_matrix_optimal_weights():
    A = np.array([[-100.0, 50.0], [0.0, 0.0]])
    eta, value = c.optimal_weights(A)
    assert value == pytest.approx(0.0, abs=1e-9)  # α(⌈A⌉) = max(-100, 0)
    eta, value = c.optimal_weights(A, kind="norm")
    assert value == pytest.approx(100.0, rel=1e-9)  # ρ(|A|) = 100


@pytest.mark.parametrize("n", [3, 4, 8])
def test_reducible_nilpotent_within_tolerance(n, caplog):
    # Strictly upper-triangular: α(⌈A⌉) = 0, approached by η = (1, t, t², ...) as t → 0
    # (value ≤ t·max|a_ij|) but not attained.
    rng = np.random.default_rng(n)
    A = np.triu(rng.standard_normal((n, n)), 1)
    assert c.mu_inf(A, 1e-9 ** np.arange(n)) <= 1e-6  # such weights exist
    with caplog.at_level(logging.CRITICAL, logger="contraction"):
        eta, value = c.optimal_weights(A, tol=1e-6)
    assert 0.0 <= value <= 1e-6 + _rounding(A)
    assert np.all(eta > 0) and eta.max() == 1.0


def test_reducible_tolerance_met_without_warning(caplog):
    A = np.array([[0.0, 1.0], [0.0, 0.0]])  # a Jordan block: infimum 0, not attained
    with caplog.at_level(logging.WARNING, logger="contraction"):
        _, value = c.optimal_weights(A, tol=1e-6)
    assert not caplog.records
    assert value <= 1e-6


# An irreducible but nearly reducible majorant (couplings down to 4e-4, Perron vector entries
# from 1.7e-9 to 1): the infimum ρ = 3.01681828841638507 is attained at the exact Perron vector
# (checked with 50-digit mpmath: every row sum equals ρ to 4e-16).
_NEARLY_REDUCIBLE = {
    (0, 2): 0.12388666415915313, (1, 0): 0.08304875180374469, (1, 1): 1.84168715908444,
    (1, 2): 0.06679022054433582, (1, 3): 0.10100525638825605, (1, 4): 0.036167330757528475,
    (2, 3): 0.09511491556039352, (2, 7): 0.09239847259653125, (3, 0): 0.04641412398036683,
    (3, 1): 0.04351780054530934, (3, 4): 0.1041498158717664, (3, 6): 0.01448579934890112,
    (4, 5): 0.0004296517466054881, (5, 0): 0.032845525719224264, (5, 2): 0.10783745610245965,
    (5, 4): 0.054664937213267324, (5, 5): 3.0168104858659657, (6, 1): 0.03533364467753996,
    (6, 3): 0.04371087196737578, (6, 6): 2.9141221596048763, (7, 2): 0.03232296544931982,
}


@pytest.mark.parametrize("kind", ["log_norm", "norm"])
def test_nearly_reducible_irreducible_attains_infimum(kind, caplog):
    A = np.zeros((8, 8))
    for ij, v in _NEARLY_REDUCIBLE.items():
        A[ij] = v
    assert c.is_irreducible(A)
    target = 3.0168182884163851  # nonnegative A: α(⌈A⌉) = ρ(|A|)
    assert _infimum(A, kind) == pytest.approx(target, abs=1e-14)
    with caplog.at_level(logging.CRITICAL, logger="contraction"):
        _, value = c.optimal_weights(A, kind=kind)
    assert value == pytest.approx(target, abs=1e-8 * target)
