"""The CUDA engine on a ``contraction.Conv2d`` against the numpy specification (numba's
simulator in CI, so the problems are tiny): every method, both paddings, forward and adjoint,
float64 and float32."""

from __future__ import annotations

import numpy as np
import pytest

import contraction
import solvers
from contraction import Conv2d

SPLITTINGS = ("peaceman_rachford", "douglas_rachford")
#: Each method with an activation that exercises its step (forward–backward and the splittings
#: take the activation's prox: a closed form, or Newton's iteration for tanh and softplus).
METHOD_ACTIVATIONS = {
    "picard": "relu",
    "average": "tanh",
    "forward_backward": "softplus",
    "peaceman_rachford": ("leaky_relu", 0.1),
    "douglas_rachford": "hard_tanh",
    "anderson": "relu",
}
#: ``(padding, method)`` pairs that solve: the splittings need circular padding.
FORWARD_CASES = [(p, m) for p in ("circular", "zeros") for m in solvers.METHODS
                 if p == "circular" or m not in SPLITTINGS]
#: The solve's tolerance per dtype (float32: above its resolution, and for the adjoint's ℓ1
#: residual, a sum over the 60 entries, ten times more).
ATOL = {np.float64: 1e-9, np.float32: 1e-5}


def _instance(padding, method, dtype, seed=0, batch=2):
    """A 2-channel 3x3 convolution on 5x6 images (H ≠ W, and W even: the real transform's
    Nyquist column) with μ∞ ≤ 0.6 and a right-hand side. Its centre taps are negative (α* < 1)
    except for picard, whose guarantee needs α* = 1."""
    rng = np.random.default_rng(seed)
    K = 0.3 * rng.standard_normal((2, 2, 3, 3))
    K[[0, 1], [0, 1], 1, 1] = -0.6
    op = contraction.project_mu_inf(Conv2d(K, (5, 6), padding), 0.6, diag_min=0.0 if method == "picard" else -0.5)
    return op, rng.standard_normal((batch, op.n)).astype(dtype)


def _assert_same_solve(got, ref, dtype, atol):
    """The CUDA solve equals the numpy one: statuses, iteration counts and iterates (float64:
    to rounding; float32: a sample may stop one step apart, the two engines rounding the
    residual's sum differently)."""
    assert got.engine == "cuda" and ref.success
    np.testing.assert_array_equal(got.sample_status, ref.sample_status)
    if dtype == np.float64:
        np.testing.assert_array_equal(got.iterations, ref.iterations)
        np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=1e-12)
    else:
        assert got.x.dtype == np.float32
        assert np.abs(got.iterations - ref.iterations).max() <= 1
        np.testing.assert_allclose(got.x, ref.x, rtol=0, atol=10 * atol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("padding, method", FORWARD_CASES)
def test_forward_matches_numpy(padding, method, dtype):
    op, W = _instance(padding, method, dtype)
    atol = ATOL[dtype]
    kw = dict(method=method, activation=METHOD_ACTIVATIONS[method], atol=atol, max_iter=300, record=True)
    ref = solvers.solve(op, W, engine="numpy", **kw)
    got = solvers.solve(op, W, engine="cuda", **kw)
    _assert_same_solve(got, ref, dtype, atol)
    if dtype == np.float64:
        # Block reductions sum in another order than numpy: agreement to rounding, not bitwise.
        np.testing.assert_allclose(got.history, ref.history, rtol=1e-6, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("padding", ["circular", "zeros"])
@pytest.mark.parametrize("method", ["picard", "average", "anderson"])
def test_adjoint_matches_numpy(padding, method, dtype):
    op, Z = _instance(padding, method, dtype, seed=1)
    G = np.random.default_rng(2).standard_normal(Z.shape).astype(dtype)
    atol = 10 * ATOL[dtype]
    lam_ref, ref = solvers.solve_adjoint(op, Z, G, method=method, atol=atol, max_iter=300, engine="numpy")
    lam, got = solvers.solve_adjoint(op, Z, G, method=method, atol=atol, max_iter=300, engine="cuda")
    assert got.engine == "cuda" and ref.success
    np.testing.assert_array_equal(got.sample_status, ref.sample_status)
    if dtype == np.float64:
        np.testing.assert_array_equal(got.iterations, ref.iterations)
        np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=1e-12)
    else:
        assert lam.dtype == np.float32
        assert np.abs(got.iterations - ref.iterations).max() <= 1
        np.testing.assert_allclose(lam, lam_ref, rtol=0, atol=10 * atol)
    # λ = g + (λ ⊙ σ'(z)) A: the adjoint product is the transposed convolution.
    D = (Z >= 0).astype(np.float64)
    np.testing.assert_allclose(G + op.apply_T(lam * D), lam, atol=1e-9 if dtype == np.float64 else 1e-3)


@pytest.mark.parametrize("method", SPLITTINGS)
def test_splittings_refuse_zero_padding_as_the_other_engines(method):
    op, W = _instance("zeros", method, np.float64)
    messages = []
    for engine in ("numpy", "cuda"):
        with pytest.raises(ValueError, match=rf"{method}.*padding='zeros'.*'average'.*'circular'") as info:
            solvers.solve(op, W, method=method, engine=engine)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_a_start_at_the_fixed_point_takes_no_iteration():
    op, W = _instance("circular", "peaceman_rachford", np.float64)
    x_star = solvers.solve(op, W, engine="numpy", atol=1e-14, max_iter=2000).x
    for method in ("average", "peaceman_rachford"):
        got = solvers.solve(op, W, method=method, x0=x_star, atol=1e-10, engine="cuda")
        assert got.success
        np.testing.assert_array_equal(got.iterations, 0)


def test_one_vector_keeps_its_shape_and_max_iter_is_reported():
    op, W = _instance("zeros", "average", np.float64, batch=1)
    got = solvers.solve(op, W[0], engine="cuda", atol=1e-14, max_iter=1)
    assert got.x.shape == (op.n,)
    assert got.status == solvers.Status.MAX_ITER
    np.testing.assert_array_equal(got.iterations, 1)
