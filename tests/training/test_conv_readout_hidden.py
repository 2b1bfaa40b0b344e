"""``ConvImplicitNetwork(readout_hidden=h)``: the readout ``C relu(D pool(x) + d) + c``.

Gradients against finite differences (clean and interval losses), interval bounds against an
independent computation and against sampled and attacked inputs, the Lipschitz bound against
the network's own quotients, the reduction to the linear readout, checkpoints and training
(issue 14)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import contraction
from solvers.training import (ConvImplicitNetwork, SolverConfig, TrainConfig, interval_bounds, load_training,
                              pgd_attack, save, train)
from solvers.training._robust import certified_by_interval, certified_by_lipschitz, interval_loss_and_grad

EXACT = dict(atol=1e-12, adjoint_atol=1e-12, max_iter=20000)


def small(activation="relu", padding="circular", stride=1, hidden=5, engine="numpy", dtype=np.float64):
    """A 3-channel layer on a 6x4 state with a hidden readout layer; biases so that some hidden
    units are active and some are not."""
    net = ConvImplicitNetwork((2, 6 * stride, 4 * stride), 3, 3, 4, 2, padding=padding, activation=activation,
                              dtype=dtype, solver=SolverConfig(engine=engine, **EXACT), seed=3, stride=stride,
                              readout_hidden=hidden)
    net.A = contraction.project_mu_inf(Conv2d_of(net, 3.0), 0.8).kernel.astype(dtype)
    net.b = np.linspace(-0.2, 0.3, 3).astype(dtype)
    net.d = np.linspace(-0.3, 0.3, hidden).astype(dtype)
    net.c = np.linspace(-0.1, 0.1, 4).astype(dtype)
    return net


def Conv2d_of(net, scale):
    return contraction.Conv2d(scale * net.A.astype(np.float64), net.state_shape, net.padding)


def inputs(net, batch=5):
    rng = np.random.default_rng(0)
    return rng.uniform(0.2, 0.8, (batch, net.n_in)), rng.integers(0, 4, batch)


def _check_fd(f, net, grads, atol, rng, per_param=3):
    for name in net.PARAMS:
        P = getattr(net, name)
        assert grads[name].shape == P.shape and grads[name].dtype == P.dtype, name
        # The sign splits are kinks at 0, where the projection leaves many taps of A: away from them.
        smooth = np.argwhere(np.abs(P) > 1e-3) if name == "A" else np.argwhere(np.ones(P.shape, bool))
        for row in rng.choice(len(smooth), min(per_param, len(smooth)), replace=False):
            idx = tuple(int(i) for i in smooth[row])
            old, h = P[idx], 1e-6
            P[idx] = old + h
            up = f()
            P[idx] = old - h
            down = f()
            P[idx] = old
            assert grads[name][idx] == pytest.approx((up - down) / (2 * h), abs=atol), (name, idx)


def test_parameters_shapes_and_repr():
    net = small(hidden=7)
    assert net.PARAMS == ("A", "B", "b", "D", "d", "C", "c")
    assert net.D.shape == (7, 3 * 3 * 2) and net.d.shape == (7,) and net.C.shape == (4, 7)
    assert net.parameter_count() == sum(getattr(net, k).size for k in net.PARAMS)
    assert "readout_hidden=7" in repr(net) and net.architecture()["readout_hidden"] == 7
    linear = ConvImplicitNetwork((2, 6, 4), 3, 3, 4, 2)
    assert "D" not in linear.PARAMS and "readout_hidden" not in repr(linear)
    with pytest.raises(ValueError, match="readout_hidden"):
        ConvImplicitNetwork((2, 6, 4), 3, 3, 4, 2, readout_hidden=-1)
    with pytest.raises(ValueError, match="hidden layer of 7 units"):
        net.readout_matrix()


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_are_exact(activation, stride):
    net = small(activation, stride=stride)
    U, y = inputs(net)
    value, grads = net.loss_and_grad(U, y)
    _check_fd(lambda: net.loss_and_grad(U, y)[0], net, grads, 1e-7, np.random.default_rng(1))
    # The input gradient too (what FGSM and PGD use), one sample at a time.
    g = net.input_gradient(U[:1], y[:1])
    rng = np.random.default_rng(2)
    for j in rng.choice(net.n_in, 4, replace=False):
        e = np.zeros_like(U[:1])
        e[0, j] = 1e-6
        up = net._output_grad(net.forward(U[:1] + e), y[:1], "cross_entropy", "sum")[0]
        down = net._output_grad(net.forward(U[:1] - e), y[:1], "cross_entropy", "sum")[0]
        assert g[0, j] == pytest.approx((up - down) / 2e-6, abs=1e-7)


def test_a_hidden_layer_that_is_the_identity_reduces_to_the_linear_readout():
    """``D = I`` and ``d`` large enough that every unit is active: ``C relu(f + d) + c =
    C f + (C d + c)``; outputs, interval bounds, the interval loss and certificates agree."""
    net = small(hidden=18)
    linear = ConvImplicitNetwork((2, 6, 4), 3, 3, 4, 2, dtype=np.float64, solver=net.solver, seed=3)
    linear.A, linear.B, linear.b, linear.C = net.A, net.B, net.b, net.C
    net.D = np.eye(18)
    net.d = np.full(18, 10.0)
    linear.c = net.C @ net.d + net.c
    U, y = inputs(net)
    np.testing.assert_allclose(net.forward(U), linear.forward(U), atol=1e-10)
    lo, hi = U - 0.05, U + 0.05
    for got, want in zip(interval_bounds(net, lo, hi), interval_bounds(linear, lo, hi)):
        np.testing.assert_allclose(got, want, atol=1e-9)
    assert interval_loss_and_grad(net, U, y, 0.05)[0] == pytest.approx(interval_loss_and_grad(linear, U, y, 0.05)[0])
    np.testing.assert_array_equal(certified_by_interval(net, U, y, 0.02), certified_by_interval(linear, U, y, 0.02))
    assert net.lipschitz() == pytest.approx(linear.lipschitz() * 1.0)  # ||D|| = 1, ||C|| the same


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("padding", contraction.PADDINGS)
def test_interval_loss_is_the_worst_case_bound_and_its_gradients_are_exact(activation, padding):
    net = small(activation, padding, stride=2)
    U, y = inputs(net)
    eps = 0.05
    value, grads = interval_loss_and_grad(net, U, y, eps)
    # Independently: state bounds, pooled features, D⁺/D⁻ through the hidden layer, then the
    # margins (C_y − C_j) h over the hidden box, entry by entry.
    X_lo, X_hi, _, _ = interval_bounds(net, np.clip(U - eps, 0, 1), np.clip(U + eps, 0, 1))
    F_lo, F_hi = net._pool(X_lo), net._pool(X_hi)
    Dp, Dm = np.maximum(net.D, 0), np.minimum(net.D, 0)
    H_hi = np.maximum(F_hi @ Dp.T + F_lo @ Dm.T + net.d, 0)
    H_lo = np.maximum(F_lo @ Dp.T + F_hi @ Dm.T + net.d, 0)
    want = 0.0
    for b in range(len(y)):
        diff = net.C[y[b]] - net.C
        z = -(np.where(diff >= 0, diff * H_lo[b], diff * H_hi[b]).sum(axis=1) + net.c[y[b]] - net.c)
        z[y[b]] = 0.0
        want += np.log(np.exp(z).sum())  # z_y = 0
    # interval_bounds solves at the certificate tolerance, the loss at the network's (also tight).
    assert value == pytest.approx(want / len(y), rel=1e-8)
    assert value > net.loss_and_grad(U, y)[0]
    _check_fd(lambda: interval_loss_and_grad(net, U, y, eps)[0], net, grads, 2e-7, np.random.default_rng(7), 4)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("padding", contraction.PADDINGS)
def test_relaxed_interval_loss_trains_on_the_larger_sound_bound_and_its_gradients_are_exact(activation, padding):
    """``relax=K``: the margins of each sample's K closest classes are also bounded by the
    hidden layer's relaxation (the adaptive line of ``margin_lines``, minimised over the
    feature box), and the larger bound enters the worst-case logits."""
    net = small(activation, padding, stride=2, hidden=9)
    U, y = inputs(net, 6)
    eps = 0.05
    value, grads = interval_loss_and_grad(net, U, y, eps, relax=2)
    X_lo, X_hi, _, _ = interval_bounds(net, np.clip(U - eps, 0, 1), np.clip(U + eps, 0, 1))
    F_lo, F_hi = net._pool(X_lo), net._pool(X_hi)
    H_lo, H_hi = net.hidden_bounds(F_lo, F_hi)
    want, replaced = 0.0, 0
    for b in range(len(y)):
        diff = net.C[y[b]] - net.C
        low = np.where(diff >= 0, diff * H_lo[b], diff * H_hi[b]).sum(axis=1) + net.c[y[b]] - net.c
        others = [j for j in np.argsort(low, kind="stable") if j != y[b]]
        for j in others[:2]:
            g, e = net.margin_lines(F_lo[b : b + 1], F_hi[b : b + 1], [y[b]], [j])[2]  # lambda = [u >= -l]
            line = np.minimum(g * F_lo[b], g * F_hi[b]).sum() + e[0]
            replaced += line > low[j]
            low[j] = max(low[j], line)
        low[y[b]] = 0.0
        want += np.log(np.exp(-low).sum())
    assert replaced > 0  # the relaxation is tighter for some margins here
    assert value == pytest.approx(want / len(y), rel=1e-8)
    plain = interval_loss_and_grad(net, U, y, eps)[0]
    assert value < plain
    # More classes relaxed: a smaller loss; more than q - 1 of them: all of them.
    assert interval_loss_and_grad(net, U, y, eps, relax=3)[0] <= value
    assert interval_loss_and_grad(net, U, y, eps, relax=10)[0] == interval_loss_and_grad(net, U, y, eps, relax=3)[0]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="relax must be an integer >= 0"):
            interval_loss_and_grad(net, U, y, eps, relax=bad)
    _check_fd(lambda: interval_loss_and_grad(net, U, y, eps, relax=2)[0], net, grads, 2e-7, np.random.default_rng(8), 4)
    # A linear readout's interval bound is exact: nothing to relax.
    linear = ConvImplicitNetwork((2, 12, 8), 3, 3, 4, 2, dtype=np.float64, solver=net.solver, seed=3, stride=2)
    assert interval_loss_and_grad(linear, U, y, eps, relax=2)[0] == interval_loss_and_grad(linear, U, y, eps)[0]


def test_interval_bounds_hold_for_sampled_and_attacked_inputs_and_certificates_are_sound():
    net = small("relu", "zeros", stride=2, hidden=6, engine="numba")
    rng = np.random.default_rng(6)
    U = rng.uniform(0.1, 0.9, (6, net.n_in))
    eps = 0.03
    lo, hi = U - eps, U + eps
    _, _, Y_lo, Y_hi = interval_bounds(net, lo, hi)
    assert np.all(Y_lo <= Y_hi) and np.all(np.isfinite(Y_lo))
    samples = [rng.uniform(lo, hi) for _ in range(30)] + [lo, hi]
    y = net.predict(U)
    samples.append(pgd_attack(net, U, y, eps, steps=10))
    for V in samples:
        Y = net.forward(V)
        assert np.all(Y >= Y_lo - 1e-9) and np.all(Y <= Y_hi + 1e-9)
    attacked = net.predict(samples[-1])
    for ok in (certified_by_interval(net, U, y, eps), certified_by_lipschitz(net, U, y, eps)):
        assert np.all(attacked[ok] == y[ok])  # a certified sample is never broken
    assert np.all(certified_by_interval(net, U, y, 0.0))


def _margins(net, F, labels):
    """The true margins ``y_k − y_j`` of features ``F`` (batch, features)."""
    Y = np.maximum(F @ net.D.T + net.d, 0) @ net.C.T + net.c
    return Y[np.arange(len(labels)), labels][:, None] - Y


def test_relaxed_margins_are_sound_and_exact_where_every_unit_is_linear():
    net = small(stride=2, hidden=6)
    rng = np.random.default_rng(4)
    n_f = net.D.shape[1]
    F_lo = rng.uniform(0, 0.5, (7, n_f))
    F_hi = F_lo + rng.uniform(0, 0.4, (7, n_f))
    labels = rng.integers(0, 4, 7)
    relaxed = net.relaxed_margins(F_lo, F_hi, labels, chunk=3)
    assert relaxed.shape == (7, 4) and np.all(np.isfinite(relaxed))
    z_lo = F_lo @ np.maximum(net.D, 0).T + F_hi @ np.minimum(net.D, 0).T + net.d
    z_hi = F_hi @ np.maximum(net.D, 0).T + F_lo @ np.minimum(net.D, 0).T + net.d
    assert np.any((z_lo < 0) & (z_hi > 0))  # units that change sign: the relaxation is at work
    # Sound: below every margin of sampled features, the box's corners, and minimised ones.
    samples = [rng.uniform(F_lo, F_hi) for _ in range(200)] + [F_lo, F_hi]
    samples += [np.where(rng.random(F_lo.shape) < 0.5, F_lo, F_hi) for _ in range(200)]
    for F in samples:
        assert np.all(_margins(net, F, labels) >= relaxed - 1e-12)
    for j in range(4):  # projected gradient descent on each margin
        F = rng.uniform(F_lo, F_hi)
        for _ in range(100):
            active = (F @ net.D.T + net.d > 0).astype(float)
            grad = ((net.C[labels] - net.C[j]) * active) @ net.D
            F = np.clip(F - 0.05 * grad, F_lo, F_hi)
        assert np.all(_margins(net, F, labels)[:, j] >= relaxed[:, j] - 1e-12)
    # At least as tight as the relaxation with 0 below every unit that changes sign (written
    # out unit by unit here), and tighter somewhere: the other lower lines pay.
    zero_below = np.empty_like(relaxed)
    for b, j in itertools.product(range(7), range(4)):
        m = net.C[labels[b]] - net.C[j]
        a, const = np.zeros_like(m), net.c[labels[b]] - net.c[j]
        for i, (lo, hi) in enumerate(zip(z_lo[b], z_hi[b])):
            if lo >= 0:
                a[i] = m[i]
            elif hi > 0 and m[i] < 0:
                a[i] = m[i] * hi / (hi - lo)
                const -= a[i] * lo
        g = a @ net.D
        zero_below[b, j] = np.minimum(g * F_lo[b], g * F_hi[b]).sum() + a @ net.d + const
    assert np.all(relaxed >= zero_below - 1e-10) and np.any(relaxed > zero_below + 1e-6)
    # Where every unit is active the margin is linear in the features: the bound is its minimum,
    # attained at the box's corner that the margin's gradient picks, and tighter than the intervals.
    net.d = net.d + 20.0
    relaxed = net.relaxed_margins(F_lo, F_hi, labels)
    for j in range(4):
        g = (net.C[labels] - net.C[j]) @ net.D
        corner = np.where(g >= 0, F_lo, F_hi)
        np.testing.assert_allclose(relaxed[:, j], _margins(net, corner, labels)[:, j], atol=1e-10)
    H_lo, H_hi = net.hidden_bounds(F_lo, F_hi)
    M = net.C[labels][:, None, :] - net.C[None, :, :]
    ibp = (np.maximum(M, 0) * H_lo[:, None, :] + np.minimum(M, 0) * H_hi[:, None, :]).sum(axis=2)
    ibp += net.c[labels][:, None] - net.c[None, :]
    off = np.arange(4)[None, :] != labels[:, None]
    assert np.all(relaxed[off] >= ibp[off] - 1e-10) and np.any(relaxed[off] > ibp[off] + 1e-6)
    # No certificate for a row with an unbounded feature; a linear readout has no relaxation.
    F_hi[2, 0] = np.inf
    assert np.all(net.relaxed_margins(F_lo, F_hi, labels)[2] == -np.inf)
    assert ConvImplicitNetwork((2, 6, 4), 3, 3, 4, 2).relaxed_margins(F_lo, F_hi, labels) is None


def test_lipschitz_bound_is_the_product_of_norms_and_bounds_the_quotients():
    net = small("relu", stride=2)
    A, B = net.state_operator(), net.input_operator()
    L_x = contraction.lipschitz_bound(A, B)
    C_norm = np.abs(net.C).sum(axis=1).max()
    D_norm = np.abs(net.D).sum(axis=1).max()
    assert net.lipschitz() == pytest.approx(L_x * C_norm * D_norm)
    eta = np.array([1.0, 2.0, 0.5])
    mu_w = contraction.mu_inf(A, eta)
    if mu_w < 1:  # the weighted bound uses the weighted norm of D's columns
        Dw = (np.abs(net.D) * np.repeat(eta, 6)).sum(axis=1).max()
        assert net.lipschitz(eta=eta) == pytest.approx(contraction.lipschitz_bound(A, B, eta=eta) * C_norm * Dw)
    rng = np.random.default_rng(3)
    U = rng.uniform(0, 1, (20, net.n_in))
    V = np.clip(U + rng.uniform(-0.05, 0.05, U.shape), 0, 1)
    quotient = np.abs(net.forward(U) - net.forward(V)).max(axis=1) / np.abs(U - V).max(axis=1)
    assert quotient.max() <= net.lipschitz()


@pytest.mark.parametrize("relax", [0, 1])
def test_training_with_intervals_learns_and_checkpoints_round_trip(tmp_path, relax):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    X = rng.uniform(0, 0.5, (120, 48))  # the class's half is brighter by 0.4
    X[:, :24] += 0.4 * (y == 1)[:, None]
    X[:, 24:] += 0.4 * (y == 0)[:, None]
    net = ConvImplicitNetwork((2, 6, 4), 3, 3, 2, 2, dtype=np.float32, solver=SolverConfig(engine="numba"),
                              readout_hidden=8)
    cfg = TrainConfig(epochs=1, batch_size=30, lr=2e-2, gamma=0.5, interval_eps=0.01, interval_relax=relax)
    history = train(net, X, y, cfg, X_val=X, y_val=y, progress=False)
    assert contraction.mu_inf(net.state_operator()) <= 0.5 + 1e-6
    path = save(net, tmp_path / "hidden.npz", history=history)
    back, hist, _ = load_training(path)
    assert repr(back) == repr(net) and back.readout_hidden == 8 and hist.config.interval_relax == relax
    for name in net.PARAMS:
        np.testing.assert_array_equal(getattr(back, name), getattr(net, name))
    more = train(back, X, y, cfg.__class__(**{**cfg.__dict__, "epochs": 4}), X_val=X, y_val=y, resume=hist,
                 progress=False)
    assert [r["epoch"] for r in more.epochs] == [1, 2, 3, 4]
    assert more.epochs[-1]["loss"] < more.epochs[0]["loss"]
    assert more.epochs[-1]["val_acc"] > 0.9  # chance is 0.5
    assert certified_by_interval(back, X[:40], y[:40], 0.01).mean() > 0.5


def test_training_refuses_what_needs_a_linear_readout():
    net = ConvImplicitNetwork((1, 4, 4), 2, 3, 2, 2, solver=SolverConfig(engine="numpy"), readout_hidden=3)
    X, y = np.zeros((4, 16)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"lipschitz_weight > 0 .*\(readout_hidden=3\)"):
        train(net, X, y, epochs=1, progress=False, lipschitz_weight=1e-3)
    linear = ConvImplicitNetwork((1, 4, 4), 2, 3, 2, 2, solver=SolverConfig(engine="numpy"))
    with pytest.raises(ValueError, match=r"interval_relax > 0 relaxes a hidden readout layer.*got 2"):
        train(linear, X, y, epochs=1, progress=False, interval_eps=0.1, interval_relax=2)
    with pytest.raises(ValueError, match=r"interval_relax > 0 tightens interval training, which is off"):
        TrainConfig(interval_relax=2)
    with pytest.raises(ValueError, match="interval_relax"):
        TrainConfig(interval_eps=0.1, interval_relax=-1)
