"""Solves on a ``contraction.Conv2d`` (issue 14): every method, forward and adjoint, on the
numpy and numba engines, against the same solve on the dense matrix ``op.to_dense()``; the
frequency-domain resolvent and the guarantee quantities against their dense definitions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from numba import njit

import contraction
import solvers
from contraction import Conv2d
from contraction import _conv_spectrum
from solvers._engines.operators import _correlate_rows, _scratch, apply, apply_T, conv, embedded_half, resolvent, taps
from solvers._engines.operators import workspace

PADDINGS = ("circular", "zeros")
SPLITTINGS = ("peaceman_rachford", "douglas_rachford")
ENGINES = ("numpy", "numba")


def conv_instance(rng, padding, C=2, k=3, shape=(5, 4), mu=0.6, diag_min=None):
    """A square convolution projected onto ``{μ∞ ≤ mu}`` (``diag_min`` keeps the centre taps
    of the diagonal at or above it, so that some are negative and ``α* < 1``)."""
    K = 0.3 * rng.standard_normal((C, C, k, k))
    p = k // 2
    K[np.arange(C), np.arange(C), p, p] = -0.8 * rng.uniform(0.5, 1.0, C)
    return contraction.project_mu_inf(Conv2d(K, shape, padding), mu, diag_min=diag_min)


def solve_both(op, W, engine, **kw):
    """The solve on the convolution and on its dense matrix, with the same warnings raised."""
    with warnings.catch_warnings(record=True) as w_conv:
        warnings.simplefilter("always")
        r_conv = solvers.solve(op, W, engine=engine, **kw)
    with warnings.catch_warnings(record=True) as w_dense:
        warnings.simplefilter("always")
        r_dense = solvers.solve(op.to_dense().astype(W.dtype), W, engine=engine, **kw)
    assert [str(w.message) for w in w_conv] == [str(w.message) for w in w_dense]
    return r_conv, r_dense


@pytest.fixture
def rng():
    return np.random.default_rng(1414)


# -- forward ------------------------------------------------------------------------------------

def cases(methods):
    """``(padding, method)`` pairs that solve: the splittings need circular padding (zero
    padding is refused, see :func:`test_splittings_refuse_zero_padding`)."""
    return [(p, m) for p in PADDINGS for m in methods if p == "circular" or m not in SPLITTINGS]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("padding, method", cases(solvers.METHODS))
def test_forward_equals_the_dense_solve(rng, engine, padding, method):
    op = conv_instance(rng, padding, diag_min=-0.5 if method != "picard" else 0.0)
    W = rng.standard_normal((6, op.n))
    r, d = solve_both(op, W, engine, method=method, atol=1e-10)
    assert r.alpha == d.alpha
    np.testing.assert_array_equal(r.sample_status, d.sample_status)
    assert r.success
    np.testing.assert_array_equal(r.iterations, d.iterations)
    np.testing.assert_allclose(r.x, d.x, atol=1e-12)
    np.testing.assert_allclose(r.residual, d.residual, rtol=1e-6, atol=1e-14)
    np.testing.assert_allclose(r.error_bound, d.error_bound, rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_forward_with_a_start_and_another_activation(rng, engine, padding):
    op = conv_instance(rng, padding, C=3, k=3, shape=(3, 4), mu=0.9)
    W = rng.standard_normal((5, op.n))
    x0 = rng.standard_normal((5, op.n))
    r, d = solve_both(op, W, engine, activation="tanh", x0=x0, record=True)
    np.testing.assert_array_equal(r.iterations, d.iterations)
    np.testing.assert_allclose(r.x, d.x, atol=1e-12)
    np.testing.assert_allclose(r.history, d.history, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_start_at_the_fixed_point_takes_no_iteration(rng, engine):
    op = conv_instance(rng, "circular")
    W = rng.standard_normal((4, op.n))
    x = solvers.solve(op, W, atol=1e-13, engine=engine).x
    for method in ("average", "peaceman_rachford"):
        again = solvers.solve(op, W, method=method, x0=x, atol=1e-10, engine=engine)
        assert again.success and np.all(again.iterations == 0)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("padding, method", cases(("average", "anderson", "peaceman_rachford")))
def test_float32_solves_like_the_dense_float32_solve(rng, engine, padding, method):
    op = conv_instance(rng, padding, diag_min=-0.5)
    W = rng.standard_normal((8, op.n)).astype(np.float32)
    r, d = solve_both(op, W, engine, method=method, atol=1e-5)
    assert r.x.dtype == np.float32
    assert r.success and d.success
    np.testing.assert_allclose(r.x, d.x, atol=1e-5)
    # float32 round-off differs between the two products: a sample may stop one step apart.
    assert np.abs(r.iterations - d.iterations).max() <= 1
    x64 = solvers.solve(op, W.astype(np.float64), method=method, atol=1e-12, engine=engine).x
    np.testing.assert_allclose(r.x, x64, atol=1e-4)


def test_the_solution_is_a_fixed_point_of_the_convolution(rng):
    op = conv_instance(rng, "zeros", C=3, shape=(6, 6))
    W = rng.standard_normal((3, op.n))
    x = solvers.solve(op, W, atol=1e-12).x
    np.testing.assert_allclose(np.maximum(op.apply(x) + W, 0.0), x, atol=1e-11)


def test_one_vector_keeps_its_shape(rng):
    op = conv_instance(rng, "circular")
    w = rng.standard_normal(op.n)
    res = solvers.solve(op, w, engine="numpy")
    assert res.x.shape == (op.n,)
    np.testing.assert_allclose(res.x, solvers.solve(op, w[None], engine="numpy").x[0])


# -- adjoint ------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("method", solvers.ADJOINT_METHODS)
def test_adjoint_equals_the_dense_solve(rng, engine, padding, method):
    op = conv_instance(rng, padding, diag_min=0.0 if method == "picard" else -0.5)
    Z = rng.standard_normal((6, op.n))
    G = rng.standard_normal((6, op.n))
    lam, res = solvers.solve_adjoint(op, Z, G, method=method, atol=1e-11, engine=engine)
    lam_d, res_d = solvers.solve_adjoint(op.to_dense(), Z, G, method=method, atol=1e-11, engine=engine)
    assert res.success
    assert res.alpha == res_d.alpha or method == "direct"  # direct has no step (NaN)
    np.testing.assert_array_equal(res.iterations, res_d.iterations)
    np.testing.assert_allclose(lam, lam_d, atol=1e-11)
    D = (Z >= 0).astype(np.float64)
    np.testing.assert_allclose(G + op.apply_T(lam * D), lam, atol=1e-10)


@pytest.mark.parametrize("engine", ENGINES)
def test_float32_adjoint(rng, engine):
    op = conv_instance(rng, "zeros", diag_min=-0.5)
    Z = rng.standard_normal((4, op.n)).astype(np.float32)
    G = rng.standard_normal((4, op.n)).astype(np.float32)
    lam, res = solvers.solve_adjoint(op, Z, G, atol=1e-4, engine=engine)
    lam_d, _ = solvers.solve_adjoint(op.to_dense(), Z.astype(np.float64), G.astype(np.float64), atol=1e-12)
    assert lam.dtype == np.float32 and res.success
    np.testing.assert_allclose(lam, lam_d, atol=1e-4)


# -- the operator's primitives and theory ------------------------------------------------------

@njit
def _primitives(op, X, out_apply, out_apply_T, out_resolvent):
    ws = workspace(op)
    apply(op, X, out_apply, ws)
    apply_T(op, X, out_apply_T, ws)
    if op.R.shape[0] > 0:
        resolvent(op, X, out_resolvent, ws)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("C, k, shape", [(2, 3, (5, 4)), (1, 5, (5, 6)), (3, 1, (2, 3)), (2, 3, (3, 3))])
def test_compiled_primitives_equal_the_dense_matrix(rng, dtype, padding, C, k, shape):
    op = Conv2d(0.3 * rng.standard_normal((C, C, k, k)), shape, padding)
    A = op.to_dense()
    alpha = 0.7
    R = _conv_spectrum.inverse_symbol(op, alpha) if padding == "circular" else None
    X = rng.standard_normal((3, op.n)).astype(dtype)
    outs = [np.full_like(X, np.nan) for _ in range(3)]
    _primitives(conv(op, dtype, resolvent=R), X, *outs)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(outs[0], X64 @ A.T, atol=tol)
    np.testing.assert_allclose(outs[1], X64 @ A, atol=tol)
    if R is not None:
        MinvT = np.linalg.inv(contraction.resolvent_matrix(A, alpha)).T
        np.testing.assert_allclose(outs[2], X64 @ MinvT, atol=tol)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("C, C_in", [(8, 8), (12, 5), (13, 13), (16, 3), (7, 2)])
def test_eight_channel_passes_equal_the_four_channel_ones_and_the_dense_matrix(rng, dtype, padding, C, C_in):
    """The products with eight output channels per pass (two blocks of weights) and with four
    are the dense product, and the same sums to the bit, whichever width the target uses by
    default: C = 8 one pair, 12 a pair and a block of four, 13 also a left-over channel, 16 two
    pairs, 7 no pair."""
    K = 0.3 * rng.standard_normal((C, C_in, 3, 3))
    shape = (5, 6)
    dense = Conv2d(np.pad(K, ((0, 0), (0, C - C_in), (0, 0), (0, 0))) if C_in < C else K, shape, padding).to_dense()
    X = rng.standard_normal((3, C_in * 30)).astype(dtype)
    t = taps(K.astype(dtype), *shape, padding == "circular")
    paired_out, single_out = (np.full((3, C * 30), np.nan, dtype) for _ in range(2))
    _correlate_rows(t, X, paired_out, _scratch(t, dtype), True)
    _correlate_rows(t, X, single_out, _scratch(t, dtype), False)
    np.testing.assert_array_equal(paired_out, single_out)
    X_full = np.zeros((3, C * 30))
    X_full[:, :C_in * 30] = X
    np.testing.assert_allclose(paired_out, X_full @ dense.T, atol=1e-5 if dtype == np.float32 else 1e-13)


def embedded(op):
    """The interval (embedded) network's convolution of ``op``: ``[[K_M, K_N], [K_N, K_M]]``,
    ``K_N`` the negative taps other than each channel's own centre tap."""
    K = op.kernel
    C, k = K.shape[0], K.shape[2]
    off_centre = np.ones(K.shape, bool)
    off_centre[np.arange(C), np.arange(C), k // 2, k // 2] = False
    K_N = np.where(off_centre & (K < 0), K, 0.0)
    KK = np.concatenate([np.concatenate([K - K_N, K_N], axis=1), np.concatenate([K_N, K - K_N], axis=1)])
    return Conv2d(KK, op.image_shape, op.padding)


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("C, k, shape", [(2, 3, (5, 4)), (5, 3, (4, 4)), (1, 1, (2, 3)), (4, 5, (6, 5))])
def test_the_embedded_kernel_is_applied_in_two_halves_equal_to_the_dense_matrix(rng, dtype, padding, C, k, shape):
    """An embedded kernel is split (two C-channel passes on sums and differences); its products
    are still those of the 2C-channel matrix (C = 5: one block of four and a left-over channel)."""
    op = embedded(Conv2d(0.3 * rng.standard_normal((C, C, k, k)), shape, padding))
    A = op.to_dense()
    R = _conv_spectrum.inverse_symbol(op, 0.7) if padding == "circular" else None
    split = conv(op, dtype, resolvent=R, split=True)
    assert split.split == C and conv(op, dtype).split == 0
    X = rng.standard_normal((3, op.n)).astype(dtype)
    outs = [np.full_like(X, np.nan) for _ in range(3)]
    _primitives(split, X, *outs)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(outs[0], X64 @ A.T, atol=tol)
    np.testing.assert_allclose(outs[1], X64 @ A, atol=tol)
    if R is not None:
        MinvT = np.linalg.inv(contraction.resolvent_matrix(A, 0.7)).T
        np.testing.assert_allclose(outs[2], X64 @ MinvT, atol=tol)


def test_only_the_embedded_structure_is_split(rng):
    op = embedded(Conv2d(0.3 * rng.standard_normal((3, 3, 3, 3)), (4, 4)))
    assert embedded_half(op.kernel) == 3
    K = op.kernel.copy()
    K[4, 1, 0, 2] += 1e-12  # one tap of the lower-right block no longer equals its twin
    assert embedded_half(K) == 0
    assert embedded_half(K[:5, :5]) == 0  # odd channel count
    assert embedded_half(np.zeros((2, 4, 3, 3))) == 0  # not square


@pytest.mark.parametrize("padding", PADDINGS)
def test_embedded_solves_on_the_split_product_equal_the_dense_solves(rng, padding):
    """The numba engine splits the embedded kernel; forward and adjoint solves take the dense
    solve's iterations and reach its solution."""
    op = embedded(conv_instance(rng, padding, C=3, diag_min=-0.5))
    W = rng.standard_normal((5, op.n))
    r_conv, r_dense = solve_both(op, W, "numba", atol=1e-11)
    np.testing.assert_array_equal(r_conv.iterations, r_dense.iterations)
    np.testing.assert_allclose(r_conv.x, r_dense.x, atol=1e-11)
    G = rng.standard_normal((5, op.n))
    lam, res = solvers.solve_adjoint(op, W, G, atol=1e-11, engine="numba")
    lam_d, res_d = solvers.solve_adjoint(op.to_dense(), W, G, atol=1e-11, engine="numba")
    np.testing.assert_array_equal(res.iterations, res_d.iterations)
    np.testing.assert_allclose(lam, lam_d, atol=1e-11)


AVERAGED_CASES = [  # (padding, C, k, image, split, activation, alpha)
    ("circular", 16, 3, (12, 10), False, "relu", None),
    ("zeros", 16, 3, (12, 10), False, "relu", "per_unit"),
    ("circular", 5, 3, (4, 4), False, "leaky_relu", "per_unit"),
    ("zeros", 5, 3, (4, 4), False, "tanh", None),
    ("zeros", 3, 5, (5, 7), False, "relu", None),
    ("circular", 3, 3, (6, 5), True, "relu", None),
    ("zeros", 3, 3, (6, 5), True, "relu", "per_unit"),
]


@pytest.mark.parametrize("padding, C, k, shape, split, act, alpha", AVERAGED_CASES)
def test_averaged_solves_follow_the_specification_iteration_by_iteration(rng, padding, C, k, shape, split, act,
                                                                          alpha):
    """The numba engine's averaged iterations on a convolution (kept in the passes' padded
    layout) take the numpy specification's residual at every iteration, forward and adjoint,
    from zero and from a start, with one step or one per unit, for channels in and out of
    blocks of four, images not much larger than the kernel, zero and circular padding and the
    embedded network's split kernel."""
    op = conv_instance(rng, padding, C=C, k=k, shape=shape, mu=0.8, diag_min=-0.5)
    if split:
        op = embedded(op)
    W = rng.standard_normal((4, op.n))
    x0 = np.where(rng.random((4, op.n)) < 0.5, 0.0, rng.standard_normal((4, op.n)))
    for start in (None, x0):
        kw = dict(alpha=alpha, activation=act, x0=start, atol=1e-10, record=True)
        fast = solvers.solve(op, W, engine="numba", **kw)
        spec = solvers.solve(op, W, engine="numpy", **kw)
        np.testing.assert_array_equal(fast.iterations, spec.iterations)
        np.testing.assert_allclose(fast.history, spec.history, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(fast.x, spec.x, atol=1e-11)
    G = rng.standard_normal((4, op.n))
    Z = spec.x @ op.to_dense().T + W
    for start in (None, x0):
        kw = dict(alpha=alpha, activation=act, lam0=start, atol=1e-10, record=True)
        lam, fast = solvers.solve_adjoint(op, Z, G, engine="numba", **kw)
        lam_spec, spec_a = solvers.solve_adjoint(op, Z, G, engine="numpy", **kw)
        np.testing.assert_array_equal(fast.iterations, spec_a.iterations)
        np.testing.assert_allclose(fast.history, spec_a.history, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(lam, lam_spec, atol=1e-11)


@pytest.mark.parametrize("shape", [(4, 5), (3, 3), (6, 6), (5, 2)])
def test_the_fft_resolvent_is_the_inverse_of_M(rng, shape):
    k = 1 if min(shape) < 3 else 3
    op = Conv2d(0.4 * rng.standard_normal((3, 3, k, k)), shape)
    alpha = 1.3
    V = rng.standard_normal((4, op.n))
    y = _conv_spectrum.apply_inverse_symbol(_conv_spectrum.inverse_symbol(op, alpha), V, shape)
    M = contraction.resolvent_matrix(op.to_dense(), alpha)
    np.testing.assert_allclose(y, np.linalg.solve(M, V.T).T, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_frequency_quantities_equal_the_dense_ones(seed):
    rng = np.random.default_rng(seed)
    C, k = int(rng.integers(1, 4)), int(rng.choice([1, 3]))
    op = Conv2d(rng.uniform(0.1, 0.6) * rng.standard_normal((C, C, k, k)), (k + int(rng.integers(0, 3)), 4))
    A = op.to_dense()
    assert _conv_spectrum.conv_mu_2(op) == pytest.approx(contraction.mu_2(A), abs=1e-12)
    eta = rng.uniform(0.3, 2.0, C)
    alpha = rng.uniform(0.2, 2.0)
    for method in SPLITTINGS:
        assert _conv_spectrum.splitting_factor(op, alpha, method) == pytest.approx(
            contraction.contraction_factor(A, alpha, method), abs=1e-12)
        assert _conv_spectrum.splitting_factor(op, alpha, method, eta) == pytest.approx(
            contraction.contraction_factor(A, alpha, method, eta=np.repeat(eta, op.pixels)), abs=1e-12)


def test_the_error_bound_uses_channel_weights_when_mu_is_not_below_one(rng):
    # Channel 0 leans on channel 1 (μ∞ = 1), which weights of 1/2 on channel 1 repair.
    K = np.zeros((2, 2, 3, 3))
    K[0, 0, 1, 1] = K[1, 1, 1, 1] = -0.5
    K[0, 1] = 1.5 / 9
    K[1, 0, 0, 0] = 0.05
    op = Conv2d(K, (4, 4))
    assert contraction.mu_inf(op) >= 1.0
    W = rng.standard_normal((3, op.n))
    r, d = solve_both(op, W, "numpy", atol=1e-10)
    assert np.all(np.isfinite(r.error_bound))
    np.testing.assert_allclose(r.error_bound, d.error_bound, rtol=1e-8)


# -- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("method", SPLITTINGS)
def test_splittings_refuse_zero_padding(rng, engine, method):
    op = conv_instance(rng, "zeros")
    with pytest.raises(ValueError, match=rf"{method}.*padding='zeros'.*'average'.*'circular'"):
        solvers.solve(op, rng.standard_normal((2, op.n)), method=method, engine=engine)


def test_an_image_smaller_than_the_kernel_is_refused(rng):
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        Conv2d(rng.standard_normal((2, 2, 3, 3)), (2, 5))


def test_a_convolution_that_changes_the_channels_is_refused(rng):
    op = Conv2d(0.1 * rng.standard_normal((3, 2, 3, 3)), (4, 4))
    with pytest.raises(ValueError, match="square"):
        solvers.solve(op, np.zeros((1, 32)))


def test_the_right_hand_side_must_match_the_images(rng):
    op = conv_instance(rng, "circular")
    with pytest.raises(ValueError, match=rf"W must have shape \({op.n},\)"):
        solvers.solve(op, np.zeros((2, op.n + 1)))


@pytest.mark.parametrize("engine", ENGINES)
def test_a_large_image_is_solved_without_its_dense_matrix(rng, engine):
    # n = 30000: the dense matrix would take 7.2 GB.
    op = conv_instance(rng, "circular", C=3, shape=(100, 100))
    W = rng.standard_normal((2, op.n))
    for method in ("average", "peaceman_rachford"):
        res = solvers.solve(op, W, method=method, atol=1e-8, engine=engine)
        assert res.success
        np.testing.assert_allclose(np.maximum(op.apply(res.x) + W, 0.0), res.x, atol=1e-7)


def test_the_direct_adjoint_refuses_a_large_image(rng):
    op = Conv2d(0.1 * rng.standard_normal((1, 1, 3, 3)), (65, 65))  # n = 4225
    Z = np.zeros((1, op.n))
    with pytest.raises(ValueError, match="direct.*'average'"):
        solvers.solve_adjoint(op, Z, Z, method="direct")
