"""Per-unit steps of the averaged iteration (``alpha="per_unit"``): every engine against the
numpy specification, closed forms, the guarantee, and the errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import contraction
import solvers
from contraction import Conv2d


def _self_loops(rng, n=12, batch=5, mu=0.9):
    """A well-posed A whose self-loops spread from about −3 to 0 (so the per-unit steps differ)."""
    G = rng.standard_normal((n, n)) / np.sqrt(n)
    G[np.diag_indices(n)] = -rng.uniform(0.0, 3.0, n)
    return contraction.project_mu_inf(G, mu), rng.standard_normal((batch, n))


def _conv(rng, dtype=np.float64, padding="circular"):
    K = 0.3 * rng.standard_normal((3, 3, 3, 3))
    K[0, 0, 1, 1], K[1, 1, 1, 1], K[2, 2, 1, 1] = -2.0, -0.5, 0.1
    op = contraction.project_mu_inf(Conv2d(K, (5, 4), padding), 0.8)
    return op, rng.standard_normal((3, op.n)).astype(dtype)


@pytest.mark.parametrize("engine", ("numba", "cuda"))
@pytest.mark.parametrize("activation", ("relu", "tanh"))
def test_compiled_engines_match_numpy_on_a_matrix(rng, engine, activation):
    A, W = _self_loops(rng)
    kw = dict(alpha="per_unit", activation=activation, atol=1e-10, record=True, max_iter=2000)
    ref = solvers.solve(A, W, engine="numpy", **kw)
    got = solvers.solve(A, W, engine=engine, **kw)
    assert ref.success
    np.testing.assert_array_equal(got.iterations, ref.iterations)
    np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.history, ref.history, rtol=1e-6, atol=1e-13, equal_nan=True)
    np.testing.assert_array_equal(got.alpha, 1 / (1 - np.minimum(0, np.diagonal(A))))
    np.testing.assert_array_equal(solvers.unit_steps(A), got.alpha)
    # the adjoint: the same steps on λ = G + (λ ⊙ σ'(Z)) A, ℓ1 residual
    Z = ref.x @ A.T + W
    G = rng.standard_normal(W.shape)
    lam_ref, a_ref = solvers.solve_adjoint(A, Z, G, engine="numpy", alpha="per_unit", activation=activation,
                                           atol=1e-10, max_iter=2000)
    lam, a_got = solvers.solve_adjoint(A, Z, G, engine=engine, alpha="per_unit", activation=activation,
                                       atol=1e-10, max_iter=2000)
    assert a_ref.success
    np.testing.assert_array_equal(a_got.iterations, a_ref.iterations)
    np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=1e-11 * np.abs(lam_ref).max())
    # the exact adjoint solution
    lam_direct, _ = solvers.solve_adjoint(A, Z, G, method="direct", activation=activation)
    np.testing.assert_allclose(lam_ref, lam_direct, rtol=0, atol=1e-8 * np.abs(lam_direct).max())


@pytest.mark.parametrize("engine", ("numba", "cuda"))
@pytest.mark.parametrize("dtype", (np.float64, np.float32))
@pytest.mark.parametrize("padding", ("circular", "zeros"))
def test_compiled_engines_match_numpy_on_a_convolution(rng, engine, dtype, padding):
    op, W = _conv(rng, dtype, padding)
    atol = 1e-9 if dtype == np.float64 else 1e-5
    ref = solvers.solve(op, W, engine="numpy", alpha="per_unit", atol=atol, max_iter=500)
    got = solvers.solve(op, W, engine=engine, alpha="per_unit", atol=atol, max_iter=500)
    assert ref.success and got.x.dtype == dtype
    np.testing.assert_array_equal(got.iterations, ref.iterations)
    np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=10 * atol)
    # one step per output channel at every pixel of that channel
    steps = np.repeat(1 / (1 - np.minimum(0, op.diagonal())), op.pixels)
    np.testing.assert_allclose(got.alpha, steps, rtol=1e-15)
    np.testing.assert_array_equal(solvers.unit_steps(op), got.alpha)
    Z = op.to_dense() @ ref.x.astype(np.float64).T
    Z = (Z.T + W).astype(dtype)
    G = rng.standard_normal(W.shape).astype(dtype)
    lam_ref, a_ref = solvers.solve_adjoint(op, Z, G, engine="numpy", alpha="per_unit", atol=10 * atol, max_iter=500)
    lam, a_got = solvers.solve_adjoint(op, Z, G, engine=engine, alpha="per_unit", atol=10 * atol, max_iter=500)
    assert a_ref.success
    np.testing.assert_array_equal(a_got.iterations, a_ref.iterations)
    np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=100 * atol * np.abs(lam_ref).max())


def test_per_unit_steps_solve_decoupled_units_in_one_step(rng):
    """A diagonal A with negative self-loops and w > 0 (ReLU's linear region): the per-unit step
    lands every unit on ``w_i / (1 − a_ii)`` at once; one step for all cannot."""
    d = -rng.uniform(0.1, 3.0, 6)
    A = np.diag(d)
    W = rng.uniform(0.5, 2.0, (4, 6))
    for engine in ("numpy", "numba"):
        got = solvers.solve(A, W, alpha="per_unit", atol=1e-12, engine=engine)
        np.testing.assert_array_equal(got.iterations, 1)
        np.testing.assert_allclose(got.x, W / (1 - d), rtol=1e-14)
        single = solvers.solve(A, W, atol=1e-12, engine=engine)
        assert single.iterations.min() > 1


def test_iterations_within_the_per_unit_guarantee(rng):
    A, W = _self_loops(rng, n=20, batch=8)
    steps = contraction.optimal_alpha(A, per_unit=True)
    factor = contraction.contraction_factor(A, steps)
    assert factor <= contraction.contraction_factor(A) + 1e-12 < 1
    got = solvers.solve(A, W, alpha="per_unit", atol=1e-9, record=True)
    assert got.success
    for s in range(len(W)):  # each sample within factor^k of its first residual
        r0 = got.history[0, s]
        assert got.iterations[s] <= contraction.iteration_bound(factor, r0, 1e-9)
    # the same fixed point as the single step
    single = solvers.solve(A, W, atol=1e-12)
    np.testing.assert_allclose(got.x, single.x, atol=2e-9 / (1 - contraction.mu_inf(A)))
    # an explicit array of steps is the same solve
    same = solvers.solve(A, W, alpha=steps, atol=1e-9, engine="numpy")
    np.testing.assert_array_equal(same.iterations, solvers.solve(A, W, alpha="per_unit", atol=1e-9,
                                                                 engine="numpy").iterations)


def test_steps_outside_the_guarantee_warn(rng):
    A, W = _self_loops(rng)
    steps = 3.0 / (1 - np.minimum(0, np.diagonal(A)))  # three times each row's largest guaranteed step
    with pytest.warns(solvers.NotGuaranteedWarning, match=r"per-unit alpha in \[.*alpha_i <= 1/\(1 - min\(0, a_ii\)\)"):
        solvers.solve(A, W, alpha=steps, max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solvers.solve(A, W, alpha="per_unit")


def test_bad_per_unit_steps_are_refused_by_name(rng):
    A, W = _self_loops(rng, n=4, batch=2)
    with pytest.raises(ValueError, match="method='average' only, got method='forward_backward'"):
        solvers.solve(A, W, method="forward_backward", alpha="per_unit")
    with pytest.raises(ValueError, match="method='average' only, got method='anderson'"):
        solvers.solve_adjoint(A, W, W, method="anderson", alpha=np.ones(4))
    with pytest.raises(ValueError, match=r"one step per unit, shape \(4,\), got shape \(3,\)"):
        solvers.solve(A, W, alpha=np.ones(3))
    with pytest.raises(ValueError, match="finite positive"):
        solvers.solve(A, W, alpha=np.array([0.5, 0.5, -0.1, 0.5]))
    with pytest.raises(ValueError, match="alpha must be a number, 'per_unit' or an array"):
        solvers.solve(A, W, alpha="per-channel")
    got = solvers.solve(A, W, alpha="per_unit")
    assert "per-unit alpha in [" in repr(got)


@pytest.mark.parametrize("alpha", [None, "per_unit"])
def test_a_relu_solve_from_zero_ends_at_the_local_rate(alpha):
    """Once every pre-activation has its equilibrium sign, the error of a ReLU solve evolves by
    the step's Jacobian at the equilibrium; a unit that was never active stays exactly 0, so
    the residual's final rate is ``contraction.local_rate``, the coupled units' spectral radius."""
    matched = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n = 12
        G = rng.standard_normal((n, n)) / np.sqrt(n)
        G[np.diag_indices(n)] = -rng.uniform(0.0, 2.0, n)
        A = contraction.project_mu_inf(G, 0.9)
        W = rng.standard_normal((4, n))
        res = solvers.solve(A, W, alpha=alpha, atol=1e-13, max_iter=5000, record=True, engine="numpy")
        steps = contraction.optimal_alpha(A, per_unit=True) if alpha else None
        rates = contraction.local_rate(A, (res.x @ A.T + W > 0).astype(float), steps)
        assert np.all(rates <= contraction.contraction_factor(A, steps) + 1e-12)
        iterates = [np.zeros_like(W)]  # the averaged iterates, to find the units ever active
        for _ in range(int(res.iterations.max())):
            x = iterates[-1]
            iterates.append(x + res.alpha * (np.maximum(x @ A.T + W, 0) - x))
        ever = np.any(np.stack(iterates) > 0, axis=0)
        for s in range(len(W)):
            if np.any(ever[s] & (res.x[s] @ A.T + W[s] <= 0)):  # turned off on the way: decays by 1 − α_i
                continue
            history = res.history[: res.iterations[s] + 1, s]
            late = np.flatnonzero(history <= 1e-5)  # past the transient, above the rounding floor
            if len(late) < 13:
                continue
            m = (late[-1] - late[0]) // 2 * 2  # an even window: dominant eigenvalues ±ρ alternate
            observed = (history[late[0] + m] / history[late[0]]) ** (1 / m)
            assert observed == pytest.approx(rates[s], rel=0.06)
            matched += 1
    assert matched >= 5
