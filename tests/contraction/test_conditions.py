"""Well-posedness report: values against direct formulas, implications, and the LBEN LMI."""

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import given

import contraction as c
from _contraction_helpers import PROPERTY, random_matrix, random_weights, seeds, sizes

CHEAP = ("nemon", "nemon_weighted", "idl_norm", "idl_spectral", "mon")
PAPER = np.array([[-100.0, 50.0], [0.0, 0.0]])


def _varied(rng, n):
    """Random matrices on a log-uniform scale so that every condition sometimes holds."""
    scale = float(np.exp(rng.uniform(np.log(0.05), np.log(4.0))))
    A = random_matrix(rng, n, scale, neg_diag=bool(rng.integers(3) == 0))
    if rng.integers(4) == 0:
        A[rng.random((n, n)) < 0.5] = 0.0
    return A


def _direct(A, eta=None):
    n = A.shape[0]
    eta = np.ones(n) if eta is None else eta
    S = np.diag(1 / eta) @ A @ np.diag(eta)
    M = np.abs(A)
    np.fill_diagonal(M, np.diagonal(A))
    offdiag = np.abs(S) - np.diag(np.abs(np.diagonal(S)))
    return {
        "nemon": max(S[i, i] + offdiag[i].sum() for i in range(n)),
        "nemon_weighted": max(np.linalg.eigvals(M).real),
        "idl_norm": np.abs(A).sum(axis=1).max(),
        "idl_spectral": max(abs(np.linalg.eigvals(np.abs(A)))),
        "mon": max(np.linalg.eigvalsh((A + A.T) / 2)),
    }


@PROPERTY
@given(seed=seeds, n=sizes)
def test_report_values_match_direct_formulas(seed, n):
    rng = np.random.default_rng(seed)
    A = _varied(rng, n)
    eta = random_weights(rng, n) if rng.integers(2) else None
    report = c.wellposedness(A, eta=eta, conditions=CHEAP)
    direct = _direct(A, eta)
    assert [r.name for r in report] == list(CHEAP)
    assert report.n == n
    for name in CHEAP:
        r = report[name]
        assert r.value == pytest.approx(direct[name], abs=1e-9 * max(1.0, np.abs(A).sum()))
        assert r.holds == (r.value < 1.0)
        assert r.margin == 1.0 - r.value
        assert (r.formula, r.origin) == c.CONDITIONS[name]
    assert report.any_holds == any(r.holds for r in report)


def _check_implications(report, A):
    tol = 1e-10 * max(1.0, np.abs(A).sum())
    v = {r.name: r.value for r in report}
    # value orderings behind the implications
    assert v["nemon"] <= v["idl_norm"] + tol
    assert v["nemon_weighted"] <= v["idl_spectral"] + tol
    assert v["nemon_weighted"] <= v["nemon"] + tol
    assert v["idl_spectral"] <= v["idl_norm"] + tol
    # the implications themselves
    if report["idl_norm"].holds:
        assert report["nemon"].holds
    if report["idl_spectral"].holds:
        assert report["nemon_weighted"].holds
    if report["nemon"].holds:
        assert report["nemon_weighted"].holds
    if report["idl_norm"].holds:
        assert report["idl_spectral"].holds


@PROPERTY
@given(seed=seeds, n=sizes)
def test_implications_property(seed, n):
    rng = np.random.default_rng(seed)
    A = _varied(rng, n)
    _check_implications(c.wellposedness(A, conditions=CHEAP), A)


def test_implications_on_many_matrices_each_condition_both_ways():
    rng = np.random.default_rng(7)
    seen = {name: set() for name in CHEAP}
    for _ in range(400):
        n = int(rng.integers(1, 9))
        A = _varied(rng, n)
        report = c.wellposedness(A, conditions=CHEAP)
        _check_implications(report, A)
        for r in report:
            seen[r.name].add(r.holds)
    # non-vacuous: each condition held on some matrices and failed on others
    assert all(s == {True, False} for s in seen.values()), seen


def test_weighted_nemon_uses_eta():
    eta = np.array([1.0, 2.0])
    A = np.array([[0.0, 0.9], [0.0, 0.0]])  # μ∞ = 0.9; with η = (1, 2): 0.9·2 = 1.8
    assert c.wellposedness(A, conditions=["nemon"])["nemon"].holds
    r = c.wellposedness(A, eta=eta, conditions=["nemon"])["nemon"]
    assert r.value == pytest.approx(1.8) and not r.holds
    # optimal weights of a well-posed-by-weights matrix make nemon hold
    A = np.array([[0.0, 5.0], [0.01, 0.0]])  # α(⌈A⌉) = sqrt(0.05)
    report = c.wellposedness(A, conditions=CHEAP)
    assert not report["nemon"].holds and report["nemon_weighted"].holds
    eta, _ = c.optimal_weights(A)
    assert c.wellposedness(A, eta=eta, conditions=["nemon"])["nemon"].value == pytest.approx(np.sqrt(0.05))


def test_paper_example():
    report = c.wellposedness(PAPER)
    assert report["nemon"].holds and report["nemon"].value == 0.0
    assert report["nemon_weighted"].holds
    assert not report["mon"].holds
    assert not report["idl_norm"].holds and report["idl_norm"].value == 150.0
    assert not report["idl_spectral"].holds and report["idl_spectral"].value == pytest.approx(100.0)
    # I − A is triangular with positive diagonal, so a diagonal Λ exists (and lben ≤ μ2 anyway).
    assert report["lben"].holds


