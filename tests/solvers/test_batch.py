"""Batch semantics: shapes, per-sample stopping, frozen converged samples, result fields."""

from __future__ import annotations

import numpy as np
import pytest

import contraction
import solvers
from _solver_helpers import ACTIVATION_SPECS, act_id, problem

GUARANTEED = ("average", "forward_backward", "peaceman_rachford", "douglas_rachford", "anderson")


@pytest.mark.parametrize("method", solvers.METHODS)
def test_single_vector_keeps_its_shape(method, engine):
    A, W = problem("norm", 0.9, False)
    res = solvers.solve(A, W[1], method=method, atol=1e-10, engine=engine, record=True)
    assert res.x.shape == (A.shape[0],)
    for field in ("converged", "iterations", "residual", "error_bound", "sample_status"):
        assert getattr(res, field).shape == (1,), field
    assert res.history.shape == (res.iterations[0] + 1, 1)
    # Exact products, as the recorded solve takes: the counts and solutions then agree.
    batch = solvers.solve(A, W, method=method, atol=1e-10, engine=engine)
    assert batch.x.shape == W.shape
    assert batch.iterations[1] == res.iterations[0]
    np.testing.assert_allclose(res.x, batch.x[1], rtol=0, atol=1e-13)


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
@pytest.mark.parametrize("method", GUARANTEED)
def test_per_sample_iterations_equal_single_solves(method, spec, engine):
    """Samples of very different sizes stop at different iterations; each sample's count and
    solution equal those of solving it alone (up to BLAS rounding: one row is a GEMV)."""
    A, W = problem("mu", 0.9, True)
    W = W[1] * np.array([1e-6, 1e-2, 1.0, 30.0, 0.0])[:, None]
    res = solvers.solve(A, W, method=method, activation=spec, atol=1e-10, engine=engine, record=True)
    assert res.success
    for s in range(W.shape[0]):
        one = solvers.solve(A, W[s], method=method, activation=spec, atol=1e-10, engine=engine)
        assert one.iterations[0] == res.iterations[s], s
        np.testing.assert_allclose(res.x[s], one.x, rtol=0, atol=1e-13)
        assert res.sample_status[s] == one.sample_status[0]
    assert len(set(res.iterations.tolist())) > 1  # the batch really is heterogeneous
    # History: one row per iteration of the slowest sample; NaN once a sample has stopped.
    h = res.history
    assert h.shape == (res.iterations.max() + 1, W.shape[0])
    for s, k in enumerate(res.iterations):
        assert np.all(np.isfinite(h[: k + 1, s])) and np.all(np.isnan(h[k + 1 :, s]))
        assert h[k, s] == res.residual[s]


@pytest.mark.parametrize("spec", ACTIVATION_SPECS, ids=act_id)
@pytest.mark.parametrize("method", GUARANTEED)
def test_converged_samples_are_frozen(method, spec, engine):
    """While both samples are active the block is the same, so the sample that stops first is
    bit-identical to a batch of two copies of it; and later iterations never touch it."""
    A, W = problem("mu", 0.5, False)
    pair = np.stack([W[2] * 1e-3, W[2] * 10.0])
    kw = dict(method=method, activation=spec, atol=1e-10, engine=engine)
    res = solvers.solve(A, pair, **kw)
    first = int(np.argmin(res.iterations))
    twin = solvers.solve(A, pair[[first, first]], **kw)
    assert twin.iterations[0] == res.iterations[first]
    np.testing.assert_array_equal(res.x[first], twin.x[0])
    # Stopping the batch right after the first sample converged gives that sample's x too.
    k = int(res.iterations[first])
    if res.iterations[1 - first] > k + 1:
        cut = solvers.solve(A, pair, **kw, max_iter=k + 1)
        np.testing.assert_array_equal(cut.x[first], res.x[first])
        assert cut.sample_status[first] == solvers.Status.SUCCESS
        assert cut.sample_status[1 - first] == solvers.Status.MAX_ITER


def test_mixed_outcomes_in_one_batch(engine):
    """Per-sample statuses; the overall status is the worst one."""
    A, W = problem("mu", 0.9, True)
    W = np.stack([np.zeros(A.shape[0]), W[3] * 10.0])
    res = solvers.solve(A, W, atol=1e-10, max_iter=5, engine=engine)
    np.testing.assert_array_equal(res.sample_status, [solvers.Status.SUCCESS, solvers.Status.MAX_ITER])
    np.testing.assert_array_equal(res.converged, [True, False])
    np.testing.assert_array_equal(res.iterations, [0, 5])
    assert res.status == solvers.Status.MAX_ITER and not res.success
    assert res.error_bound[0] == 0.0 and res.error_bound[1] > 0


def test_result_is_frozen_and_reports_configuration(engine):
    A, W = problem("mu", 0.5, True)
    res = solvers.solve(A, W, method="anderson", activation=("leaky_relu", 0.2), engine=engine)
    assert res.method == "anderson" and res.engine == engine and res.activation == "leaky_relu"
    assert res.alpha == contraction.optimal_alpha(A)
    assert res.history is None or res.history.size == 0
    assert res.message == res.status.message
    assert "anderson" in repr(res)
    with pytest.raises(AttributeError):
        res.x = None  # frozen dataclass


def test_history_is_none_without_record(engine, request):
    A, W = problem("mu", 0.5, False)
    assert solvers.solve(A, W, engine=engine).history is None
    _, ares = solvers.solve_adjoint(A, W, W, engine=engine)
    assert ares.history is None


def test_inputs_are_not_modified(engine):
    A, W = problem("mu", 0.9, True)
    x0 = np.ones_like(W)
    A0, W0, x00 = A.copy(), W.copy(), x0.copy()
    solvers.solve(A, W, method="douglas_rachford", x0=x0, engine=engine)
    solvers.solve_adjoint(A, W, W, lam0=x0, engine=engine)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(x0, x00)


def test_fortran_ordered_and_strided_inputs(engine):
    A, W = problem("mu", 0.5, True)
    ref = solvers.solve(A, W, atol=1e-12, engine="numpy")
    Wbig = np.zeros((W.shape[0], 2 * W.shape[1]))
    Wbig[:, ::2] = W
    res = solvers.solve(np.asfortranarray(A), Wbig[:, ::2], atol=1e-12, engine=engine)
    np.testing.assert_allclose(res.x, ref.x, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(res.iterations, ref.iterations)
