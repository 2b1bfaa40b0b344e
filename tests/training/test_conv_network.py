"""``ConvImplicitNetwork``: the convolutional layer against the dense network with the same
matrices, exact gradients (finite differences), certificates from the kernels, and training
under the μ∞ projection of the kernel (issue 14, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

import contraction
from solvers.training import ConvImplicitNetwork, ImplicitNetwork, SolverConfig, TrainConfig, train

EXACT = dict(atol=1e-12, adjoint_atol=1e-12, max_iter=20000)


def small(padding="circular", activation="tanh", engine="numpy", scale=3.0, dtype=np.float64):
    net = ConvImplicitNetwork((2, 6, 4), 3, 3, 4, 2, padding=padding, activation=activation, dtype=dtype,
                              solver=SolverConfig(engine=engine, **EXACT), seed=3)
    net.A = (scale * net.A).astype(dtype)  # coupling strong enough to matter, mu_inf < 1
    net.A = contraction.project_mu_inf(net.state_operator(), 0.8).kernel.astype(dtype)
    net.b = np.linspace(-0.2, 0.3, 3).astype(dtype)
    return net


def dense_twin(net: ConvImplicitNetwork) -> ImplicitNetwork:
    """The fully connected network with the conv network's matrices."""
    twin = ImplicitNetwork(net.n_in, net.n_hidden, net.n_out, activation=net.activation.name, dtype=np.float64,
                           solver=net.solver)
    twin.A = net.state_operator().to_dense()
    twin.B = net.input_operator().to_dense()
    twin.b = np.repeat(net.b.astype(np.float64), 24)
    twin.C = net.readout_matrix()
    twin.c = net.c.astype(np.float64)
    return twin


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, (5, 48)), rng.integers(0, 4, 5)


@pytest.mark.parametrize("padding", contraction.PADDINGS)
def test_outputs_and_input_gradients_equal_the_dense_twins(data, padding):
    U, y = data
    net = small(padding)
    twin = dense_twin(net)
    np.testing.assert_allclose(net.forward(U), twin.forward(U), atol=1e-10)
    np.testing.assert_allclose(net.input_gradient(U, y), twin.input_gradient(U, y), atol=1e-10)
    assert net.lipschitz() == pytest.approx(twin.lipschitz(), rel=1e-10)
    assert net.lipschitz("paper") == pytest.approx(twin.lipschitz("paper"), rel=1e-10)


@pytest.mark.parametrize("padding", contraction.PADDINGS)
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradients_are_exact(data, padding, activation):
    U, y = data
    net = small(padding, activation)
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


def test_training_refuses_what_convolutional_layers_do_not_have_yet():
    net = ConvImplicitNetwork((1, 4, 4), 2, 3, 2, 2, solver=SolverConfig(engine="numpy"))
    X, y = np.zeros((4, 16)), np.array([0, 1, 0, 1])
    for fields in ({"interval_eps": 0.1}, {"lipschitz_weight": 0.1}, {"constraint": "norm_inf"}):  # not yet
        with pytest.raises(ValueError, match="ConvImplicitNetwork"):
            train(net, X, y, epochs=1, progress=False, **fields)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(in_shape=(1, 6, 6), channels=2, kernel_size=2, n_out=3, pool=2), "odd"),
    (dict(in_shape=(1, 6, 6), channels=2, kernel_size=3, n_out=3, pool=4), "pool must divide"),
    (dict(in_shape=(1, 2, 2), channels=2, kernel_size=3, n_out=3, pool=1), "smaller than"),
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
    X, y = rng.uniform(0, 1, (40, 48)), rng.integers(0, 2, 40)
    net = ConvImplicitNetwork((2, 6, 4), 3, 3, 2, 2, padding="zeros", dtype=np.float32,
                              solver=SolverConfig(engine="numpy"))
    history = train(net, X, y, epochs=1, batch_size=20, progress=False)
    path = save(net, tmp_path / "conv.npz", history=history)
    back, hist, _ = load_training(path)
    assert isinstance(back, ConvImplicitNetwork) and repr(back) == repr(net)
    for name in net.PARAMS:
        np.testing.assert_array_equal(getattr(back, name), getattr(net, name))
    np.testing.assert_array_equal(back.forward(X[:5]), net.forward(X[:5]))
    more = train(back, X, y, epochs=2, batch_size=20, resume=hist, progress=False)
    assert [r["epoch"] for r in more.epochs] == [1, 2]


@pytest.mark.parametrize("padding", contraction.PADDINGS)
def test_interval_bounds_equal_the_dense_twins_and_are_sound(padding):
    from solvers.training import certified_accuracy, interval_bounds

    net = small(padding, "relu")
    net.solver = SolverConfig(engine="numba", **EXACT)
    twin = dense_twin(net)
    rng = np.random.default_rng(6)
    U = rng.uniform(0.1, 0.9, (4, 48))
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
