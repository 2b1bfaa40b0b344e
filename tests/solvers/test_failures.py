"""Failure is data by default and an exception on request; warnings state the margin."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import contraction
import solvers
from solvers import NotGuaranteedWarning, Status


def _ill_posed():
    A, B = contraction.example("ill-posed", n=6, seed=0)
    W = np.random.default_rng(0).standard_normal((3, 6))
    return A, W


def test_ill_posed_picard_fails_as_data_with_a_warning(engine):
    A, W = _ill_posed()
    assert contraction.spectral_abscissa(contraction.metzler_majorant(A)) >= 1
    with pytest.warns(NotGuaranteedWarning, match="margin") as record:
        res = solvers.solve(A, W, method="picard", engine=engine, max_iter=300)
    assert res.status in (Status.DIVERGED, Status.MAX_ITER)
    assert not res.success and not res.converged.all()
    assert set(res.sample_status.tolist()) <= {int(Status.SUCCESS), int(Status.MAX_ITER), int(Status.DIVERGED)}
    msg = str(record[0].message)
    assert "picard" in msg and "not guaranteed" in msg and "not well-posed" in msg
    # The warning points at the caller, not at the library.
    assert record[0].filename == __file__
    assert np.all(np.isinf(res.error_bound))  # no certificate without a contraction


def test_scalar_divergence_closed_form(engine):
    """A = [[3]], w = 1, relu, picard: x_k = (3^k − 1)/2, r_k = 3^k; DIVERGED at the first
    k with 3^k > 1e6 · r_0, i.e. k = 13."""
    with pytest.warns(NotGuaranteedWarning, match="margin"):
        res = solvers.solve([[3.0]], [1.0], method="picard", engine=engine, record=True)
    assert res.status == Status.DIVERGED
    assert res.iterations[0] == 13
    np.testing.assert_allclose(res.history[:, 0], 3.0 ** np.arange(14), rtol=1e-12)
    np.testing.assert_allclose(res.x, [(3.0**13 - 1) / 2], rtol=1e-12)


def test_scalar_two_cycle_runs_out_of_iterations(engine):
    """A = [[−3]], w = 0.5, hard tanh: picard falls into the 2-cycle ±1 (MAX_ITER, bounded
    residual), while average with α* = 1/4 converges to x* = 1/8 (factor 3/4)."""
    with pytest.warns(NotGuaranteedWarning, match=r"picard needs \|\|A\|\|_inf < 1.*margin"):
        res = solvers.solve([[-3.0]], [0.5], method="picard", activation="hard_tanh", max_iter=50, engine=engine)
    assert res.status == Status.MAX_ITER and res.iterations[0] == 50
    assert abs(res.x[0]) == 1.0 and res.residual[0] == 2.0
    avg = solvers.solve([[-3.0]], [0.5], activation="hard_tanh", atol=1e-12, engine=engine, record=True)
    assert avg.success and avg.alpha == 0.25
    np.testing.assert_allclose(avg.x, [0.125], atol=1e-12)
    h = avg.history[:, 0]
    assert np.all(h[1:] <= 0.75 * h[:-1] + 1e-15)


def test_step_above_alpha_star_warns(engine):
    A = contraction.project_mu_inf(-3 * np.eye(4) + 0.1, 0.5)
    alpha_star = contraction.optimal_alpha(A)
    with pytest.warns(NotGuaranteedWarning, match=r"margin.*alpha <="):
        solvers.solve(A, np.ones(4), alpha=1.0, engine=engine, max_iter=20)
    # Outside the guarantee on request: check=False is silent.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solvers.solve(A, np.ones(4), alpha=1.0, engine=engine, max_iter=20, check=False)
        solvers.solve(A, np.ones(4), alpha=alpha_star, engine=engine, max_iter=20)


def test_adjoint_outside_guarantee_warns(engine):
    A, W = _ill_posed()
    with pytest.warns(NotGuaranteedWarning, match="^adjoint: .*margin"):
        lam, res = solvers.solve_adjoint(A, W, W, method="picard", engine=engine, max_iter=50)
    assert not res.success


def test_raise_on_failure(engine):
    A, W = _ill_posed()
    with pytest.raises(solvers.NoConvergence) as info:
        solvers.solve(A, W, method="picard", engine=engine, max_iter=40, raise_on_failure=True, check=False)
    result = info.value.result
    assert isinstance(result, solvers.FixedPointResult)
    assert result.status in (Status.DIVERGED, Status.MAX_ITER)
    text = str(info.value)
    assert "picard" in text and engine in text and result.status.name in text
    assert isinstance(info.value, RuntimeError)
    # Success does not raise.
    A2, W2 = contraction.project_mu_inf(A, 0.5), W
    assert solvers.solve(A2, W2, engine=engine, raise_on_failure=True).success


def test_adjoint_raise_on_failure(engine):
    A, W = _ill_posed()
    with pytest.raises(solvers.NoConvergence) as info:
        solvers.solve_adjoint(A, W, W, engine=engine, max_iter=3, raise_on_failure=True, check=False)
    assert isinstance(info.value.result, solvers.AdjointResult)
    assert not info.value.result.success


def _nonfinite_solve(engine, **kw):
    # A finite input whose second iterate overflows: z_1 = 1e200 · 1e200 = inf.
    return solvers.solve([[1e200]], [1.0], alpha=1e200, engine=engine, check=False, record=True, **kw)


def test_nonfinite_iterates_are_reported(engine):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's overflow warning: see below
        res = _nonfinite_solve(engine)
    assert res.status == Status.NONFINITE
    assert res.sample_status[0] == Status.NONFINITE and not res.converged[0]
    assert res.iterations[0] == 1
    assert not np.isfinite(res.residual[0])
    assert res.history.shape == (2, 1) and res.history[0, 0] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(solvers.NoConvergence, match="NONFINITE"):
            _nonfinite_solve(engine, raise_on_failure=True)


def test_nonfinite_is_silent(engine, request):
    """Failure is data: a NONFINITE outcome should not also raise floating-point warnings
    (which become errors under ``-W error``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _nonfinite_solve(engine)
    assert res.status == Status.NONFINITE


def test_nonfinite_residual_matches_numpy(compiled_engine, request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = _nonfinite_solve("numpy")
    got = _nonfinite_solve(compiled_engine)
    np.testing.assert_array_equal(got.residual, ref.residual)
    np.testing.assert_array_equal(got.history, ref.history)


def test_anderson_zero_factor_is_silent(engine, request):
    """A = 0 gives an averaged factor of exactly 0, so anderson's acceptance threshold is
    0 · (first residual = inf) = NaN on the first step."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = solvers.solve(np.zeros((1, 1)), [[0.64], [-0.13]], method="anderson", engine=engine)
    assert res.success
    np.testing.assert_array_equal(res.iterations, [1, 0])
    np.testing.assert_array_equal(res.x[:, 0], [0.64, 0.0])


def test_status_messages_are_sentences():
    assert [s.name for s in Status] == ["SUCCESS", "MAX_ITER", "DIVERGED", "NONFINITE"]
    for status in Status:
        msg = status.message
        assert isinstance(msg, str) and len(msg.split()) >= 4, status
    # Failure messages say what to do.
    for status in (Status.MAX_ITER, Status.DIVERGED, Status.NONFINITE):
        assert "use" in status.message or "raise" in status.message
    # The worst per-sample code is the overall status.
    assert Status.SUCCESS < Status.MAX_ITER < Status.DIVERGED < Status.NONFINITE


def test_warning_category_is_a_user_warning():
    assert issubclass(NotGuaranteedWarning, UserWarning)
    assert issubclass(solvers.NoConvergence, RuntimeError)
