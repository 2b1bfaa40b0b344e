"""``ConvImplicitNetwork``: the convolutional layer against the dense network with the same
matrices, exact gradients (finite differences), certificates from the kernels, and training
under the μ∞ projection of the kernel (issue 14, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

import contraction
from solvers.engine import SMALL_GEMM_WORK
from solvers.training import (ConvImplicitNetwork, ImplicitNetwork, SolverConfig, TrainConfig, evaluate, format_report,
                              load_training, train)

EXACT = dict(atol=1e-12, adjoint_atol=1e-12, max_iter=20000)


def small(padding="circular", activation="tanh", engine="numpy", scale=3.0, dtype=np.float64, stride=1,
          input_kernel=None):
    """A 3-channel layer on a 6x4 state (from 2-channel inputs of 6x4, or 12x8 with stride 2)."""
    net = ConvImplicitNetwork((2, 6 * stride, 4 * stride), 3, 3, 4, 2, padding=padding, activation=activation,
                              dtype=dtype, solver=SolverConfig(engine=engine, **EXACT), seed=3, stride=stride,
                              input_kernel=input_kernel)
    net.A = (scale * net.A).astype(dtype)  # coupling strong enough to matter, mu_inf < 1
    net.A = contraction.project_mu_inf(net.state_operator(), 0.8).kernel.astype(dtype)
    net.b = np.linspace(-0.2, 0.3, 3).astype(dtype)
    return net


def dense_twin(net: ConvImplicitNetwork) -> ImplicitNetwork:
    """The fully connected network with the conv network's matrices."""
    pixels = net.n_hidden // net.channels
    twin = ImplicitNetwork(net.n_in, net.n_hidden, net.n_out, activation=net.activation.name, dtype=np.float64,
                           solver=net.solver)
    twin.A = net.state_operator().to_dense()
    twin.B = net.input_operator().to_dense()
    twin.b = np.repeat(net.b.astype(np.float64), pixels)
    twin.C = net.readout_matrix()
    twin.c = net.c.astype(np.float64)
    return twin


#: (stride, input_kernel) of the layers the exactness tests run on: the input convolution at
#: stride 1 and 2 with the state's kernel size, and a 5x5 input kernel at stride 2.
INPUT_CONVS = pytest.mark.parametrize("stride, input_kernel", [(1, None), (2, None), (2, 5)],
                                      ids=["stride1", "stride2", "stride2-input5"])


def inputs(net):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (5, net.n_in)), rng.integers(0, 4, 5)


@INPUT_CONVS
@pytest.mark.parametrize("padding", contraction.PADDINGS)
def test_outputs_and_input_gradients_equal_the_dense_twins(padding, stride, input_kernel):
    net = small(padding, stride=stride, input_kernel=input_kernel)
    U, y = inputs(net)
    twin = dense_twin(net)
    np.testing.assert_allclose(net.forward(U), twin.forward(U), atol=1e-10)
    np.testing.assert_allclose(net.input_gradient(U, y), twin.input_gradient(U, y), atol=1e-10)
    assert net.lipschitz() == pytest.approx(twin.lipschitz(), rel=1e-10)
    assert net.lipschitz("paper") == pytest.approx(twin.lipschitz("paper"), rel=1e-10)


@INPUT_CONVS
@pytest.mark.parametrize("padding", contraction.PADDINGS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradients_are_exact(padding, activation, stride, input_kernel):
    net = small(padding, activation, stride=stride, input_kernel=input_kernel)
    U, y = inputs(net)
    value, grads = net.loss_and_grad(U, y)
    rng = np.random.default_rng(1)
    for name in net.PARAMS:
        P = getattr(net, name)
        assert grads[name].shape == P.shape and grads[name].dtype == P.dtype
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in P.shape)
            old, h = P[idx], 1e-6
            P[idx] = old + h
            up = net.loss_and_grad(U, y)[0]
            P[idx] = old - h
            down = net.loss_and_grad(U, y)[0]
            P[idx] = old
            assert grads[name][idx] == pytest.approx((up - down) / (2 * h), abs=1e-7), (name, idx)


