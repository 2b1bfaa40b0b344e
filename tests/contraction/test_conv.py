"""``contraction.Conv2d``: the operator against a direct loop over its definition, and every
ℓ∞ quantity from the kernel against the same quantity of the dense matrix (issue 14)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

import contraction
from contraction import Conv2d

PADDINGS = ("circular", "zeros")


@pytest.fixture
def rng():
    return np.random.default_rng(14)


def reference_matrix(K, H, W, padding):
    """The matrix of ``y[c,i,j] = Σ K[c,c',di,dj] x[c', i+di-p, j+dj-p]``, entry by entry."""
    C_out, C_in, k, _ = K.shape
    p = k // 2
    M = np.zeros((C_out * H * W, C_in * H * W))
    for c in range(C_out):
        for i in range(H):
            for j in range(W):
                row = (c * H + i) * W + j
                for c2 in range(C_in):
                    for di in range(k):
                        for dj in range(k):
                            ii, jj = i + di - p, j + dj - p
                            if padding == "circular":
                                ii, jj = ii % H, jj % W
                            elif not (0 <= ii < H and 0 <= jj < W):
                                continue
                            M[row, (c2 * H + ii) * W + jj] += K[c, c2, di, dj]
    return M


def kernel(rng, C=3, C_in=None, k=3, scale=0.2):
    return scale * rng.standard_normal((C, C if C_in is None else C_in, k, k))


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("C, C_in, k, H, W", [(2, 2, 3, 4, 5), (3, 1, 3, 3, 3), (1, 2, 5, 6, 5), (2, 2, 1, 2, 3)])
def test_operator_is_the_definition(rng, padding, C, C_in, k, H, W):
    K = kernel(rng, C, C_in, k)
    op = Conv2d(K, (H, W), padding)
    M = reference_matrix(K, H, W, padding)
    np.testing.assert_allclose(op.to_dense(), M, atol=1e-14)
    X, Y = rng.standard_normal((3, op.n_in)), rng.standard_normal((3, op.n_out))
    np.testing.assert_allclose(op.apply(X), X @ M.T, atol=1e-12)
    np.testing.assert_allclose(op.apply_T(Y), Y @ M, atol=1e-12)
    assert op.shape == M.shape


def test_the_diagonal_is_the_centre_tap_of_the_same_channel(rng):
    op = Conv2d(kernel(rng), (4, 4))
    np.testing.assert_array_equal(np.diagonal(op.to_dense()), np.repeat(op.diagonal(), 16))


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("seed", range(4))
def test_mu_inf_and_the_norm_equal_the_dense_ones(padding, seed):
    rng = np.random.default_rng(seed)
    C, k = rng.integers(1, 4), rng.choice([1, 3, 5])
    op = Conv2d(kernel(rng, C, k=k, scale=rng.uniform(0.05, 1.0)), (k + rng.integers(0, 3), k + rng.integers(0, 2)),
                padding)
    D = op.to_dense()
    assert contraction.mu_inf(op) == pytest.approx(contraction.mu_inf(D), abs=1e-12)
    assert op.norm_inf() == pytest.approx(contraction.induced_norm(D), abs=1e-12)
    eta = rng.uniform(0.2, 3.0, C)
    assert contraction.mu_inf(op, eta) == pytest.approx(contraction.mu_inf(D, np.repeat(eta, op.pixels)), abs=1e-12)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("method", contraction.METHODS)
def test_step_sizes_and_factors_equal_the_dense_ones(rng, padding, method):
    K = kernel(rng, 2, scale=0.25)
    K[0, 0, 1, 1] = -1.5  # a negative self-loop: alpha* < 1
    op = Conv2d(K, (4, 3), padding)
    D = op.to_dense()
    assert contraction.optimal_alpha(op, method) == contraction.optimal_alpha(D, method)
    for alpha in (None, 0.3):
        want = contraction.contraction_factor(D, alpha, method)
        assert contraction.contraction_factor(op, alpha, method) == pytest.approx(want, abs=1e-12)
    eta = np.array([0.7, 1.9])
    want = contraction.contraction_factor(D, None, method, eta=np.repeat(eta, op.pixels))
    assert contraction.contraction_factor(op, None, method, eta=eta) == pytest.approx(want, abs=1e-12)
    assert contraction.error_bound(op, 0.1) == pytest.approx(contraction.error_bound(D, 0.1))


@pytest.mark.parametrize("padding", PADDINGS)
def test_per_unit_steps_and_factors_equal_the_dense_ones(rng, padding):
    K = kernel(rng, 3, scale=0.25)
    K[0, 0, 1, 1], K[2, 2, 1, 1] = -1.5, -0.4
    op = Conv2d(K, (4, 3), padding)
    D = op.to_dense()
    steps = contraction.optimal_alpha(op, per_unit=True)
    assert steps.shape == (3,)
    np.testing.assert_allclose(np.repeat(steps, op.pixels), contraction.optimal_alpha(D, per_unit=True), rtol=1e-15)
    for alpha in (steps, rng.uniform(0.1, 1.2, 3)):
        want = contraction.contraction_factor(D, np.repeat(alpha, op.pixels))
        assert contraction.contraction_factor(op, alpha) == pytest.approx(want, abs=1e-12)
        units = np.repeat(alpha, op.pixels)  # one step per unit (C·H·W of them)
        assert contraction.contraction_factor(op, units) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match=r"one step per unit \(3 or 36 entries\), got 4"):
        contraction.contraction_factor(op, np.ones(4))


@pytest.mark.parametrize("padding", PADDINGS)
def test_lipschitz_bound_equals_the_dense_one(rng, padding):
    A = contraction.project_mu_inf(Conv2d(kernel(rng, 3), (4, 5), padding), 0.7)
    B = Conv2d(kernel(rng, 3, 2), (4, 5), padding)
    C = rng.standard_normal((6, A.n))
    eta = rng.uniform(0.5, 2.0, 3)
    for form in ("tight", "paper"):
        want = contraction.lipschitz_bound(A.to_dense(), B.to_dense(), C, eta=np.repeat(eta, 20), form=form)
        assert contraction.lipschitz_bound(A, B, C, eta=eta, form=form) == pytest.approx(want, rel=1e-12)
        want = contraction.lipschitz_bound(A.to_dense(), B.to_dense(), form=form)
        assert contraction.lipschitz_bound(A, B.to_dense(), form=form) == pytest.approx(want, rel=1e-12)


def _kernel_projection_cvxpy(K, gamma, diag_min=None):
    """The Frobenius projection of the kernel onto ``{μ∞ ≤ γ}`` as a convex program."""
    C, _, k, _ = K.shape
    p = k // 2
    X = [cp.Variable((C, k * k)) for _ in range(C)]  # row c: the kernel K[c] as (C_in, k²)
    cons, obj = [], 0
    for c in range(C):
        centre = p * k + p
        flat = X[c]
        mask = np.ones((C, k * k))
        mask[c, centre] = 0.0
        off = cp.sum(cp.multiply(mask, cp.abs(flat)))
        cons.append(flat[c, centre] + off <= gamma)
        if diag_min is not None:
            cons.append(flat[c, centre] >= diag_min)
        obj += cp.sum_squares(flat - K[c].reshape(C, k * k))
    cp.Problem(cp.Minimize(obj), cons).solve()
    return np.stack([x.value.reshape(C, k, k) for x in X])


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("diag_min", [None, -0.3])
def test_projection_is_the_kernels_frobenius_projection(rng, padding, diag_min):
    K = kernel(rng, 3, scale=0.4)
    K[1, 1, 1, 1] = -0.9
    op = Conv2d(K, (5, 5), padding)
    P = contraction.project_mu_inf(op, 0.6, diag_min=diag_min)
    assert isinstance(P, Conv2d) and P.image_shape == op.image_shape and P.padding == padding
    assert contraction.mu_inf(P) <= 0.6 + 1e-12
    assert contraction.mu_inf(P.to_dense()) <= 0.6 + 1e-12
    if diag_min is not None:
        assert P.diagonal().min() >= diag_min - 1e-12
    np.testing.assert_allclose(P.kernel, _kernel_projection_cvxpy(K, 0.6, diag_min), atol=2e-5)
    again = contraction.project_mu_inf(P, 0.6, diag_min=diag_min)  # a feasible kernel stays
    np.testing.assert_allclose(again.kernel, P.kernel, atol=1e-12)


def test_projection_with_channel_weights(rng):
    op = Conv2d(kernel(rng, 3, scale=0.5), (3, 3))
    eta = np.array([0.5, 1.0, 2.0])
    P = contraction.project_mu_inf(op, 0.8, eta=eta)
    assert contraction.mu_inf(P, eta) == pytest.approx(0.8, abs=1e-12)


@pytest.mark.parametrize("args, needle", [
    (((np.zeros((2, 2, 3, 3)),), {"image_shape": (2, 5)}), "alias"),
    (((np.zeros((2, 2, 2, 2)),), {"image_shape": (5, 5)}), "k odd"),
    (((np.zeros((2, 2, 3)),), {"image_shape": (5, 5)}), "(C_out, C_in, k, k)"),
    (((np.full((1, 1, 3, 3), np.nan),), {"image_shape": (5, 5)}), "finite"),
    (((np.zeros((1, 1, 3, 3)),), {"image_shape": (5, 5), "padding": "reflect"}), "padding"),
    (((np.zeros((1, 1, 3, 3)),), {"image_shape": (5.5, 5)}), "image_shape"),
])
def test_bad_convolutions_are_refused_with_a_clear_message(args, needle):
    (pos, kw) = args
    with pytest.raises(ValueError, match=None) as info:
        Conv2d(*pos, **kw)
    assert needle in str(info.value)


def test_square_only_quantities_name_the_problem(rng):
    op = Conv2d(kernel(rng, 2, 3), (4, 4))
    with pytest.raises(ValueError, match="square"):
        contraction.mu_inf(op)
    with pytest.raises(ValueError, match="square"):
        contraction.project_mu_inf(op, 0.5)
    with pytest.raises(ValueError, match="per channel"):
        contraction.mu_inf(Conv2d(kernel(rng, 2), (4, 4)), eta=np.ones(32))


@pytest.mark.parametrize("padding", PADDINGS)
def test_optimal_channel_weights_reach_the_majorants_spectral_abscissa(rng, padding):
    K = kernel(rng, 3, scale=0.3)
    K[0, 1] *= 8.0  # channel 1 feeds channel 0 strongly: unit weights are far from optimal
    op = Conv2d(K, (4, 4), padding)
    eta, value = contraction.optimal_weights(op)
    assert eta.shape == (3,)
    assert value == pytest.approx(contraction.mu_inf(op, eta), abs=1e-12)
    assert value == pytest.approx(contraction.spectral_abscissa(op.channel_majorant()), abs=1e-9)
    assert value < contraction.mu_inf(op) - 0.1
    # the same weights on the dense matrix, pixel by pixel
    assert contraction.mu_inf(op.to_dense(), np.repeat(eta, 16)) == pytest.approx(value, abs=1e-12)


def test_splitting_factors_of_large_circular_convolutions_come_from_the_frequencies(rng):
    """Circular padding: the splittings' factors of any size, per frequency (no dense matrix);
    zero padding: a clear error beyond the dense limit. On a 64x64 image a 3x3 kernel's
    reflected resolvent has the same rows as on a 32x32 one up to its decaying tails."""
    K = 0.4 * kernel(rng, 8) / np.abs(kernel(rng, 8)).sum(axis=(1, 2, 3), keepdims=True).max()
    big = Conv2d(K, (64, 64), "circular")
    assert big.n == 32768  # far beyond the dense limit (4096)
    for method in ("peaceman_rachford", "douglas_rachford"):
        f_big = contraction.contraction_factor(big, 0.5, method)
        f_mid = contraction.contraction_factor(Conv2d(K, (32, 32), "circular"), 0.5, method)
        assert 0.0 < f_big < 1.0 and f_big == pytest.approx(f_mid, rel=1e-6)
    with pytest.raises(ValueError, match="circular padding: any size"):
        contraction.contraction_factor(Conv2d(K, (64, 64), "zeros"), 0.5, "peaceman_rachford")


@pytest.mark.parametrize("padding", PADDINGS)
def test_a_strided_convolution_keeps_every_strided_row_and_its_adjoint_is_the_transpose(rng, padding):
    K = kernel(rng, 3, 2)  # 3 output channels from 2 input channels
    full = Conv2d(K, (6, 4), padding)
    op = Conv2d(K, (6, 4), padding, stride=2)
    assert op.out_shape == (3, 2) and op.shape == (3 * 6, 2 * 24) and not op.square
    rows = np.arange(full.n_out).reshape(3, 6, 4)[:, ::2, ::2].reshape(-1)
    np.testing.assert_array_equal(op.to_dense(), full.to_dense()[rows])
    X, Y = rng.standard_normal((2, op.n_in)), rng.standard_normal((2, op.n_out))
    np.testing.assert_allclose(op.apply(X), X @ op.to_dense().T, atol=1e-12)
    np.testing.assert_allclose(op.apply_T(Y), Y @ op.to_dense(), atol=1e-12)
    assert np.abs(op.to_dense()).sum(axis=1).max() <= op.norm_inf() + 1e-12
    if padding == "circular":
        assert op.norm_inf() == pytest.approx(np.abs(op.to_dense()).sum(axis=1).max(), abs=1e-12)
    assert repr(op).endswith("stride=2)") and op.with_kernel(2 * K).stride == 2
    with pytest.raises(ValueError, match="square operator.*stride 2"):
        Conv2d(kernel(rng, 2), (6, 4), padding, stride=2).diagonal()
    for bad in (0, 3, 1.5, True):
        with pytest.raises(ValueError, match="stride must be a positive integer dividing the image size 6x4"):
            Conv2d(K, (6, 4), padding, stride=bad)


def test_lipschitz_bound_with_a_strided_input_convolution(rng):
    A = contraction.project_mu_inf(Conv2d(kernel(rng, 3), (3, 3)), 0.7)
    B = Conv2d(kernel(rng, 3, 1), (6, 6), "circular", stride=2)
    C = rng.standard_normal((4, A.n))
    want = contraction.lipschitz_bound(A.to_dense(), B.to_dense(), C)
    assert contraction.lipschitz_bound(A, B, C) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="B must map onto A's 3 channels of \\(3, 3\\) images"):
        contraction.lipschitz_bound(A, Conv2d(kernel(rng, 3, 1), (6, 6)), C)
