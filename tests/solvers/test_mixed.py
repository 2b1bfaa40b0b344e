"""Mixed products (``precision="mixed"``, the numba engine's default for float64 solves).

Between exact float64 products the engine updates ``A x + w`` by the float32 product of each
step. Whatever that rounding does to the path, the contract of an exact solve must hold:
samples stop only on an exact product, so every reported residual is the exact residual of
the returned ``x``, the statuses are the exact solve's, and the solution agrees with the
exact solve's within their two error bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contraction
import solvers
from _solver_helpers import ACTIVATION_SPECS, MUS, act_id, dense_adjoint, dsigma, problem, residual, well_posed

MIXED = ("picard", "average", "forward_backward")


def _pair(A, W, **kw):
    """The same solve with exact and with mixed products."""
    exact = solvers.solve(A, W, precision="exact", **kw)
    mixed = solvers.solve(A, W, precision="mixed", **kw)
    assert exact.precision == "exact" and mixed.precision == "mixed"
    return exact, mixed


def _assert_exact_contract(A, W, spec, exact, mixed, atol, slack=2):
    """Same statuses; the reported residual is the exact one of the returned x and meets
    atol; the solutions agree within both error bounds; at most ``slack`` more or fewer
    iterations per sample."""
    np.testing.assert_array_equal(mixed.sample_status, exact.sample_status)
    x = np.atleast_2d(mixed.x)
    scale = np.abs(x).max(axis=1)
    recomputed = residual(A, W, x, spec)
    # Two BLAS libraries sum A x in different orders: a few ulps of |x|.
    np.testing.assert_allclose(mixed.residual, recomputed, rtol=0, atol=4 * np.finfo(float).eps * max(1.0, scale.max()))
    assert np.all(mixed.residual[mixed.converged] <= atol)
    gap = np.abs(x - np.atleast_2d(exact.x)).max(axis=1)
    assert np.all(gap <= mixed.error_bound + exact.error_bound + 1e-12 * np.maximum(1.0, scale))
    assert np.all(np.abs(mixed.iterations - exact.iterations) <= slack), (mixed.iterations, exact.iterations)


@pytest.mark.parametrize(
    "kw, expected",
    [
        (dict(), "mixed"),
        (dict(method="picard"), "mixed"),
        (dict(method="forward_backward"), "mixed"),
        (dict(method="anderson"), "exact"),
        (dict(method="peaceman_rachford"), "exact"),
        (dict(method="douglas_rachford"), "exact"),
        (dict(record=True), "exact"),
        (dict(engine="numpy"), "exact"),
        (dict(dtype=np.float32), "exact"),
        (dict(precision="exact"), "exact"),
    ],
)
def test_auto_takes_mixed_products_where_they_apply(kw, expected):
    A, W = problem("norm", 0.9, False)  # picard is guaranteed here
    dtype = kw.pop("dtype", np.float64)
    res = solvers.solve(A.astype(dtype), W.astype(dtype), atol=1e-6, **kw)
    assert res.success and res.precision == expected


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(method="anderson"), "anderson"),
        (dict(method="douglas_rachford"), "douglas_rachford"),
        (dict(record=True), "record"),
        (dict(engine="numpy"), "numpy"),
        (dict(dtype=np.float32), "float32"),
    ],
)
def test_mixed_where_it_does_not_apply_is_a_value_error(kw, needle):
    A, W = problem("norm", 0.9, False)
    dtype = kw.pop("dtype", np.float64)
    with pytest.raises(ValueError, match="precision") as info:
        solvers.solve(A.astype(dtype), W.astype(dtype), atol=1e-5, precision="mixed", **kw)
    assert needle in str(info.value)


@pytest.mark.parametrize("bad", ["float16", "Mixed", None, 32])
def test_unknown_precision_is_a_type_error(bad):
    A, W = problem("norm", 0.9, False)
    with pytest.raises(TypeError, match="precision"):
        solvers.solve(A, W, precision=bad)
    with pytest.raises(TypeError, match="precision"):
        solvers.solve_adjoint(A, W, W, precision=bad)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 40),
    batch=st.integers(1, 40),
    mu=st.sampled_from(MUS),
    neg_diag=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    spec=st.sampled_from(ACTIVATION_SPECS),
    method=st.sampled_from(("average", "forward_backward")),
)
def test_mixed_solves_keep_the_exact_contract(seed, n, batch, mu, neg_diag, scale, spec, method):
    rng = np.random.default_rng(seed)
    A = well_posed(rng, n, mu, neg_diag)
    W = scale * rng.standard_normal((batch, n))
    atol = 1e-9 * max(1.0, scale)
    exact, mixed = _pair(A, W, method=method, activation=spec, atol=atol, max_iter=20_000, check=False)
    assert exact.success
    _assert_exact_contract(A, W, spec, exact, mixed, atol)


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
def test_picard_under_its_norm_guarantee(spec):
    A, W = problem("norm", 0.99, True)
    exact, mixed = _pair(A, W, method="picard", activation=spec, atol=1e-11, max_iter=20_000)
    assert exact.success
    _assert_exact_contract(A, W, spec, exact, mixed, 1e-11)


@pytest.mark.parametrize("method", MIXED)
def test_float32_drift_far_above_the_tolerance_is_refreshed(method):
    """With |w| ~ 1e4 the float32 products are off by ~1e-3, five orders above atol: without
    the exact refreshes the residual would stall there. The mixed solve needs no more than
    two extra iterations per sample."""
    rng = np.random.default_rng(7)
    n = 60
    A = well_posed(rng, n, 0.9)
    if method == "picard":
        A = contraction.project_norm_inf(A, 0.9)
    W = 1e4 * rng.standard_normal((50, n))
    kw = dict(method=method, atol=1e-8, check=False)
    exact = solvers.solve(A, W, precision="exact", **kw)
    assert exact.success
    mixed = solvers.solve(A, W, precision="mixed", max_iter=int(exact.iterations.max()) + 2, **kw)
    _assert_exact_contract(A, W, "relu", exact, mixed, 1e-8)


def test_steps_beyond_float32_range_are_taken_exactly():
    """|w| ~ 1e39 overflows float32 (max 3.4e38): no spurious NONFINITE, the exact result."""
    A, W = problem("mu", 0.9, True)
    W = 1e39 * W
    exact, mixed = _pair(A, W, atol=0.0, rtol=1e-12)
    assert exact.success
    np.testing.assert_array_equal(mixed.iterations, exact.iterations)
    np.testing.assert_allclose(mixed.x, exact.x, rtol=1e-10)


@pytest.mark.parametrize("method", MIXED)
@pytest.mark.parametrize("scale, status", [(1.0, solvers.Status.DIVERGED), (1e303, solvers.Status.NONFINITE)])
def test_failures_are_reported_as_the_exact_solve_reports_them(method, scale, status):
    """An approximate pass never decides: a residual that grew 1e6-fold or overflowed is
    recomputed exactly, so the status and the iteration it is found at are the exact ones."""
    rng = np.random.default_rng(0)
    n = 30
    A = 1.5 * np.eye(n) + 0.1 * rng.standard_normal((n, n))
    W = scale * rng.standard_normal((20, n))
    alpha = None if method == "picard" else 1.0
    exact, mixed = _pair(A, W, method=method, alpha=alpha, activation=("leaky_relu", 0.5), check=False)
    assert np.all(exact.sample_status == status)
    np.testing.assert_array_equal(mixed.sample_status, exact.sample_status)
    np.testing.assert_array_equal(mixed.iterations, exact.iterations)


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
def test_mixed_adjoint_keeps_the_exact_contract(spec):
    """ℓ1 residual of ``λ = g + (λ ⊙ σ'(z)) A``: reported exactly, λ near the dense solve."""
    rng = np.random.default_rng(3)
    n = 40
    A = well_posed(rng, n, 0.9)
    Z = rng.standard_normal((30, n))
    G = 100.0 * rng.standard_normal((30, n))
    kw = dict(activation=spec, atol=1e-9)
    lam_e, exact = solvers.solve_adjoint(A, Z, G, precision="exact", **kw)
    lam_m, mixed = solvers.solve_adjoint(A, Z, G, precision="mixed", **kw)
    assert exact.success and mixed.success and mixed.precision == "mixed"
    assert np.all(np.abs(mixed.iterations - exact.iterations) <= 2)
    recomputed = np.abs(G + (lam_m * dsigma(spec, Z)) @ A - lam_m).sum(axis=1)
    np.testing.assert_allclose(mixed.residual, recomputed, rtol=1e-6, atol=1e-12)
    assert np.all(mixed.residual <= 1e-9)
    np.testing.assert_allclose(lam_m, dense_adjoint(A, Z, G, spec), rtol=0, atol=1e-8)


def test_mixed_batch_and_single_solves_agree():
    """Each sample of a heterogeneous batch (sizes 1e-6 to 30) agrees with its own solve."""
    A, W = problem("mu", 0.9, True)
    W = W[1] * np.array([1e-6, 1e-2, 1.0, 30.0, 0.0])[:, None]
    batch = solvers.solve(A, W, atol=1e-10, precision="mixed")
    for s in range(W.shape[0]):
        one = solvers.solve(A, W[s], atol=1e-10, precision="mixed")
        assert abs(int(one.iterations[0]) - int(batch.iterations[s])) <= 2
        np.testing.assert_allclose(one.x, batch.x[s], rtol=0, atol=one.error_bound[0] + batch.error_bound[s])


@pytest.mark.parametrize("norm, axis", [(0, 0), (1, 1)])
def test_float32_error_constant(norm, axis):
    """``K ‖d‖`` bounds the float32 product's error: ``(n + 3) u₃₂`` times the norm of
    ``d ↦ d Mat`` (largest column sum of ``|Mat|`` in ℓ∞, largest row sum in ℓ1)."""
    from solvers._numba_engine import _mixed_setup

    Mat = np.random.default_rng(norm).standard_normal((37, 37))
    Mat32, K = _mixed_setup(Mat, norm)
    np.testing.assert_array_equal(Mat32, Mat.astype(np.float32))
    assert K == pytest.approx(40 * 2.0**-24 * np.abs(Mat).sum(axis=axis).max(), rel=1e-12)