def test_pooling_and_its_adjoint():
    net = small()
    rng = np.random.default_rng(2)
    X, G = rng.standard_normal((3, net.n_hidden)), rng.standard_normal((3, 18))
    assert np.sum(net._pool(X) * G) == pytest.approx(np.sum(X * net._unpool(G)))
    M = net.readout_matrix()
    assert np.abs(M).sum(axis=1).max() == pytest.approx(np.abs(net.C.astype(np.float64)).sum(axis=1).max())


def test_training_keeps_the_kernel_certified_and_learns():
    rng = np.random.default_rng(4)
    X = rng.uniform(0, 1, (120, 48))
    y = (X[:, :24].mean(axis=1) > X[:, 24:].mean(axis=1)).astype(np.int64)  # which half is brighter
    net = ConvImplicitNetwork((2, 6, 4), 3, 3, 2, 2, dtype=np.float64, solver=SolverConfig(engine="numpy"))
    history = train(net, X, y, TrainConfig(epochs=6, batch_size=30, lr=2e-2, gamma=0.5), X_val=X, y_val=y,
                    progress=False)
    assert all(r["mu_inf"] <= 0.5 + 1e-9 for r in history.epochs)
    assert contraction.mu_inf(net.state_operator()) <= 0.5 + 1e-9
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert history.epochs[-1]["val_acc"] > 0.7  # chance is 0.5


def _blas_counts():
    from threadpoolctl import threadpool_info

    return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]


