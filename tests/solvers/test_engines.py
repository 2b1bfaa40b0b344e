"""Compiled engines against the numpy specification; dtypes (float32 end to end, promotion)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import solvers
from _solver_helpers import ACTIVATION_SPECS, act_id, problem

CASES = (("mu", 0.5, False), ("mu", 0.9, True), ("mu", -0.5, True), ("mu", 0.99, False), ("norm", 0.9, True))


def _cases(method):
    return [c for c in CASES if c[0] == "norm"] if method == "picard" else CASES


def _assert_same(ref, got, tag, x_rtol=1e-12, hist_atol=0.0):
    assert got.status == ref.status, tag
    np.testing.assert_array_equal(got.sample_status, ref.sample_status, err_msg=str(tag))
    np.testing.assert_array_equal(got.iterations, ref.iterations, err_msg=str(tag))
    np.testing.assert_array_equal(got.converged, ref.converged, err_msg=str(tag))
    scale = max(1.0, np.abs(ref.x).max())
    np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=x_rtol * scale, err_msg=str(tag))
    np.testing.assert_allclose(got.residual, ref.residual, rtol=1e-6, atol=1e-14 + hist_atol, err_msg=str(tag))
    assert got.history.shape == ref.history.shape, tag
    np.testing.assert_array_equal(np.isnan(got.history), np.isnan(ref.history), err_msg=str(tag))
    np.testing.assert_allclose(got.history, ref.history, rtol=1e-8, atol=1e-14 + hist_atol, equal_nan=True, err_msg=str(tag))


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
@pytest.mark.parametrize("method", solvers.METHODS)
def test_compiled_engine_matches_numpy(method, spec, compiled_engine):
    for kind, param, nd in _cases(method):
        A, W = problem(kind, param, nd)
        kw = dict(method=method, activation=spec, atol=1e-10, record=True, max_iter=5000)
        ref = solvers.solve(A, W, engine="numpy", **kw)
        got = solvers.solve(A, W, engine=compiled_engine, **kw)
        assert ref.success, (kind, param, nd)
        assert got.x.dtype == np.float64 and got.engine == compiled_engine
        # Anderson's least-squares solve amplifies rounding (BLAS vs loops) a little:
        # its residual history agrees to ~1e-9 of the starting residual.
        hist_atol = 1e-9 * ref.history[0].max() if method == "anderson" else 0.0
        _assert_same(ref, got, (kind, param, nd), hist_atol=hist_atol)
        # The a-posteriori bound is a residual of O(1) quantities recomputed at the final
        # iterate, then amplified by 1/(1 − μ): each engine's rounding (which differed between
        # this project's machines) reaches ~1e-13 there, four orders below
        # the bounds themselves (~1e-9 to 1e-8), which still have to agree.
        np.testing.assert_allclose(got.error_bound, ref.error_bound, rtol=1e-6, atol=1e-12 + 10 * hist_atol)


@pytest.mark.parametrize("method", ("picard", "average", "anderson"))
def test_compiled_adjoint_matches_numpy(method, compiled_engine):
    for spec in ACTIVATION_SPECS:
        A, W = problem("norm", 0.9, True)
        Z = W + 0.5
        G = np.random.default_rng(1).standard_normal(W.shape)
        kw = dict(method=method, activation=spec, atol=1e-11, record=True)
        lam_ref, ref = solvers.solve_adjoint(A, Z, G, engine="numpy", **kw)
        lam, got = solvers.solve_adjoint(A, Z, G, engine=compiled_engine, **kw)
        np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=1e-12 * np.abs(lam_ref).max())
        np.testing.assert_array_equal(got.iterations, ref.iterations)
        np.testing.assert_array_equal(got.sample_status, ref.sample_status)
        hist_atol = 1e-9 * ref.history[0].max() if method == "anderson" else 1e-15
        np.testing.assert_allclose(got.history, ref.history, rtol=1e-8, atol=hist_atol, equal_nan=True)


def test_compiled_engine_matches_numpy_on_failures(compiled_engine):
    """Outside the guarantee the engines still agree: same statuses at the same iterations."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((6, 6)) * 4.0 / np.sqrt(6)
    W = rng.standard_normal((3, 6))
    statuses = set()
    for method in ("picard", "average", "forward_backward"):
        for spec in ("relu", "tanh"):
            kw = dict(method=method, activation=spec, max_iter=200, record=True, check=False)
            ref = solvers.solve(A, W, engine="numpy", **kw)
            got = solvers.solve(A, W, engine=compiled_engine, **kw)
            statuses.update(solvers.Status(c) for c in ref.sample_status)
            np.testing.assert_array_equal(got.sample_status, ref.sample_status)
            np.testing.assert_array_equal(got.iterations, ref.iterations)
            np.testing.assert_allclose(got.history, ref.history, rtol=1e-6, equal_nan=True)
    assert {solvers.Status.DIVERGED, solvers.Status.MAX_ITER} <= statuses, statuses


