"""The implicit network: forward pass, loss, adjoint gradients against central finite
differences (float64, numpy engine solved to 1e-12), engine agreement, dtypes, validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import contraction
from solvers import solve
from solvers.training import LOSSES, ImplicitNetwork
from _training_helpers import central_difference

ACTIVATIONS = ("relu", "tanh", "softplus")
#: Bound of the well-posed instances: μ∞(A) ≤ GAMMA.
GAMMA = 0.5
#: Finite-difference step; the solves are exact to ~1e-12, so the FD noise is ~1e-12 / STEP.
#: Pre-activations of a ReLU network must stay this far from the kink for FD to be valid.
KINK_MARGIN = 1e-4
N_IN, N_HIDDEN, N_OUT, BATCH = 3, 5, 3, 4


# -- independent references -------------------------------------------------------------
def reference_loss(Y, targets, loss):
    """Mean loss over the batch, written out independently of the library."""
    Y = np.asarray(Y, dtype=np.float64)
    if loss == "cross_entropy":
        top = Y.max(axis=1)
        lse = top + np.log(np.exp(Y - top[:, None]).sum(axis=1))
        return float(np.mean(lse - Y[np.arange(len(Y)), targets]))
    return float(np.mean(((Y - targets) ** 2).sum(axis=1) / Y.shape[1]))




def well_posed_matrix(rng, n, negative_diagonal):
    """A random matrix projected onto ``{μ∞(A) ≤ GAMMA}``; optionally with a strongly
    negative diagonal (so the averaged iteration damps, α* < 1)."""
    A = rng.standard_normal((n, n)) / np.sqrt(n)
    if negative_diagonal:
        A -= 3.0 * np.eye(n)
    A = contraction.project_mu_inf(A, GAMMA)
    assert contraction.mu_inf(A) <= GAMMA + 1e-12
    if negative_diagonal:
        assert np.diagonal(A).min() < -1.0
    return A


def pre_activations(net, U):
    """``Z = X Aᵀ + U Bᵀ + b`` at the fixed point, from an independent solve."""
    W = U @ net.B.T + net.b
    X = solve(net.A, W, atol=1e-13, max_iter=10000, activation=net.activation, engine="numpy").x
    return X @ net.A.T + W


def make_targets(rng, loss, batch=BATCH, n_out=N_OUT):
    if loss == "cross_entropy":
        return rng.integers(0, n_out, size=batch)
    return rng.standard_normal((batch, n_out))


def instance(exact_net, activation, loss, negative_diagonal, engine="numpy", seed=0):
    """A small well-posed network with generic biases, inputs and targets. For ReLU, reseed
    until no pre-activation lies within KINK_MARGIN of the kink."""
    for attempt in range(50):
        rng = np.random.default_rng([seed, attempt])
        net = exact_net(N_IN, N_HIDDEN, N_OUT, activation=activation, seed=seed + attempt, engine=engine)
        net.A = well_posed_matrix(rng, N_HIDDEN, negative_diagonal)
        net.b = 0.3 * rng.standard_normal(N_HIDDEN)
        net.c = 0.3 * rng.standard_normal(N_OUT)
        U = rng.standard_normal((BATCH, N_IN))
        if activation != "relu" or np.abs(pre_activations(net, U)).min() > KINK_MARGIN:
            return net, U, make_targets(rng, loss)
    raise AssertionError("could not draw a ReLU instance away from the kinks")


GRAD_CASES = [
    pytest.param(act, loss, neg, id=f"{act}-{loss}-{'negdiag' if neg else 'generic'}")
    for act in ACTIVATIONS
    for loss in LOSSES
    for neg in (False, True)
]


# -- gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("activation, loss, negative_diagonal", GRAD_CASES)
def test_parameter_gradients_match_finite_differences(exact_net, activation, loss, negative_diagonal):
    net, U, t = instance(exact_net, activation, loss, negative_diagonal)
    value, grads = net.loss_and_grad(U, t, loss)
    assert value == pytest.approx(reference_loss(net.forward(U), t, loss), rel=1e-12, abs=1e-14)
    assert set(grads) == set(ImplicitNetwork.PARAMS)

    # The analytic gradients above come from the numpy engine (the specification); the
    # finite differences only need exact loss values, which the compiled engine gives faster.
    net.solver = dataclasses.replace(net.solver, engine="numba")

    def f():
        return reference_loss(net.forward(U), t, loss)

    for name in ImplicitNetwork.PARAMS:
        P = getattr(net, name)
        assert grads[name].shape == P.shape and grads[name].dtype == np.float64
        fd = central_difference(f, P)
        np.testing.assert_allclose(grads[name], fd, rtol=1e-5, atol=1e-7, err_msg=f"dL/d{name}")


@pytest.mark.parametrize("activation, loss, negative_diagonal", GRAD_CASES)
def test_input_gradient_rows_are_per_sample_gradients(exact_net, activation, loss, negative_diagonal):
    net, U, t = instance(exact_net, activation, loss, negative_diagonal, seed=7)
    G = net.input_gradient(U, t, loss)
    assert G.shape == U.shape and G.dtype == np.float64
    net.solver = dataclasses.replace(net.solver, engine="numba")  # FD needs only exact values
    for s in range(BATCH):
        u = U[s : s + 1].copy()
        fd = central_difference(lambda: reference_loss(net.forward(u), t[s : s + 1], loss), u)
        np.testing.assert_allclose(G[s], fd[0], rtol=1e-5, atol=1e-7, err_msg=f"sample {s}")


def test_input_gradient_of_a_batch_is_independent_of_the_other_samples(exact_net):
    net, U, t = instance(exact_net, "tanh", "cross_entropy", False)
    G = net.input_gradient(U, t)
    for s in range(BATCH):
        np.testing.assert_allclose(net.input_gradient(U[s : s + 1], t[s : s + 1])[0], G[s], rtol=1e-9, atol=1e-12)


def test_mean_loss_gradient_is_the_mean_of_per_sample_gradients(exact_net):
    net, U, t = instance(exact_net, "softplus", "mse", False)
    _, grads = net.loss_and_grad(U, t, "mse")
    per_sample = [net.loss_and_grad(U[s : s + 1], t[s : s + 1], "mse")[1] for s in range(BATCH)]
    for name in ImplicitNetwork.PARAMS:
        mean = np.mean([g[name] for g in per_sample], axis=0)
        np.testing.assert_allclose(grads[name], mean, rtol=1e-9, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("negative_diagonal", [False, True], ids=["generic", "negdiag"])
def test_numba_engine_agrees_with_numpy(exact_net, activation, negative_diagonal):
    net, U, t = instance(exact_net, activation, "cross_entropy", negative_diagonal, seed=3)
    value_np, grads_np = net.loss_and_grad(U, t)
    G_np = net.input_gradient(U, t)
    net.solver = dataclasses.replace(net.solver, engine="numba")
    value_nb, grads_nb = net.loss_and_grad(U, t)
    assert value_nb == pytest.approx(value_np, rel=1e-10, abs=1e-12)
    for name in ImplicitNetwork.PARAMS:
        np.testing.assert_allclose(grads_nb[name], grads_np[name], rtol=1e-8, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(net.input_gradient(U, t), G_np, rtol=1e-8, atol=1e-10)


def test_compute_gradients_reports_the_solves(exact_net):
    net, U, t = instance(exact_net, "tanh", "cross_entropy", True)
    stats = net.compute_gradients(U, t).stats
    assert stats["forward_converged"] == 1.0 and stats["adjoint_converged"] == 1.0
    assert stats["forward_iterations"] > 0 and stats["adjoint_iterations"] > 0
    np.testing.assert_allclose(stats["logits"], net.forward(U), rtol=1e-12, atol=1e-14)


# -- forward --------------------------------------------------------------------------------
def test_forward_closed_form_when_A_is_zero(exact_net, rng):
    net = exact_net(4, 6, 3, activation="tanh")
    net.A = np.zeros((6, 6))
    net.b = rng.standard_normal(6)
    net.c = rng.standard_normal(3)
    U = rng.standard_normal((5, 4))
    expected = np.tanh(U @ net.B.T + net.b) @ net.C.T + net.c
    np.testing.assert_allclose(net.forward(U), expected, rtol=1e-12, atol=1e-14)


def test_forward_is_the_fixed_point(exact_net, rng):
    net = exact_net(4, 6, 3, activation="relu")
    net.A = well_posed_matrix(rng, 6, negative_diagonal=True)
    U = rng.standard_normal((7, 4))
    W = U @ net.B.T + net.b
    X = solve(net.A, W, atol=1e-13, engine="numpy", max_iter=10000).x
    np.testing.assert_allclose(X, np.maximum(X @ net.A.T + W, 0.0), atol=1e-12)
    np.testing.assert_allclose(net.forward(U), X @ net.C.T + net.c, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("batch", [1, 2, 17])
def test_forward_and_predict_shapes(batch, rng):
    net = ImplicitNetwork(8, 10, 4, seed=1)
    U = rng.random((batch, 8))
    Y = net.forward(U)
    assert Y.shape == (batch, 4) and Y.dtype == np.float64
    pred = net.predict(U, batch_size=5)
    assert pred.shape == (batch,)
    np.testing.assert_array_equal(pred, Y.argmax(axis=1))
    assert net.accuracy(U, pred) == 1.0


def test_shapes_and_parameter_count():
    net = ImplicitNetwork(8, 10, 4)
    assert (net.n_in, net.n_hidden, net.n_out) == (8, 10, 4)
    shapes = {k: v.shape for k, v in net.parameters().items()}
    assert shapes == {"A": (10, 10), "B": (10, 8), "b": (10,), "C": (4, 10), "c": (4,)}
    assert net.parameter_count() == 100 + 80 + 10 + 40 + 4


def test_initialisation_is_seeded():
    a, b, c = ImplicitNetwork(5, 6, 3, seed=4), ImplicitNetwork(5, 6, 3, seed=4), ImplicitNetwork(5, 6, 3, seed=5)
    for name in ImplicitNetwork.PARAMS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.A, c.A)
    assert contraction.mu_inf(a.A) < 1.0


def test_float32_network_is_float32_end_to_end(rng):
    net32 = ImplicitNetwork(8, 10, 4, seed=2, dtype=np.float32)
    net64 = ImplicitNetwork(8, 10, 4, seed=2)
    for name, p in net32.parameters().items():
        assert p.dtype == np.float32, name
    U = rng.random((6, 8))
    t = rng.integers(0, 4, size=6)
    Y = net32.forward(U)
    assert Y.dtype == np.float32
    value, grads = net32.loss_and_grad(U, t)
    assert isinstance(value, float) and np.isfinite(value)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert net32.input_gradient(U, t).dtype == np.float32
    # Same parameters (up to rounding), so float32 agrees with float64 to float32 accuracy.
    np.testing.assert_allclose(Y, net64.forward(U), rtol=1e-3, atol=1e-3)
    value64, grads64 = net64.loss_and_grad(U, t)
    assert value == pytest.approx(value64, rel=1e-3)
    for name in ImplicitNetwork.PARAMS:
        np.testing.assert_allclose(grads[name], grads64[name], rtol=2e-2, atol=2e-3, err_msg=name)


# -- validation -----------------------------------------------------------------------------
BAD_INPUTS = {
    "1-D": np.zeros(8),
    "wrong-width": np.zeros((3, 7)),
    "3-D": np.zeros((2, 3, 8)),
    "nan": np.where(np.arange(16).reshape(2, 8) == 5, np.nan, 0.0),
    "inf": np.where(np.arange(16).reshape(2, 8) == 3, np.inf, 0.0),
}


@pytest.mark.parametrize("U", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_inputs_raise_value_error(U):
    net = ImplicitNetwork(8, 10, 4)
    with pytest.raises(ValueError, match="U must"):
        net.forward(U)
    t = np.zeros(len(U), dtype=int)
    with pytest.raises(ValueError, match="U must"):
        net.loss_and_grad(U, t)
    with pytest.raises(ValueError, match="U must"):
        net.input_gradient(U, t)


BAD_LABELS = {
    "float-labels": np.array([0.0, 1.0, 2.0]),
    "too-large": np.array([0, 1, 4]),
    "negative": np.array([0, -1, 2]),
    "too-few": np.array([0, 1]),
    "one-hot": np.eye(4, dtype=int)[:3],
}


@pytest.mark.parametrize("targets", BAD_LABELS.values(), ids=BAD_LABELS.keys())
def test_bad_cross_entropy_targets_raise_value_error(targets, rng):
    net = ImplicitNetwork(8, 10, 4)
    U = rng.random((3, 8))
    with pytest.raises(ValueError, match="targets"):
        net.loss_and_grad(U, targets, "cross_entropy")
    with pytest.raises(ValueError, match="targets"):
        net.input_gradient(U, targets, "cross_entropy")


def test_bad_mse_targets_raise_value_error(rng):
    net = ImplicitNetwork(8, 10, 4)
    U = rng.random((3, 8))
    with pytest.raises(ValueError):
        net.loss_and_grad(U, rng.random((3, 5)), "mse")
    with pytest.raises(ValueError):
        net.loss_and_grad(U, rng.random((2, 4)), "mse")


def test_non_finite_mse_targets_raise_value_error(rng):
    net = ImplicitNetwork(8, 10, 4)
    U = rng.random((3, 8))
    T = rng.random((3, 4))
    T[1, 2] = np.nan
    with pytest.raises(ValueError, match="targets"):
        net.loss_and_grad(U, T, "mse")


def test_unknown_loss_raises_value_error(rng):
    net = ImplicitNetwork(8, 10, 4)
    with pytest.raises(ValueError, match="loss"):
        net.loss_and_grad(rng.random((3, 8)), np.zeros(3, dtype=int), "hinge")


@pytest.mark.parametrize("sizes", [(0, 5, 3), (4, -1, 3), (4, 5, 2.0), (True, 5, 3)])
def test_bad_sizes_raise_value_error(sizes):
    with pytest.raises(ValueError):
        ImplicitNetwork(*sizes)


def test_bad_dtype_raises_value_error():
    with pytest.raises(ValueError, match="dtype"):
        ImplicitNetwork(4, 5, 3, dtype=np.int32)


# -- certificates ---------------------------------------------------------------------------
@pytest.mark.parametrize("negative_diagonal", [False, True], ids=["generic", "negdiag"])
def test_lipschitz_equals_contraction_bound(negative_diagonal, rng):
    net = ImplicitNetwork(6, 7, 3)
    net.A = well_posed_matrix(rng, 7, negative_diagonal)
    for form in ("tight", "paper"):
        assert net.lipschitz(form) == contraction.lipschitz_bound(net.A, net.B, net.C, form=form)
    eta = rng.uniform(0.5, 2.0, size=7)
    assert net.lipschitz("tight", eta=eta) == contraction.lipschitz_bound(net.A, net.B, net.C, eta=eta)
    expected = np.abs(net.C).sum(1).max() * np.abs(net.B).sum(1).max() / (1 - contraction.mu_inf(net.A))
    assert net.lipschitz() == pytest.approx(expected, rel=1e-12)


def test_lipschitz_is_infinite_without_certificate():
    net = ImplicitNetwork(3, 4, 2)
    net.A = 2.0 * np.eye(4)
    assert net.lipschitz() == np.inf


def test_unconverged_adjoint_samples_fall_back_to_the_dense_solve(rng):
    """An adjoint iteration stopped early (max_iter=1) must not leak a wrong gradient."""
    import contraction

    net = ImplicitNetwork(6, 8, 3, activation="tanh", seed=3)
    net.A = contraction.project_mu_inf(rng.standard_normal((8, 8)), 0.95)
    U, y = rng.random((5, 6)), np.array([0, 1, 2, 0, 1])
    exact = dataclasses.replace(net.solver, engine="numpy", atol=1e-13, adjoint_method="direct", max_iter=5000)
    net.solver = exact
    _, g_ref = net.loss_and_grad(U, y)
    # Forward still exact; the adjoint gets one step, so every sample needs the fallback.
    net.solver = dataclasses.replace(exact, adjoint_method="average", adjoint_atol=1e-13)
    fp = net.forward_pass(U)
    _, dY = net._output_grad(fp.Y, y, "cross_entropy", "mean")
    net.solver = dataclasses.replace(net.solver, max_iter=1)
    V, _ = net._backward(fp, dY)
    net.solver = exact
    V_ref, _ = net._backward(fp, dY)
    np.testing.assert_allclose(V, V_ref, rtol=1e-10, atol=1e-12)