def test_table_lists_every_condition():
    report = c.wellposedness(PAPER)
    table = report.table()
    for name, (formula, _) in c.CONDITIONS.items():
        assert name in table
        assert formula in table
    assert str(report) == table
    assert len(table.splitlines()) == 2 + len(c.CONDITIONS)


def test_subset_and_order_of_conditions():
    report = c.wellposedness(PAPER, conditions=["mon", "nemon"])
    assert [r.name for r in report] == ["mon", "nemon"]
    with pytest.raises(KeyError, match="idl_norm"):
        report["idl_norm"]


def test_unknown_condition_raises():
    with pytest.raises(ValueError, match="conditions"):
        c.wellposedness(PAPER, conditions=["nemon", "bogus"])


def test_report_unknown_key_raises_key_error():
    report = c.wellposedness(PAPER, conditions=CHEAP)
    with pytest.raises(KeyError):
        report["x"]


def test_condition_result_is_frozen():
    r = c.wellposedness(PAPER, conditions=["nemon"])["nemon"]
    with pytest.raises(AttributeError):
        r.value = 3.0


# ---------------------------------------------------------------------------------------
# LBEN: a semidefinite program, so few and small cases
# ---------------------------------------------------------------------------------------


def _lben_cases():
    rng = np.random.default_rng(11)
    cases = [("paper", PAPER)]
    for k, n in enumerate((2, 3, 4, 5, 6)):
        # monotone (mon holds) ...
        A = random_matrix(rng, n, 1.0)
        A -= (c.mu_2(A) - 0.7) * np.eye(n)
        cases.append((f"mon n={n}", A))
    for n in (2, 4, 6):
        # ... nemon_weighted but not mon: weights needed, a strongly non-normal matrix
        A = random_matrix(rng, n, 0.3, neg_diag=True)
        A[0, -1] = 40.0
        cases.append((f"nemon not mon n={n}", A))
    cases.append(("ill-posed", np.array([[2.0, 0.0], [0.0, -1.0]])))
    cases.append(("rotation", np.array([[0.5, -3.0], [3.0, 0.5]])))
    return cases


def _feasible_lambda(A, slack):
    """A diagonal Λ (trace n) with sym(Λ(I − A)) ⪰ slack·I, from a cvxpy feasibility program."""
    n = A.shape[0]
    lam = cp.Variable(n)
    IA = np.eye(n) - A
    M = cp.diag(lam) @ IA
    cons = [lam >= 0, cp.sum(lam) == n, 0.5 * (M + M.T) >> slack * np.eye(n)]
    cp.Problem(cp.Minimize(0), cons).solve(solver=cp.CLARABEL)
    return lam.value


@pytest.mark.parametrize("name, A", _lben_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_lben(name, A):
    report = c.wellposedness(A)
    lben, mon = report["lben"], report["mon"]
    # lben_value comes from cvxpy's default SDP solver (SCS here, ~1e-5 accurate); the
    # exactness of the bound is tested separately (test_lben_value_not_above_mu_2_exactly).
    assert lben.value <= mon.value + 1e-4 * max(1.0, abs(mon.value))
    if mon.holds:
        assert lben.holds
    # Theorem (Araki; Barker-Berman-Plemmons): α(⌈A⌉) < 1 makes I − A a nonsingular
    # H-matrix with positive diagonal, which is Lyapunov diagonally stable.
    if report["nemon_weighted"].holds:
        assert lben.holds
    if lben.holds:
        lam = _feasible_lambda(A, 0.5 * lben.margin)
        assert lam is not None
        L = np.diag(lam)
        IA = np.eye(A.shape[0]) - A
        assert np.all(lam > 0)
        assert np.linalg.eigvalsh(L @ IA + IA.T @ L).min() > 0
    else:
        # infeasible: no Λ = I certificate either
        assert not mon.holds


def test_lben_cases_cover_both_outcomes():
    holds = {c.wellposedness(A, conditions=["lben"])["lben"].holds for _, A in _lben_cases()}
    assert holds == {True, False}


def test_lben_can_hold_where_mon_fails():
    _, A = next(case for case in _lben_cases() if case[0] == "nemon not mon n=2")
    report = c.wellposedness(A, conditions=["mon", "lben"])
    assert not report["mon"].holds and report["lben"].holds


def test_lben_value_of_scalar():
    # n = 1: Λ = 1 (trace 1), sym = 1 − a, so t* = 1 − a and the value is a.
    for a in (-2.0, 0.3, 1.5):
        assert c.lben_value(np.array([[a]])) == pytest.approx(a, abs=1e-4)


def test_lben_value_not_above_mu_2_exactly():
    # Λ = I is feasible with t = 1 − μ2(A), so the optimum satisfies lben_value ≤ μ2(A):
    # mon ⇒ lben must hold even with a small margin.
    A = np.array([[1.0 - 1e-6, -3.0], [3.0, 1.0 - 1e-6]])  # μ2 = 1 − 1e-6 (normal matrix)
    report = c.wellposedness(A, conditions=["mon", "lben"])
    assert report["mon"].holds
    assert report["lben"].value <= report["mon"].value + 1e-8
    assert report["lben"].holds