# --- dtypes ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
@pytest.mark.parametrize("method", solvers.METHODS)
def test_float32_end_to_end(method, spec, engine):
    kind, param, nd = ("norm", 0.9, True) if method == "picard" else ("mu", 0.9, True)
    A, W = problem(kind, param, nd)
    ref = solvers.solve(A, W, method=method, activation=spec, atol=1e-12, engine="numpy", max_iter=20_000)
    res = solvers.solve(
        A.astype(np.float32), W.astype(np.float32), method=method, activation=spec, atol=1e-5,
        engine=engine, max_iter=20_000,
    )
    assert res.success, res
    assert res.x.dtype == np.float32
    np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=1e-4)
    assert np.all(res.residual <= 1e-5)


def test_float32_tolerance_below_resolution_warns(engine):
    A, W = problem("mu", 0.5, False)
    with pytest.warns(UserWarning, match="float32"):
        res = solvers.solve(A.astype(np.float32), W.astype(np.float32), atol=1e-9, max_iter=50, engine=engine)
    assert res.x.dtype == np.float32
    # check=False silences it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solvers.solve(A.astype(np.float32), W.astype(np.float32), atol=1e-9, max_iter=5, engine=engine, check=False)


@pytest.mark.parametrize(
    "a_dtype,w_dtype",
    [(np.float32, np.float64), (np.float64, np.float32), (np.int64, np.float32), (np.float32, np.int64), (np.float16, np.float32)],
)
def test_mixed_dtypes_promote_to_float64(a_dtype, w_dtype, engine):
    A = np.array([[0, 1], [-1, 0]]) if np.issubdtype(a_dtype, np.integer) else np.array([[0.25, 0.5], [-0.5, 0.25]])
    A = A * (0.5 if not np.issubdtype(a_dtype, np.integer) else 1)
    W = np.array([[1, 2], [3, -1]])
    if np.issubdtype(a_dtype, np.integer):
        A = np.array([[0, 0], [0, 0]])
    res = solvers.solve(A.astype(a_dtype), W.astype(w_dtype), atol=1e-12, engine=engine)
    assert res.success
    assert res.x.dtype == np.float64
    ref = solvers.solve(A.astype(np.float64), W.astype(np.float64), atol=1e-12, engine="numpy")
    np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=1e-11)


def test_float32_x0_and_lists(engine):
    """Python lists are float64; a float64 x0 does not change the float32 working dtype."""
    A = [[0.5, 0.0], [0.25, 0.5]]
    res = solvers.solve(A, [1.0, 2.0], engine=engine, atol=1e-12)
    assert res.x.dtype == np.float64 and res.x.shape == (2,)
    A32, W32 = np.asarray(A, np.float32), np.asarray([1.0, 2.0], np.float32)
    res = solvers.solve(A32, W32, x0=np.array([2.0, 5.0]), engine=engine, atol=1e-5)
    assert res.x.dtype == np.float32 and res.success
    np.testing.assert_allclose(res.x, [2.0, 5.0], atol=1e-4)
    assert res.iterations[0] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("engine_name", ["numpy", "numba", "cuda"])
def test_switched_off_units_reach_zero_without_subnormal_numbers(engine_name, dtype):
    """A unit that ReLU turns off decays as (1 − α)^k under the averaged step; below 1e-30 it is
    set to 0 (kernels.FLUSH): subnormal numbers would slow every later product on the CPU. At
    α = 0.75 the iterate 0.25^k is 3.2e-30 at k = 49 and 0 at k = 50, where the residual is 0;
    without the flush it would underflow only at k = 75 (float32) or 538 (float64). The adjoint
    iteration decays the same way where σ'(z) = 0."""
    A = np.zeros((3, 3), dtype)
    ones = np.ones((2, 3), dtype)
    kw = dict(method="average", alpha=0.75, atol=0.0, max_iter=600, engine=engine_name, record=True)
    res = solvers.solve(A, -ones, activation="relu", x0=ones, **kw)
    lam, adj = solvers.solve_adjoint(A, -ones, 0 * ones, activation="relu", lam0=ones, **kw)
    tiny = np.finfo(dtype).tiny
    for r, x, norm in ((res, res.x, 1), (adj, lam, 3)):  # residuals: ‖·‖∞ forward, ‖·‖₁ adjoint
        assert r.success and x.dtype == dtype and np.all(x == 0)
        np.testing.assert_array_equal(r.iterations, [50, 50])
        decay = norm * 0.25 ** np.arange(50)[:, None]
        np.testing.assert_allclose(r.history[:50], np.broadcast_to(decay, (50, 2)), rtol=1e-6)
        h = r.history[np.isfinite(r.history)]
        assert not np.any((h != 0) & (np.abs(h) < tiny))  # never a subnormal residual
