"""Robustness: the interval bounds of the embedded network contain every output of the box
(sampled inputs, corners, attack points), collapse to the forward pass on a point and grow
with the box; the embedded matrices keep μ∞ and α*; both certificates match hand-computed
values on two-unit networks; certified samples survive FGSM and PGD on trained digits
models; the interval loss's gradients match central finite differences; interval training
certifies more; and the trainer's ε ramp and option checks."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import contraction
from solvers import solve
from solvers.training import ImplicitNetwork, SolverConfig, TrainConfig, load_dataset, train
from solvers.training._robust import (
    _solve_embedded,
    certified_accuracy,
    certified_by_interval,
    certified_by_lipschitz,
    embedded_matrices,
    fgsm_attack,
    interval_bounds,
    interval_loss_and_grad,
    margin_lower_bounds,
    pgd_attack,
    robust_accuracy,
    robustness_table,
    substituted_margins,
)
from solvers.training._trainer import _ramped_eps
from _training_helpers import central_difference

#: Bound of the random well-posed instances: μ∞(A) ≤ GAMMA.
GAMMA = 0.9
#: Solver tolerance of the exact networks; containment is checked to TOL (error bound of a
#: 1e-12 residual at α* ≈ 1/3 and 1 − μ = 0.1 is ~3e-11).
EXACT_ATOL = 1e-12
TOL = 1e-9
ACTIVATIONS = ("relu", "tanh", "leaky_relu")
N_IN, N_HIDDEN, N_OUT = 4, 6, 3
#: Finite-difference step; loss values are exact to ~1e-12, so FD noise is ~1e-12 / STEP.
#: ReLU pre-activations (and the sign splits) must stay this far from their kinks for FD.
KINK_MARGIN = 1e-4
#: Evaluation radii of the trained-model tests, and the slack of "PGD at least as strong as FGSM".
EPS_LIST = (0.01, 0.05, 0.1)
#: Below the Lipschitz radii of the trained digits models (median ≈ 0.003): non-vacuous there.
LIP_EPS = 0.002
PGD_FGSM_SLACK = 0.02


# -- instances --------------------------------------------------------------------------------
def contracting_matrix(rng, n, gamma=GAMMA):
    """Random A with a negative diagonal, negative (and positive) off-diagonal entries, no
    zero entry, and μ∞(A) ≤ gamma: each row's off-diagonal ℓ1 mass is a random fraction of
    the room ``gamma − a_ii`` that the diagonal leaves."""
    d = -rng.uniform(0.1, 2.0, n)
    off = rng.standard_normal((n, n))
    off[np.abs(off) < 0.05] = 0.05
    np.fill_diagonal(off, 0.0)
    room = rng.uniform(0.3, 1.0, n) * (gamma - d)
    A = off * (room / np.abs(off).sum(axis=1))[:, None]
    np.fill_diagonal(A, d)
    return A


def exact(net: ImplicitNetwork) -> ImplicitNetwork:
    net.solver = dataclasses.replace(net.solver, engine="numpy", atol=EXACT_ATOL, adjoint_atol=EXACT_ATOL,
                                     max_iter=50000)
    return net


def tiny_net(seed, activation="relu", n_in=N_IN, n=N_HIDDEN, q=N_OUT):
    """A float64 network with μ∞(A) ≤ GAMMA, negative diagonal and negative off-diagonal
    entries, generic biases; solved to 1e-12 with the numpy engine."""
    rng = np.random.default_rng([20240917, seed])
    net = exact(ImplicitNetwork(n_in, n, q, activation=activation, seed=seed))
    net.A = contracting_matrix(rng, n)
    net.B = rng.standard_normal((n, n_in))
    net.b = 0.3 * rng.standard_normal(n)
    net.C = rng.standard_normal((q, n))
    net.c = 0.3 * rng.standard_normal(q)
    return net


def equilibrium(net, U):
    """``(X, Y)`` from an independent solve (not through the network's own forward pass)."""
    U = np.atleast_2d(np.asarray(U, dtype=np.float64))
    X = solve(net.A, U @ net.B.T + net.b, atol=EXACT_ATOL, max_iter=50000, activation=net.activation,
              engine="numpy").x
    return X, X @ net.C.T + net.c


def box_points(rng, lo, hi, samples=200):
    """Uniform samples and every corner of the box ``[lo, hi]`` (one box, 1-D bounds)."""
    uniform = lo + (hi - lo) * rng.uniform(size=(samples, len(lo)))
    corners = np.array([np.where(bits, hi, lo) for bits in itertools.product((0, 1), repeat=len(lo))])
    return np.vstack([uniform, corners, lo, hi, (lo + hi) / 2])


def assert_within(lo, V, hi, what):
    below, above = (lo - V).max(), (V - hi).max()
    assert below <= TOL and above <= TOL, f"{what} leaves its bounds by {max(below, above):.3e}"


def cross_entropy(Y, labels):
    Y = np.asarray(Y, dtype=np.float64)
    top = Y.max(axis=1)
    lse = top + np.log(np.exp(Y - top[:, None]).sum(axis=1))
    return float(np.mean(lse - Y[np.arange(len(Y)), labels]))


# -- 1. interval bounds: containment, point boxes, nesting, validation ---------------------------
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_interval_bounds_contain_outputs_of_sampled_inputs_and_corners(activation, seed):
    net = tiny_net(seed, activation)
    n = net.n_hidden
    off = ~np.eye(n, dtype=bool)
    assert contraction.mu_inf(net.A) <= GAMMA + 1e-12
    assert np.all(np.diagonal(net.A) < 0) and np.any(net.A[off] < 0) and np.any(net.A[off] > 0)
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.0, 1.0, (3, net.n_in))
    radius = np.array([[0.01], [0.1], [0.5]]) * rng.uniform(0.5, 1.0, (3, net.n_in))
    U_lo, U_hi = centre - radius, centre + radius
    X_lo, X_hi, Y_lo, Y_hi = interval_bounds(net, U_lo, U_hi)
    assert X_lo.shape == X_hi.shape == (3, n) and Y_lo.shape == Y_hi.shape == (3, net.n_out)
    for k in range(3):
        X, Y = equilibrium(net, box_points(rng, U_lo[k], U_hi[k]))
        assert_within(X_lo[k], X, X_hi[k], f"x*(u), box {k}")
        assert_within(Y_lo[k], Y, Y_hi[k], f"y(u), box {k}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_interval_bounds_contain_the_attack_points(activation):
    """PGD and FGSM examples lie in the clipped ε-box, and the box's bounds contain their outputs."""
    net = tiny_net(11, activation)
    rng = np.random.default_rng(11)
    U = rng.uniform(0.0, 1.0, (20, net.n_in))
    U[:5, 0], U[5:10, 1] = 0.0, 1.0  # on the edge of the data range: the box is clipped
    labels = rng.integers(0, net.n_out, 20)
    eps = 0.1
    lo, hi = np.clip(U - eps, 0.0, 1.0), np.clip(U + eps, 0.0, 1.0)
    X_lo, X_hi, Y_lo, Y_hi = interval_bounds(net, lo, hi)
    for adv in (pgd_attack(net, U, labels, eps, steps=10, restarts=3, seed=1), fgsm_attack(net, U, labels, eps)):
        assert np.all(adv >= lo) and np.all(adv <= hi)
        X, Y = equilibrium(net, adv)
        assert_within(X_lo, X, X_hi, "x* at the attack point")
        assert_within(Y_lo, Y, Y_hi, "y at the attack point")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_interval_bounds_of_a_point_are_the_forward_pass(activation):
    net = tiny_net(3, activation)
    U = np.random.default_rng(3).uniform(0.0, 1.0, (5, net.n_in))
    X_lo, X_hi, Y_lo, Y_hi = interval_bounds(net, U, U)
    X, Y = equilibrium(net, U)
    for bound in (X_lo, X_hi):
        np.testing.assert_allclose(bound, X, rtol=0, atol=1e-8)
    for bound in (Y_lo, Y_hi):
        np.testing.assert_allclose(bound, Y, rtol=0, atol=1e-8)
    np.testing.assert_allclose(Y_lo, net.forward(U), rtol=0, atol=1e-8)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_interval_bounds_grow_with_the_box(activation):
    net = tiny_net(4, activation)
    U = np.random.default_rng(4).uniform(0.0, 1.0, (6, net.n_in))
    previous = None
    for eps in (0.0, 0.01, 0.05, 0.1, 0.3):
        current = interval_bounds(net, U - eps, U + eps)
        assert np.all(current[0] <= current[1] + TOL) and np.all(current[2] <= current[3] + TOL)
        if previous is not None:
            X_lo, X_hi, Y_lo, Y_hi = current
            pX_lo, pX_hi, pY_lo, pY_hi = previous
            assert np.all(X_lo <= pX_lo + TOL) and np.all(X_hi >= pX_hi - TOL), f"X bounds not nested at eps {eps}"
            assert np.all(Y_lo <= pY_lo + TOL) and np.all(Y_hi >= pY_hi - TOL), f"Y bounds not nested at eps {eps}"
        previous = current


def test_interval_bounds_reject_an_empty_or_misshapen_box():
    net = tiny_net(5)
    U = np.full((2, net.n_in), 0.5)
    bad = U.copy()
    bad[1, 2] -= 1e-3
    with pytest.raises(ValueError, match="U_lo must be <= U_hi"):
        interval_bounds(net, U, bad)
    with pytest.raises(ValueError, match="same shape"):
        interval_bounds(net, U, U[:1])
    with pytest.raises(ValueError, match="same shape"):
        interval_bounds(net, U[:, :-1], U[:, :-1])


# -- 2. the embedded network ------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_embedded_matrices_keep_the_log_norm_the_diagonal_and_the_step(seed):
    rng = np.random.default_rng(seed)
    n, m = 5, 3
    A, B = contracting_matrix(rng, n), rng.standard_normal((n, m))
    AA, BB = embedded_matrices(A, B)
    assert AA.shape == (2 * n, 2 * n) and BB.shape == (2 * n, 2 * m)
    A_M, A_N = AA[:n, :n], AA[:n, n:]
    np.testing.assert_array_equal(AA[n:, n:], A_M)
    np.testing.assert_array_equal(AA[n:, :n], A_N)
    np.testing.assert_array_equal(A_M + A_N, A)
    off = ~np.eye(n, dtype=bool)
    assert np.all(A_M[off] >= 0) and np.all(A_N <= 0) and np.all(np.diagonal(A_N) == 0)
    np.testing.assert_array_equal(BB[:n, :m], np.maximum(B, 0))
    np.testing.assert_array_equal(BB[:n, m:], np.minimum(B, 0))
    np.testing.assert_array_equal(BB[n:, :m], np.minimum(B, 0))
    np.testing.assert_array_equal(BB[n:, m:], np.maximum(B, 0))
    np.testing.assert_array_equal(np.diagonal(AA), np.concatenate([np.diagonal(A)] * 2))
    assert contraction.mu_inf(AA) == pytest.approx(contraction.mu_inf(A), rel=1e-14, abs=1e-14)
    assert contraction.optimal_alpha(AA) == contraction.optimal_alpha(A)
    eta = rng.uniform(0.5, 2.0, n)  # the weighted log-norm too, with weights (η, η)
    assert contraction.mu_inf(AA, np.concatenate([eta, eta])) == pytest.approx(contraction.mu_inf(A, eta), rel=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_embedded_fixed_point_is_the_interval_bounds(activation):
    net = tiny_net(6, activation)
    n = net.n_hidden
    rng = np.random.default_rng(6)
    U = rng.uniform(0.0, 1.0, (4, net.n_in))
    U_lo, U_hi = U - 0.1, U + 0.2
    AA, BB = embedded_matrices(net.A, net.B)
    W = np.hstack([U_hi, U_lo]) @ BB.T + np.concatenate([net.b, net.b])
    XX = solve(AA, W, atol=EXACT_ATOL, max_iter=50000, activation=net.activation, engine="numpy").x
    X_lo, X_hi, _, _ = interval_bounds(net, U_lo, U_hi)
    np.testing.assert_allclose(X_hi, XX[:, :n], rtol=0, atol=1e-9)
    np.testing.assert_allclose(X_lo, XX[:, n:], rtol=0, atol=1e-9)
    # The fixed point equations of the docstring, written out with A_M, A_N, B⁺, B⁻.
    A_M, A_N = AA[:n, :n], AA[:n, n:]
    Bp, Bm = np.maximum(net.B, 0), np.minimum(net.B, 0)
    sigma = net.activation
    np.testing.assert_allclose(X_hi, sigma(X_hi @ A_M.T + X_lo @ A_N.T + U_hi @ Bp.T + U_lo @ Bm.T + net.b), atol=1e-9)
    np.testing.assert_allclose(X_lo, sigma(X_lo @ A_M.T + X_hi @ A_N.T + U_lo @ Bp.T + U_hi @ Bm.T + net.b), atol=1e-9)


# -- 4. certificates by hand ------------------------------------------------------------------
def hand_net(A, B, b, C, c):
    net = exact(ImplicitNetwork(np.shape(B)[1], np.shape(A)[0], np.shape(C)[0]))
    net.A, net.B, net.b, net.C, net.c = (np.array(M, dtype=np.float64) for M in (A, B, b, C, c))
    return net


def test_lipschitz_certificate_by_hand():
    """n=2, m=1, q=2, ReLU. A = [[0.2, −0.3], [0.1, 0.4]]: μ∞ = max(0.2+0.3, 0.4+0.1) = 0.5;
    B = [1, −2]ᵀ: ‖B‖∞ = 2, so L_x = 2 / (1 − 0.5) = 4. At u = 0.5, w = Bu + b = [1, 0.5]; both
    units active: (I − A) x = w, det(I − A) = 0.8·0.6 + 0.3·0.1 = 0.51, x = [0.45, 0.5] / 0.51.
    With C = I, c = [0.2, 0]: margin y_0 − y_1 = 0.2 − 0.05/0.51, ‖C_0 − C_1‖_1 = 2, so the
    radius is margin / (2·4) ≈ 0.012745: certified at ε = 0.01, not at ε = 0.013."""
    net = hand_net([[0.2, -0.3], [0.1, 0.4]], [[1.0], [-2.0]], [0.5, 1.5], [[1.0, 0.0], [0.0, 1.0]], [0.2, 0.0])
    assert contraction.mu_inf(net.A) == pytest.approx(0.5)
    assert contraction.lipschitz_bound(net.A, net.B) == pytest.approx(4.0, rel=1e-14)
    assert contraction.lipschitz_bound(net.A, net.B, form="paper") == pytest.approx(4.0, rel=1e-14)
    u = np.array([[0.5]])
    x = np.array([0.45, 0.5]) / 0.51
    np.testing.assert_allclose(net.forward_pass(u).X[0], x, atol=1e-10)
    margin = 0.2 - 0.05 / 0.51
    radius = margin / (2 * 4.0)
    assert radius == pytest.approx(0.0127451, abs=1e-7)
    logits = net.forward(u)
    r, pred = contraction.certified_radius(logits, net.C, 4.0)
    assert pred[0] == 0 and r[0] == pytest.approx(radius, rel=1e-9)
    assert certified_by_lipschitz(net, u, [0], 0.01)[0]
    assert not certified_by_lipschitz(net, u, [0], 0.013)[0]
    assert not certified_by_lipschitz(net, u, [1], 0.0)[0]  # a wrong label is never certified
    assert certified_accuracy(net, u, [0], 0.01, method="lipschitz") == 1.0
    assert certified_accuracy(net, u, [0], 0.013, method="lipschitz") == 0.0


def test_lipschitz_certificate_tight_and_paper_forms_by_hand():
    """Negative μ: A = [[−1, 0.3], [0.2, −0.5]] has μ∞ = max(−0.7, −0.3) = −0.3, so with
    ‖B‖∞ = 2 the tight bound is 2 / 1.3 and the paper's 2 / (1 − max(0, μ)) = 2. At u = 0.5,
    w = [1, 0.5] + b = [1.5, 2]; both active: (I − A) = [[2, −0.3], [−0.2, 1.5]], det = 2.94,
    x = [1.5·1.5 + 0.3·2, 0.2·1.5 + 2·2] / 2.94 = [2.85, 4.3] / 2.94. C = [[1, 0], [0, 1]],
    c = [1.5, 0]: margin 1.5 − 1.45/2.94; radii margin / (2 L): tight ≈ 0.3272, paper ≈ 0.2517."""
    net = hand_net([[-1.0, 0.3], [0.2, -0.5]], [[1.0], [-2.0]], [1.0, 3.0], np.eye(2), [1.5, 0.0])
    tight, paper = 2 / 1.3, 2.0
    assert contraction.lipschitz_bound(net.A, net.B) == pytest.approx(tight, rel=1e-14)
    assert contraction.lipschitz_bound(net.A, net.B, form="paper") == pytest.approx(paper, rel=1e-14)
    u = np.array([[0.5]])
    np.testing.assert_allclose(net.forward_pass(u).X[0], np.array([2.85, 4.3]) / 2.94, atol=1e-10)
    margin = 1.5 - 1.45 / 2.94
    r_tight, r_paper = margin / (2 * tight), margin / (2 * paper)
    assert (r_tight, r_paper) == pytest.approx((0.32721, 0.25170), abs=1e-5)
    eps = 0.3  # between the two radii
    assert certified_by_lipschitz(net, u, [0], eps, form="tight")[0]
    assert not certified_by_lipschitz(net, u, [0], eps, form="paper")[0]


def test_interval_certificate_by_hand(monkeypatch):
    """A ≥ 0 and B ≥ 0: the map is monotone, so x_lo, x_hi are the equilibria at u_lo, u_hi.
    A = [[0.2, 0.3], [0.1, 0.4]], B = [1, 0.5]ᵀ, b = [0.1, −0.1]: w(u) = [u + 0.1, 0.5u − 0.1];
    both units active, (I − A)⁻¹ = [[0.6, 0.3], [0.1, 0.8]] / 0.45, so
    x(u) = [0.75u + 0.045, 0.5u − 0.07] / 0.45 = [0.9, 0.4] + (u − 0.5)·[5/3, 10/9].
    Box u ∈ [0.4, 0.6]: x_lo = [0.33, 0.13]/0.45, x_hi = [0.48, 0.23]/0.45.
    C = [[1, −1], [0, 0.5]], c = [0, 0.1]: label 0, D = C_0 − C_1 = [1, −1.5], c_0 − c_1 = −0.1;
    the interval lower bound of the margin at radius ε is
    x_lo,0 − 1.5 x_hi,1 − 0.1 = 0.2 − ε (5/3 + 1.5·10/9) = 0.2 − (10/3) ε:
    certified for ε < 0.06 (0.05: lower bound 1/30), not at ε = 0.1 (lower bound −2/15).
    The true margin is 0.2 for every u (5/3 − 1.5·10/9 = 0), and one substitution of the
    equilibrium proves it positive at ε = 0.1: with the self-loops out, x = r / (1 − a_ii),
    r = (A − diag a) x + B u + b (both units active on the box), the margin is
    h·r − 0.1 with h = [1/0.8, −1.5/0.6] = [1.25, −2.5]: Bᵀh = 0 (the input cancels),
    h·b − 0.1 = 0.275, and (A − diag a)ᵀh = [−0.25, 0.375] over the state box gives
    −0.25·0.48/0.45 + 0.375·0.13/0.45, so the bound is 7/60."""
    import solvers.training._robust as robust

    net = hand_net([[0.2, 0.3], [0.1, 0.4]], [[1.0], [0.5]], [0.1, -0.1], [[1.0, -1.0], [0.0, 0.5]], [0.0, 0.1])
    u = np.array([[0.5]])
    X_lo, X_hi, Y_lo, Y_hi = interval_bounds(net, u - 0.1, u + 0.1)
    x_lo, x_hi = np.array([0.33, 0.13]) / 0.45, np.array([0.48, 0.23]) / 0.45
    np.testing.assert_allclose(X_lo[0], x_lo, atol=1e-10)
    np.testing.assert_allclose(X_hi[0], x_hi, atol=1e-10)
    # y_0 = x_0 − x_1, y_1 = 0.5 x_1 + 0.1: C⁺ x_hi + C⁻ x_lo + c and vice versa.
    np.testing.assert_allclose(Y_hi[0], [x_hi[0] - x_lo[1], 0.5 * x_hi[1] + 0.1], atol=1e-10)
    np.testing.assert_allclose(Y_lo[0], [x_lo[0] - x_hi[1], 0.5 * x_lo[1] + 0.1], atol=1e-10)
    low = margin_lower_bounds(net, X_lo, X_hi, np.array([0]))
    np.testing.assert_allclose(low[0], [0.0, 0.2 - 0.1 * 10 / 3], atol=1e-10)
    for eps, expected_low in ((0.05, 1 / 30), (0.1, -2 / 15)):
        X_lo, X_hi, _, _ = interval_bounds(net, u - eps, u + eps)
        assert margin_lower_bounds(net, X_lo, X_hi, np.array([0]))[0, 1] == pytest.approx(expected_low, abs=1e-10)
        assert certified_by_interval(net, u, [0], eps)[0]
        assert certified_accuracy(net, u, [0], eps) == 1.0
    X_lo, X_hi, _, _ = interval_bounds(net, u - 0.1, u + 0.1)
    one = substituted_margins(net, X_lo, X_hi, u - 0.1, u + 0.1, [0], [0], [1], steps=1)
    assert one[0] == pytest.approx(7 / 60, abs=1e-10)
    monkeypatch.setattr(robust, "SUBSTITUTION_STEPS", 0)  # the state box alone
    assert not certified_by_interval(net, u, [0], 0.1)[0]
    # The Lipschitz certificate of the same network: L_x = 1 / (1 − 0.5) = 2, ‖D‖_1 = 2.5,
    # margin 0.2, radius 0.2 / 5 = 0.04: certified at 0.03, not at 0.05 (where the interval one is).
    assert certified_by_lipschitz(net, u, [0], 0.03)[0]
    assert not certified_by_lipschitz(net, u, [0], 0.05)[0]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_certified_sets_shrink_with_eps_and_start_at_the_correct_predictions(activation):
    net = tiny_net(7, activation)
    rng = np.random.default_rng(7)
    U = rng.uniform(0.0, 1.0, (40, net.n_in))
    labels = net.predict(U)
    labels[::4] = (labels[::4] + 1) % net.n_out  # some wrong labels: never certified
    correct = net.predict(U) == labels
    for method in (certified_by_interval, certified_by_lipschitz):
        previous = correct
        for eps in (0.0, 1e-3, 0.01, 0.03, 0.1):
            cert = method(net, U, labels, eps)
            assert cert.dtype == bool and cert.shape == (40,)
            assert not np.any(cert & ~previous), f"{method.__name__}: certified at {eps} but not at a smaller eps"
            previous = cert
    assert np.array_equal(certified_by_interval(net, U, labels, 0.0), correct)
    with pytest.raises(ValueError, match="method"):
        certified_accuracy(net, U, labels, 0.01, method="crown")


# -- 5. the interval loss ---------------------------------------------------------------------


def interval_instance(activation, eps, seed=0):
    """A tiny network, inputs inside (ε, 1 − ε) and labels such that every sign split
    (of A, B, D = C_y − C_j and, for ReLU, the embedded pre-activations) is KINK_MARGIN from 0."""
    for attempt in range(100):
        net = tiny_net(100 * seed + attempt, activation, n_in=3, n=4, q=3)
        rng = np.random.default_rng([seed, attempt])
        U = rng.uniform(eps + 0.05, 1 - eps - 0.05, (4, 3))
        labels = rng.integers(0, 3, 4)
        D = net.C[labels][:, None, :] - net.C[None, :, :]
        D = D[labels[:, None] != np.arange(3)[None, :]]
        AA, W2, _, _, res = _solve_embedded(net, U - eps, U + eps)
        Z2 = res.x @ AA.T + W2
        generic = min(np.abs(net.A).min(), np.abs(net.B).min(), np.abs(D).min()) > 1e-3
        if generic and (activation != "relu" or np.abs(Z2).min() > KINK_MARGIN):
            return net, U, labels
    raise AssertionError("could not draw an instance away from the kinks")


@pytest.mark.parametrize("method", ("average", "anderson", "per_unit"))
@pytest.mark.parametrize("activation", ("relu", "tanh"))
def test_interval_loss_gradients_match_finite_differences(activation, method):
    """Also with Anderson, which then solves the embedded network and its adjoint, and with
    per-unit steps in the averaged solves."""
    import dataclasses

    eps = 0.05
    net, U, labels = interval_instance(activation, eps)
    if method == "per_unit":
        net.solver = dataclasses.replace(net.solver, method="average", alpha="per_unit")
    else:
        net.solver = dataclasses.replace(net.solver, method=method)
    value, grads = interval_loss_and_grad(net, U, labels, eps)
    assert set(grads) == set(ImplicitNetwork.PARAMS)

    def f():
        return interval_loss_and_grad(net, U, labels, eps)[0]

    assert f() == value
    for name in ImplicitNetwork.PARAMS:
        P = getattr(net, name)
        assert grads[name].shape == P.shape and grads[name].dtype == np.float64
        np.testing.assert_allclose(grads[name], central_difference(f, P), rtol=1e-5, atol=1e-7, err_msg=f"dL/d{name}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_interval_loss_bounds_the_clean_loss_and_equals_it_at_eps_zero(activation):
    net = tiny_net(8, activation)
    rng = np.random.default_rng(8)
    U = rng.uniform(0.0, 1.0, (10, net.n_in))
    labels = rng.integers(0, net.n_out, 10)
    clean = cross_entropy(net.forward(U), labels)
    values = [interval_loss_and_grad(net, U, labels, eps)[0] for eps in (0.0, 0.01, 0.05, 0.2)]
    assert values[0] == pytest.approx(clean, rel=1e-9, abs=1e-12)
    assert all(v >= clean - 1e-12 for v in values)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))  # a larger box is worse
    # At ε = 0 the worst-case logits are the clean margins: the same loss, the same gradients.
    clean_value, clean_grads = net.loss_and_grad(U, labels)
    _, grads = interval_loss_and_grad(net, U, labels, 0.0)
    assert clean_value == pytest.approx(clean, rel=1e-12)
    for name in ImplicitNetwork.PARAMS:
        np.testing.assert_allclose(grads[name], clean_grads[name], rtol=1e-7, atol=1e-10, err_msg=name)


# -- 3, 6. trained digits models --------------------------------------------------------------
HIDDEN, EPOCHS, BATCH, EVAL = 24, 3, 25, 150


def train_digits(data, interval_eps):
    X, y, _, _ = data
    net = ImplicitNetwork(X.shape[1], HIDDEN, int(y.max()) + 1, seed=0)
    train(net, X, y, epochs=EPOCHS, batch_size=BATCH, lr=3e-3, seed=0, progress=False, interval_eps=interval_eps)
    return net


@pytest.fixture(scope="module")
def digits_models():
    """``({"plain": net, "interval": net}, U, y)``: the same model trained without and with
    interval-bound training (ε = 0.05), and the first EVAL test samples."""
    data = load_dataset("digits")
    models = {"plain": train_digits(data, 0.0), "interval": train_digits(data, 0.05)}
    _, _, Xt, yt = data
    return models, Xt[:EVAL].astype(np.float64), yt[:EVAL]


@pytest.mark.parametrize("eps", (LIP_EPS, *EPS_LIST))
@pytest.mark.parametrize("model", ("plain", "interval"))
def test_certified_samples_are_not_flipped_by_the_attacks(digits_models, model, eps):
    models, U, y = digits_models
    net = models[model]
    by_interval = certified_by_interval(net, U, y, eps)
    by_lipschitz = certified_by_lipschitz(net, U, y, eps)
    pgd = pgd_attack(net, U, y, eps, steps=10, restarts=3, seed=0)
    fgsm = fgsm_attack(net, U, y, eps)
    for name, cert in (("interval", by_interval), ("lipschitz", by_lipschitz)):
        for attack, adv in (("PGD", pgd), ("FGSM", fgsm)):
            flipped = cert & (net.predict(adv) != y)
            assert not flipped.any(), f"{name}-certified samples {np.flatnonzero(flipped)} flipped by {attack}"
    if eps == LIP_EPS:
        assert by_lipschitz.any() and by_interval.any()  # the test is not vacuous
    if eps == 0.01:
        assert by_interval.sum() >= 0.3 * EVAL


@pytest.mark.parametrize("model", ("plain", "interval"))
def test_certified_accuracy_below_attacked_below_clean(digits_models, model):
    models, U, y = digits_models
    net = models[model]
    clean = net.accuracy(U, y)
    assert clean > 0.5
    for eps in EPS_LIST:
        certified = max(certified_accuracy(net, U, y, eps, "interval"), certified_accuracy(net, U, y, eps, "lipschitz"))
        pgd = robust_accuracy(net, U, y, eps, attack="pgd", steps=10, restarts=2)
        fgsm = robust_accuracy(net, U, y, eps, attack="fgsm")
        assert certified <= pgd <= clean, f"eps {eps}: certified {certified}, PGD {pgd}, clean {clean}"
        assert fgsm <= clean
        assert pgd <= fgsm + PGD_FGSM_SLACK, f"eps {eps}: PGD {pgd} weaker than FGSM {fgsm}"
    with pytest.raises(ValueError, match="attack"):
        robust_accuracy(net, U, y, 0.01, attack="cw")


@pytest.mark.parametrize("eps", EPS_LIST)
def test_attacks_stay_in_the_ball_and_the_data_range(digits_models, eps):
    models, U, y = digits_models
    net = models["plain"]
    assert U.min() == 0.0 and U.max() == 1.0  # pixels on both edges: the clipping matters
    for adv in (pgd_attack(net, U, y, eps, steps=5, restarts=2, seed=3), fgsm_attack(net, U, y, eps),
                pgd_attack(net, U, y, eps, steps=3, step_size=0.5)):  # steps far larger than ε
        assert adv.shape == U.shape and np.all(np.isfinite(adv))
        assert np.abs(adv - U).max() <= eps + 1e-12
        assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_pgd_is_deterministic_under_a_seed(digits_models):
    models, U, y = digits_models
    net = models["plain"]
    U, y = U[:40], y[:40]
    first = pgd_attack(net, U, y, 0.05, steps=5, restarts=2, seed=7)
    np.testing.assert_array_equal(first, pgd_attack(net, U, y, 0.05, steps=5, restarts=2, seed=7))
    assert not np.array_equal(first, pgd_attack(net, U, y, 0.05, steps=5, restarts=2, seed=8))
    np.testing.assert_array_equal(fgsm_attack(net, U, y, 0.05), fgsm_attack(net, U, y, 0.05))


def test_pgd_never_returns_a_better_point_than_the_clean_input():
    """x = relu(±(u − 0.5)), y_0 = u − 0.5 = −y_1: class 0 iff u > 0.5. U = 0.49 with label 0
    is misclassified, and U itself lies in the ball, so the attack's point must be too. A
    short attack (1 step of 1e-4) from the random start returns the start, which is on the
    correct side for about half of the copies."""
    net = hand_net(np.zeros((2, 2)), [[1.0], [-1.0]], [-0.5, 0.5], [[1.0, -1.0], [-1.0, 1.0]], [0.0, 0.0])
    U, y = np.full((20, 1), 0.49), np.zeros(20, dtype=int)
    assert not np.any(net.predict(U) == y)
    adv = pgd_attack(net, U, y, 0.1, steps=1, step_size=1e-4, seed=0)
    assert robust_accuracy(net, U, y, 0.1, steps=1, step_size=1e-4, seed=0) <= net.accuracy(U, y)
    assert not np.any(net.predict(adv) == y)


def test_pgd_restarts_only_add_successes():
    """Same network, U = 0.51 with label 0 (correct by 0.01): a 1e-4 step from the random
    start succeeds exactly when the start lies below 0.5. Restart 1 draws the same start for
    every ``restarts``, so more restarts succeed on a superset, and on more samples."""
    net = hand_net(np.zeros((2, 2)), [[1.0], [-1.0]], [-0.5, 0.5], [[1.0, -1.0], [-1.0, 1.0]], [0.0, 0.0])
    U, y = np.full((40, 1), 0.51), np.zeros(40, dtype=int)
    assert np.all(net.predict(U) == y)
    fooled = {r: net.predict(pgd_attack(net, U, y, 0.1, steps=1, step_size=1e-4, restarts=r, seed=0)) != y
              for r in (1, 5)}
    assert not np.any(fooled[1] & ~fooled[5])
    assert 0 < fooled[1].sum() < fooled[5].sum()


def test_tied_logits_are_never_certified():
    """Two identical output rows: the margin is exactly 0 at every input, so no radius, not
    even ε = 0, is certified (a strict inequality), whatever argmax picks."""
    net = hand_net([[0.2, -0.3], [0.1, 0.4]], [[1.0], [-2.0]], [0.5, 1.5], [[1.0, 2.0], [1.0, 2.0]], [0.3, 0.3])
    u = np.array([[0.5]])
    for label in (0, 1):
        for eps in (0.0, 0.01):
            assert not certified_by_interval(net, u, [label], eps)[0]
            assert not certified_by_lipschitz(net, u, [label], eps)[0]


def test_interval_training_certifies_more(digits_models):
    models, U, y = digits_models
    plain = certified_accuracy(models["plain"], U, y, 0.05)
    robust = certified_accuracy(models["interval"], U, y, 0.05)
    assert robust > plain + 0.1, f"interval-trained {robust} vs plain {plain}"
    assert contraction.mu_inf(models["interval"].A) <= 0.9 + 1e-9  # still well-posed


@pytest.mark.parametrize("model", ("plain", "interval"))
def test_certificates_equal_those_of_the_exactly_solved_embedded_network(digits_models, model, monkeypatch):
    """At the certifying tolerance (CERTIFY_ATOL, widened by the error bound and clamped to the
    activation's range) the certified samples are those of the embedded network solved to
    rounding: the widening costs no certificate."""
    import solvers.training._robust as robust

    models, U, y = digits_models
    net = models[model]
    ours = {eps: certified_by_interval(net, U, y, eps) for eps in EPS_LIST}
    monkeypatch.setattr(robust, "CERTIFY_ATOL", 1e-14)
    for eps, certified in ours.items():
        exact = certified_by_interval(net, U, y, eps)
        np.testing.assert_array_equal(certified, exact, err_msg=f"eps {eps}")


# -- 6. trainer options -----------------------------------------------------------------------
def test_ramped_eps_grows_linearly_to_interval_eps():
    cfg = TrainConfig(interval_eps=0.1, interval_ramp=4)
    n_batches = 10
    steps = [(e, b) for e in range(6) for b in range(n_batches)]
    eps = np.array([_ramped_eps(cfg, e, b, n_batches) for e, b in steps])
    progress = np.array([e + b / n_batches for e, b in steps])
    np.testing.assert_allclose(eps, 0.1 * np.minimum(progress / 4, 1.0), rtol=1e-14)
    assert eps[0] == 0.0 and _ramped_eps(cfg, 2, 0, n_batches) == pytest.approx(0.05)
    assert np.all(np.diff(eps) >= 0) and np.all(eps[progress >= 4] == 0.1)
    ramp = eps[progress < 4]
    np.testing.assert_allclose(np.diff(ramp), 0.1 / (4 * n_batches), rtol=1e-9)  # linear
    no_ramp = TrainConfig(interval_eps=0.1, interval_ramp=0)
    assert {_ramped_eps(no_ramp, e, b, n_batches) for e, b in steps} == {0.1}


@pytest.mark.parametrize("model", ("dense", "conv"))
def test_interval_weight_one_skips_the_clean_gradient_and_trains_the_same(model):
    """At interval_weight = 1 the trainer skips the clean gradient (weight 0); the parameters
    and the epoch records match those of the mixed loss at a weight just below 1, where the
    clean gradient is computed and weighted by 1e-9."""
    from solvers.training import ConvImplicitNetwork

    rng = np.random.default_rng(3)
    if model == "dense":
        make = lambda: ImplicitNetwork(16, 12, 3, seed=0, solver=SolverConfig(engine="numba"))  # noqa: E731
        X = rng.uniform(0.0, 1.0, (40, 16))
    else:
        make = lambda: ConvImplicitNetwork(in_shape=(1, 6, 6), channels=3, kernel_size=3, n_out=3,  # noqa: E731
                                           pool=2, seed=0)
        X = rng.uniform(0.0, 1.0, (40, 36)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    nets, records = [], []
    for weight in (1.0, 1.0 - 1e-9):
        net = make()
        h = train(net, X, y, epochs=2, batch_size=10, lr=1e-2, seed=0, progress=False, interval_eps=0.1,
                  interval_ramp=1, interval_weight=weight)
        nets.append(net)
        records.append(h.epochs)
    for name in type(nets[0]).PARAMS:
        a, b = (np.asarray(getattr(n, name), dtype=np.float64) for n in nets)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    for r1, r2 in zip(*records):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-4)
        assert r1["train_acc"] == r2["train_acc"] and r1["fwd_iters"] == r2["fwd_iters"]
        assert r1["adj_iters"] > 0  # the embedded adjoint's iterations


@pytest.mark.parametrize("kwargs, match", [
    (dict(interval_eps=0.05, interval_weight=1.5), "interval_weight"),
    (dict(interval_eps=0.05, interval_weight=-0.1), "interval_weight"),
    (dict(interval_eps=-0.05), "interval_eps"),
    (dict(interval_eps=0.05, interval_ramp=-1), "interval_ramp"),
    (dict(interval_eps=0.05, loss="mse"), "cross_entropy"),
])
def test_invalid_interval_options_raise(kwargs, match):
    rng = np.random.default_rng(0)
    net = ImplicitNetwork(4, 5, 3, seed=0, solver=SolverConfig(engine="numpy"))
    X = rng.uniform(0.0, 1.0, (10, 4))
    y = rng.integers(0, 3, 10)
    if kwargs.get("loss") == "mse":
        y = rng.standard_normal((10, 3))
    A = net.A.copy()
    with pytest.raises(ValueError, match=match):
        train(net, X, y, epochs=1, batch_size=5, progress=False, **kwargs)
    np.testing.assert_array_equal(net.A, A)  # rejected before any step


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_interval_bounds_solved_with_anderson_contain_sampled_outputs(activation):
    """A network trained with forward_method='anderson' solves its embedded network with
    Anderson too; the bounds (widened by the a-posteriori error bound) stay sound."""
    import dataclasses

    net = tiny_net(7, activation)
    net.solver = dataclasses.replace(net.solver, method="anderson")
    rng = np.random.default_rng(7)
    centre = rng.uniform(0.0, 1.0, (2, net.n_in))
    U_lo, U_hi = centre - 0.1, centre + 0.1
    X_lo, X_hi, Y_lo, Y_hi = interval_bounds(net, U_lo, U_hi)
    for k in range(2):
        X, Y = equilibrium(net, box_points(rng, U_lo[k], U_hi[k]))
        assert_within(X_lo[k], X, X_hi[k], f"x*(u), box {k}")
        assert_within(Y_lo[k], Y, Y_hi[k], f"y(u), box {k}")


@pytest.mark.parametrize("activation", ["relu", "tanh", "hard_tanh", "softplus", "leaky_relu"])
def test_interval_bounds_lie_in_the_activations_range(activation):
    """The widening by the solver's error bound is clamped to σ's range: ReLU lower bounds are
    never below 0 (they used to sit about 1e-5 below), tanh bounds within [-1, 1]."""
    from solvers import get_activation
    from solvers.training import interval_bounds

    rng = np.random.default_rng(3)
    net = ImplicitNetwork(6, 8, 3, activation=activation, seed=2)
    net.A = (0.5 * net.A).astype(net.dtype)
    U = rng.uniform(0.2, 0.8, (5, 6))
    X_lo, X_hi, _, _ = interval_bounds(net, U - 0.1, U + 0.1)
    low, high = get_activation(activation).range
    assert np.all(X_lo >= low) and np.all(X_hi <= high) and np.all(X_lo <= X_hi)
    for _ in range(10):  # still sound
        fp = net.forward_pass(rng.uniform(U - 0.1, U + 0.1))
        assert np.all(fp.X >= X_lo - 1e-12) and np.all(fp.X <= X_hi + 1e-12)


def test_robustness_table_shows_each_measurement_on_its_progress_bar(monkeypatch):
    """``nemon certify`` and ``nemon attack`` can take minutes: with ``progress`` the table
    names each measurement (its ε and kind) on a bar before it runs, and counts it after, with
    the same rows as without the bar."""
    import tqdm.auto

    bars = []

    class Recorder:
        def __init__(self, total, **kw):
            self.total, self.n, self.seen, self.closed = total, 0, [], False
            bars.append(self)

        def set_description(self, text):
            self.seen.append((self.n, text))

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    net = tiny_net(3)
    rng = np.random.default_rng(3)
    U, y = rng.uniform(0, 1, (12, N_IN)), rng.integers(0, N_OUT, 12)
    plain = robustness_table(net, U, y, [0.05, 0.1], pgd_steps=2)
    assert not bars
    shown = robustness_table(net, U, y, [0.05, 0.1], pgd_steps=2, progress=True)
    assert shown == plain
    (bar,) = bars
    assert bar.closed and bar.n == bar.total == 10
    kinds = ["interval certificate", "Lipschitz certificate", "Lipschitz certificate (paper)", "FGSM",
             "PGD (2 steps)"]
    assert bar.seen == [(i, f"eps {e:g}: {k}") for i, (e, k) in enumerate(itertools.product([0.05, 0.1], kinds))]