def test_a_convolutional_layers_steps_run_on_one_blas_thread_and_a_dense_layers_keep_the_trainers_rule():
    """``net.step_blas_threads()``: one BLAS thread for a convolutional layer; no change for a
    fully connected one (the trainer's rule on ``batch · n · n`` applies around it)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        pool = _blas_counts()
        if max(pool) < 2:
            pytest.skip("BLAS runs on one thread here")
        with small().step_blas_threads():
            assert _blas_counts() == [1] * len(pool)
        assert _blas_counts() == pool
        with ImplicitNetwork(4, 400, 2).step_blas_threads():
            assert _blas_counts() == pool


@pytest.mark.parametrize("interval_eps", [0.0, 0.1])
def test_training_steps_run_under_the_layers_blas_policy(monkeypatch, interval_eps):
    """The trainer computes a step's gradients (clean and interval) on one BLAS thread for a
    convolutional layer, and its epoch record (validation) outside that policy."""
    import solvers.training._trainer as trainer
    from threadpoolctl import threadpool_limits

    net = ConvImplicitNetwork((1, 32, 32), 4, 3, 4, 4, dtype=np.float32, solver=SolverConfig(engine="numba"))
    assert 20 * net.n_hidden ** 2 >= SMALL_GEMM_WORK  # so the trainer's own rule keeps BLAS's pool
    seen = {"step": [], "interval": [], "record": []}

    def recording(key, f):
        def wrapped(*args, **kwargs):
            seen[key].append(max(_blas_counts()))
            return f(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(net, "compute_gradients", recording("step", net.compute_gradients))
    monkeypatch.setattr(trainer, "interval_loss_and_grad", recording("interval", trainer.interval_loss_and_grad))
    monkeypatch.setattr(trainer, "_epoch_record", recording("record", trainer._epoch_record))
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (40, net.n_in))
    with threadpool_limits(limits=2, user_api="blas"):
        if max(_blas_counts()) < 2:
            pytest.skip("BLAS runs on one thread here")
        train(net, X, np.arange(40) % 4, TrainConfig(epochs=1, batch_size=20, interval_eps=interval_eps),
              progress=False)
    assert seen["step"] == [1, 1]
    assert seen["interval"] == ([1, 1] if interval_eps else [])
    assert seen["record"] == [2]


def test_training_refuses_constraints_that_are_matrix_only():
    net = ConvImplicitNetwork((1, 4, 4), 2, 3, 2, 2, solver=SolverConfig(engine="numpy"))
    X, y = np.zeros((4, 16)), np.array([0, 1, 0, 1])
    for name in ("norm_inf", "mon", "zero"):
        with pytest.raises(ValueError, match=f"ConvImplicitNetwork.*{name}"):
            train(net, X, y, epochs=1, progress=False, constraint=name)


@pytest.mark.parametrize("padding", contraction.PADDINGS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@INPUT_CONVS
def test_interval_loss_equals_the_dense_twins_and_its_gradients_are_exact(padding, activation, stride, input_kernel):
    """The worst-case loss over pooled-feature bounds equals the dense twin's over the readout
    matrix (the pool is a non-negative average), and its gradients are the finite differences."""
    from solvers.training._robust import interval_loss_and_grad

    net = small(padding, activation, stride=stride, input_kernel=input_kernel)
    U, y = inputs(net)
    U = 0.2 + 0.6 * U  # inside the data range, so the clipped box is the full box
    eps = 0.05
    value, grads = interval_loss_and_grad(net, U, y, eps)
    assert value == pytest.approx(interval_loss_and_grad(dense_twin(net), U, y, eps)[0], rel=1e-9)
    assert value > net.loss_and_grad(U, y)[0]  # the worst case is worse than the clean loss
    rng = np.random.default_rng(7)
    for name in net.PARAMS:
        P = getattr(net, name)
        assert grads[name].shape == P.shape and grads[name].dtype == P.dtype
        # The sign splits are kinks at 0, where the projection leaves many taps of A: away from them.
        smooth = np.argwhere(np.abs(P) > 1e-3) if name == "A" else np.argwhere(np.ones(P.shape, bool))
        for row in rng.choice(len(smooth), min(4, len(smooth)), replace=False):
            idx = tuple(int(i) for i in smooth[row])
            old, h = P[idx], 1e-6
            P[idx] = old + h
            up = interval_loss_and_grad(net, U, y, eps)[0]
            P[idx] = old - h
            down = interval_loss_and_grad(net, U, y, eps)[0]
            P[idx] = old
            assert grads[name][idx] == pytest.approx((up - down) / (2 * h), abs=2e-7), (name, idx)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(in_shape=(1, 6, 6), channels=2, kernel_size=2, n_out=3, pool=2), "odd"),
    (dict(in_shape=(1, 6, 6), channels=2, kernel_size=3, n_out=3, pool=4), "pool must divide"),
    (dict(in_shape=(1, 6, 6), channels=2, kernel_size=3, n_out=3, pool=1, stride=4), "stride must divide"),
    (dict(in_shape=(1, 12, 12), channels=2, kernel_size=3, n_out=3, pool=4, stride=2), "state's image size 6x6"),
    (dict(in_shape=(1, 2, 2), channels=2, kernel_size=3, n_out=3, pool=1), "smaller than"),
    (dict(in_shape=(1, 6, 6), channels=2, kernel_size=3, n_out=3, pool=1, input_kernel=4), "input_kernel must be odd"),
    (dict(in_shape=(1, 6, 6), channels=2, kernel_size=3, n_out=3, pool=1, input_kernel=7), "larger than the 6x6"),
    (dict(in_shape=(6, 6), channels=2, kernel_size=3, n_out=3, pool=1), "in_shape"),
    (dict(in_shape=(1, 6, 6), channels=0, kernel_size=3, n_out=3, pool=1), "channels"),
    (dict(in_shape=(1, 6, 6), channels=2, kernel_size=3, n_out=3, pool=1, padding="reflect"), "padding"),
])
def test_bad_layers_are_refused(kwargs, needle):
    with pytest.raises(ValueError) as info:
        ConvImplicitNetwork(**kwargs)
    assert needle in str(info.value)


def test_checkpoints_round_trip_with_the_training_state(tmp_path):
    from solvers.training import load_training, save

    rng = np.random.default_rng(5)
    X, y = rng.uniform(0, 1, (40, 192)), rng.integers(0, 2, 40)
    net = ConvImplicitNetwork((2, 12, 8), 3, 3, 2, 2, padding="zeros", dtype=np.float32,
                              solver=SolverConfig(engine="numpy"), stride=2, input_kernel=5)
    assert net.B.shape == (3, 2, 5, 5) and net.A.shape == (3, 3, 3, 3)
    history = train(net, X, y, epochs=1, batch_size=20, progress=False)
    path = save(net, tmp_path / "conv.npz", history=history)
    back, hist, _ = load_training(path)
    assert isinstance(back, ConvImplicitNetwork) and repr(back) == repr(net)
    for name in net.PARAMS:
        np.testing.assert_array_equal(getattr(back, name), getattr(net, name))
    np.testing.assert_array_equal(back.forward(X[:5]), net.forward(X[:5]))
    more = train(back, X, y, epochs=2, batch_size=20, resume=hist, progress=False)
    assert [r["epoch"] for r in more.epochs] == [1, 2]


@INPUT_CONVS
@pytest.mark.parametrize("padding", contraction.PADDINGS)
def test_interval_bounds_equal_the_dense_twins_and_are_sound(padding, stride, input_kernel):
    from solvers.training import certified_accuracy, interval_bounds

    net = small(padding, "relu", stride=stride, input_kernel=input_kernel)
    net.solver = SolverConfig(engine="numba", **EXACT)
    twin = dense_twin(net)
    rng = np.random.default_rng(6)
    U = rng.uniform(0.1, 0.9, (4, net.n_in))
    lo, hi = U - 0.05, U + 0.05
    X_lo, X_hi, Y_lo, Y_hi = interval_bounds(net, lo, hi)
    for got, want in zip((X_lo, X_hi, Y_lo, Y_hi), interval_bounds(twin, lo, hi)):
        np.testing.assert_allclose(got, want, atol=1e-8)
    for _ in range(20):  # sampled inputs of the box stay inside the bounds
        Y = net.forward(rng.uniform(lo, hi))
        assert np.all(Y >= Y_lo - 1e-9) and np.all(Y <= Y_hi + 1e-9)
    y = net.predict(U)
    assert certified_accuracy(net, U, y, 0.0) == 1.0  # a zero radius certifies every prediction
    assert certified_accuracy(net, U, y, 0.05) == certified_accuracy(twin, U, y, 0.05)


def _central_differences(f, raw: dict) -> dict:
    out = {}
    for key, P in raw.items():
        fd = np.zeros(P.shape)
        for idx in np.ndindex(P.shape):
            old = P[idx]
            P[idx] = old + 1e-6
            up = f()
            P[idx] = old - 1e-6
            down = f()
            P[idx] = old
            fd[idx] = (up - down) / 2e-6
        out[key] = fd
    return out


def test_the_seed_authors_conv_parametrisation_and_its_pullback():
    """``K = g V/‖V‖_F`` with the centre taps moved by ``m − C max|K|`` (m = gamma); the
    pullback is the chain rule (finite differences); its true μ∞ exceeds the claimed bound."""
    from solvers.training import make_constraint

    con = make_constraint("nemon_param", 0.05)
    rng = np.random.default_rng(11)
    raw = con.init(rng.standard_normal((4, 4, 3, 3)), rng)
    assert set(raw) == {"V", "g"} and raw["g"][0] == 1.0
    raw["g"] = np.array([1.3])
    K = con.matrix(raw)
    expected = 1.3 * raw["V"] / np.linalg.norm(raw["V"])
    shift = 0.05 - 4 * np.abs(expected).max()
    expected[np.arange(4), np.arange(4), 1, 1] += shift
    np.testing.assert_allclose(K, expected, rtol=1e-12)
    G = rng.standard_normal(K.shape)
    grads = con.pullback(raw, G)
    fd = _central_differences(lambda: float(np.sum(G * con.matrix(raw))), raw)
    for key in raw:
        np.testing.assert_allclose(grads[key], fd[key], atol=1e-7, err_msg=key)
    assert contraction.mu_inf(contraction.Conv2d(K, (8, 8))) > 1.0  # the claim mu_inf <= 0.05 does not hold
    assert con.violation(contraction.Conv2d(K, (8, 8)), raw) is None  # nothing enforced, nothing to check
    assert con.weights(raw) is None


@pytest.mark.parametrize("padding", contraction.PADDINGS)
def test_lipschitz_penalty_of_kernels_is_the_paper_bound_with_its_subgradient(padding):
    from solvers.training._trainer import lipschitz_penalty

    net = small(padding, scale=1.0)
    net.C = np.random.default_rng(12).standard_normal(net.C.shape)
    value, grads = lipschitz_penalty(net.A, net.B, net.C)
    assert value == pytest.approx(net.lipschitz("paper"), rel=1e-10)
    assert value == pytest.approx(lipschitz_penalty(*(dense_twin(net).parameters()[k] for k in "ABC"))[0], rel=1e-10)
    raw = {"A": net.A, "B": net.B, "C": net.C}
    fd = _central_differences(lambda: lipschitz_penalty(net.A, net.B, net.C)[0], raw)
    for key in raw:  # the maxima are unique for this instance: the subgradient is the gradient
        smooth = np.abs(raw[key]) > 1e-3
        np.testing.assert_allclose(grads[key][smooth], fd[key][smooth], rtol=1e-5, atol=1e-7, err_msg=key)


def _brighter_half(n=120, seed=4):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, 48))
    return X, (X[:, :24].mean(axis=1) > X[:, 24:].mean(axis=1)).astype(np.int64)


def test_interval_training_of_a_conv_layer_certifies_more_than_plain_training(monkeypatch):
    """Two well separated classes (dark and bright images): plain training separates them with
    no margin certified by the state box, interval training at ε = 0.1 certifies more at
    ε = 0.05 by the state box (the bound it trains) and has the lower worst-case loss, and the
    kernel stays certified throughout. (With the equilibrium substituted the plain network,
    nearly linear here, certifies most samples too.)"""
    import solvers.training._robust as robust
    from solvers.training import certified_accuracy
    from solvers.training._robust import interval_loss_and_grad

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 160)
    X = np.clip(0.35 + 0.3 * y[:, None] + rng.uniform(-0.3, 0.3, (160, 48)), 0, 1)
    nets = {}
    for eps in (0.0, 0.1):
        net = ConvImplicitNetwork((2, 6, 4), 3, 3, 2, 2, dtype=np.float64, solver=SolverConfig(engine="numpy"))
        history = train(net, X, y, TrainConfig(epochs=6, batch_size=40, lr=2e-2, gamma=0.5, interval_eps=eps,
                                               interval_ramp=2), X_val=X, y_val=y, progress=False)
        assert all(r["mu_inf"] <= 0.5 + 1e-9 for r in history.epochs)
        nets[eps] = net
    assert history.epochs[-1]["val_certified"] == certified_accuracy(nets[0.1], X, y, 0.1)
    substituted = {eps: certified_accuracy(net, X, y, 0.05) for eps, net in nets.items()}
    monkeypatch.setattr(robust, "SUBSTITUTION_STEPS", 0)
    certified = {eps: certified_accuracy(net, X, y, 0.05) for eps, net in nets.items()}
    assert all(substituted[eps] >= certified[eps] for eps in nets)
    worst = {eps: interval_loss_and_grad(net, X, y, 0.1)[0] for eps, net in nets.items()}
    assert certified[0.1] > certified[0.0] + 0.3, certified
    assert worst[0.1] < 0.5 * worst[0.0], worst
    assert nets[0.1].accuracy(X, y) > 0.8


def test_lipschitz_regulariser_lowers_a_conv_layers_bound():
    X, y = _brighter_half()
    bounds = {}
    for weight in (0.0, 0.05):
        net = ConvImplicitNetwork((2, 6, 4), 3, 3, 2, 2, dtype=np.float64, solver=SolverConfig(engine="numpy"))
        history = train(net, X, y, TrainConfig(epochs=4, batch_size=30, lr=2e-2, gamma=0.5, lipschitz_weight=weight),
                        progress=False)
        bounds[weight] = history.epochs[-1]["lipschitz_paper"]
    assert bounds[0.05] < 0.8 * bounds[0.0], bounds


def test_the_seed_authors_conv_layer_trains_and_reports_its_true_mu_inf():
    X, y = _brighter_half()
    net = ConvImplicitNetwork((2, 6, 4), 3, 3, 2, 2, dtype=np.float64, solver=SolverConfig(engine="numpy"))
    history = train(net, X, y, TrainConfig(epochs=3, batch_size=30, lr=2e-2, gamma=0.05, constraint="nemon_param"),
                    X_val=X, y_val=y, progress=False)
    mu = [r["mu_inf"] for r in history.epochs]
    assert mu[-1] == pytest.approx(contraction.mu_inf(net.state_operator()))
    assert min(mu) > 0.05  # above the bound the layer claims
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]


def test_reproduce_has_the_conv_rows_and_reports_the_seed_layers_true_mu_inf(tmp_path):
    from solvers.training import reproduce
    from solvers.training._reproduce import QUICK_CHANNELS, QUICK_READOUT_HIDDEN, SEED_CONV_MARGIN

    names = ["conv mu_inf", "conv mu_inf + interval", "conv mu_inf + interval, hidden readout", "conv nemon_param"]
    rows, figures = reproduce(quick=True, dataset="digits", out_dir=tmp_path, epochs=1, eval_samples=40,
                              pgd_steps=2, eps=(0.05,), models=names, engine="numba", workers=0)
    by_name = {r["model"]: r for r in rows}
    assert list(by_name) == names
    for name in names[:3]:
        assert by_name[name]["stats"]["mu_inf"][0] <= 0.9 + 1e-6  # projected
    assert by_name["conv nemon_param"]["stats"]["mu_inf"][0] > SEED_CONV_MARGIN  # its claim, not kept
    net, history, _ = load_training(by_name["conv mu_inf"]["checkpoints"][0])
    assert isinstance(net, ConvImplicitNetwork) and net.channels == QUICK_CHANNELS and net.state_shape == (4, 4)
    assert history.config.constraint == "mu_inf"
    net, history, _ = load_training(by_name["conv mu_inf + interval, hidden readout"]["checkpoints"][0])
    assert (net.channels, net.readout_hidden, net.state_shape) == (QUICK_CHANNELS, QUICK_READOUT_HIDDEN, (4, 4))
    assert net.pool == 1 and history.config.per_unit_steps and history.config.batch_size == 50
    assert {p.name for p in figures} == {"robustness.png", "iterations.png"}


@pytest.mark.parametrize("padding", contraction.PADDINGS)
@pytest.mark.parametrize("alpha", [None, "per_unit"])
def test_local_rates_of_a_mutual_inhibition(padding, alpha):
    """Two channels inhibiting each other at each pixel (centre taps only, μ∞ = 0.9, α* = 1/2):
    where both are active, J = [[0, −0.95], [−0.45, 0]] at every pixel, rate √(0.95 · 0.45);
    where one is off, the other's J_00 = 1 − α + α a_00 = 0 and nothing is coupled."""
    net = ConvImplicitNetwork((1, 5, 4), 2, 3, 2, 1, padding=padding, activation="relu", dtype=np.float64,
                              solver=SolverConfig(engine="numpy", atol=1e-12, alpha=alpha))
    K = np.zeros((2, 2, 3, 3))
    K[:, :, 1, 1] = [[-1.0, -1.9], [-0.9, -1.0]]
    net.A = K
    net.B = np.zeros_like(net.B)
    U = np.random.default_rng(0).uniform(0, 1, (3, net.n_in))
    net.b = np.array([1.0, 1.0])  # equilibrium x = (0.044, 0.480) at every pixel: both active
    np.testing.assert_allclose(net.local_rates(U), np.sqrt(0.95 * 0.45), rtol=1e-12)
    twin = dense_twin(net)
    np.testing.assert_allclose(twin.local_rates(U), np.sqrt(0.95 * 0.45), rtol=1e-12)
    report = evaluate(net, U, np.zeros(3, dtype=int))
    assert report["local_rate_median"] == pytest.approx(np.sqrt(0.95 * 0.45), rel=1e-12)
    assert report["local_rate_max"] == pytest.approx(np.sqrt(0.95 * 0.45), rel=1e-12)
    assert report["local_rate_samples"] == 3
    assert report["step_factor"] == pytest.approx(0.95)  # 1 − α (1 − μ∞), α = 1/2 for both channels
    assert report["per_unit_steps"] == (alpha == "per_unit")
    assert "local rate                  median 0.654, max 0.654 (first 3 samples; averaged step" in format_report(report)
    net.b = np.array([1.0, -1.0])  # channel 1 off everywhere
    assert net.local_rates(U).tolist() == [0.0, 0.0, 0.0]
    assert net.local_rates(U).max() <= contraction.contraction_factor(net.state_operator())
