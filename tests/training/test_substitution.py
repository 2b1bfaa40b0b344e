"""Margin bounds with the equilibrium equation substituted (``substituted_margins``): sound
against sampled, corner and attacked inputs of the box, at least as tight as the state-box
bound and tighter somewhere, for dense and convolutional ReLU layers with and without a
hidden readout; the transposed products they use against the forward ones (issue 14)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import contraction
from solvers.training import ConvImplicitNetwork, ImplicitNetwork, SolverConfig
import solvers.training._robust as _robust
from solvers.training._robust import (
    certified_by_interval,
    interval_bounds,
    margin_lower_bounds,
    pgd_attack,
    substituted_margins,
)

EXACT = dict(engine="numpy", atol=1e-12, adjoint_atol=1e-12, max_iter=50000)
#: Slack of "bound ≤ margin": the bounds and the margins are solved to 1e-12.
TOL = 1e-8


def dense_net(seed=0):
    """A ReLU layer with μ∞(A) = 0.8, negative self-loops and mixed-sign couplings."""
    rng = np.random.default_rng(seed)
    n, m, q = 8, 5, 3
    net = ImplicitNetwork(m, n, q, seed=seed, solver=SolverConfig(**EXACT))
    A = rng.standard_normal((n, n))
    np.fill_diagonal(A, -rng.uniform(0.2, 1.0, n))
    net.A = contraction.project_mu_inf(A, 0.8)
    net.B = rng.standard_normal((n, m))
    net.b = 0.2 * rng.standard_normal(n)
    net.C = rng.standard_normal((q, n))
    net.c = 0.1 * rng.standard_normal(q)
    return net


def conv_net(hidden=5, padding="circular", stride=2, pool=2):
    net = ConvImplicitNetwork((1, 6 * stride, 4 * stride), 3, 3, 4, pool, padding=padding, seed=3, stride=stride,
                              readout_hidden=hidden, dtype=np.float64, solver=SolverConfig(**EXACT))
    net.A = contraction.project_mu_inf(contraction.Conv2d(3.0 * net.A, net.state_shape, padding), 0.8).kernel
    net.b = np.linspace(-0.2, 0.3, 3)
    if hidden:
        net.d = np.linspace(-0.3, 0.3, hidden)
    return net


NETS = {
    "dense": dense_net,
    "conv": conv_net,
    "conv, linear readout": lambda: conv_net(hidden=0),
    "conv, zeros, stride 1": lambda: conv_net(padding="zeros", stride=1, pool=1),
}


def margins(net, U, labels):
    """``y_k − y_j`` of inputs ``U`` (batch, q), ``k = labels``, solved to 1e-12."""
    Y = net.forward(U)
    return Y[np.arange(len(U)), labels][:, None] - Y


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_embedded_product_is_the_embedded_operator_applied(name, dtype):
    """The conv layer's two half-size passes against the 2C-channel (or dense) product, on
    random pairs, not only ordered ones, so every block of the embedded kernel counts."""
    net = NETS[name]()
    rng = np.random.default_rng(2)
    U = rng.random((4, net.n_in))
    AA, *_ = net.embedded_system(U - 0.1, U + 0.1)
    X2 = rng.standard_normal((4, 2 * net.n_hidden)).astype(dtype)
    got = net.embedded_product(AA, X2)
    if name != "dense":  # the convolution computes in the states' dtype (float32 training stays float32)
        assert got.dtype == dtype
    want = net.state_product(AA, X2.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("name", NETS)
def test_transposed_products_are_the_adjoints_of_the_forward_ones(name):
    net = NETS[name]()
    rng = np.random.default_rng(1)
    V, X = rng.standard_normal((3, net.n_hidden)), rng.standard_normal((3, net.n_hidden))
    U = rng.standard_normal((3, net.n_in))
    AX = net.state_product(net.state_operator() if name != "dense" else net.A, X)
    np.testing.assert_allclose((net.state_product_T(V) * X).sum(axis=1), (V * AX).sum(axis=1), rtol=1e-10)
    BU = net.injected(U) - net.bias_vector()
    np.testing.assert_allclose((net._input_product_T(V) * U).sum(axis=1), (V * BU).sum(axis=1), rtol=1e-10)
    np.testing.assert_allclose(net.injected(np.zeros((1, net.n_in)))[0], net.bias_vector(), rtol=1e-12)


@pytest.mark.parametrize("name", NETS)
def test_substituted_margins_are_sound_and_tighter_than_the_state_box(name):
    net = NETS[name]()
    rng = np.random.default_rng(2)
    U = rng.uniform(0.1, 0.9, (4, net.n_in))
    labels = net.predict(U)
    eps = 0.05 if name == "dense" else 0.1
    lo, hi = np.clip(U - eps, 0, 1), np.clip(U + eps, 0, 1)
    X_lo, X_hi, _, _ = interval_bounds(net, lo, hi)
    box = margin_lower_bounds(net, X_lo, X_hi, labels)
    q = net.n_out
    rows, cls = np.repeat(np.arange(len(U)), q), np.tile(np.arange(q), len(U))
    keep = cls != labels[rows]
    rows, cls = rows[keep], cls[keep]
    bounds = {steps: substituted_margins(net, X_lo, X_hi, lo, hi, rows, labels[rows], cls, steps=steps)
              for steps in (0, 1, 3, 6)}
    # No substitution: the state-box bound (the feature box's, taken back to the states).
    np.testing.assert_allclose(bounds[0], box[rows, cls], rtol=1e-9, atol=1e-9)
    for steps in (1, 3, 6):
        assert np.all(bounds[steps] >= bounds[0] - 1e-12)
    assert np.any(bounds[3] > bounds[0] + 1e-6), "the substitution tightens no margin"
    # Sound: below the margins of sampled inputs, corners of the box, and attacked inputs.
    samples = [rng.uniform(lo, hi) for _ in range(100)]
    samples += [np.where(rng.random(lo.shape) < 0.5, lo, hi) for _ in range(100)]
    samples += [pgd_attack(net, U, cls_, eps, steps=20, seed=s) for s, cls_ in enumerate(rng.integers(0, q, (3, 4)))]
    for V in samples:
        true = margins(net, V, labels)[rows, cls]
        for steps, b in bounds.items():
            assert np.all(true >= b - TOL), (steps, (b - true).max())


def test_certified_by_interval_certifies_at_least_the_box_bound_and_more_somewhere(monkeypatch):
    """The certificate with the substitution holds wherever the state-box one does, and on
    this conv layer with a hidden readout it certifies samples the box bound leaves open."""
    net = conv_net()
    rng = np.random.default_rng(5)
    U = rng.uniform(0.1, 0.9, (60, net.n_in))
    labels = net.predict(U)
    gains = 0
    for eps in (0.04, 0.08, 0.12):
        monkeypatch.setattr(_robust, "SUBSTITUTION_STEPS", 0)
        without = certified_by_interval(net, U, labels, eps)
        monkeypatch.undo()
        with_ = certified_by_interval(net, U, labels, eps)
        assert np.all(with_ >= without)
        gains += int(with_.sum() - without.sum())
    assert gains > 0


def test_substituted_margins_of_a_net_with_infinite_bounds_are_not_asked_for():
    """Without a contraction certificate the state bounds are infinite: certified_by_interval
    certifies nothing and asks no substitution."""
    net = dense_net()
    net.A = 3.0 * np.eye(net.n_hidden)
    net.solver = dataclasses.replace(net.solver, max_iter=5)
    U = np.full((2, net.n_in), 0.5)
    assert not certified_by_interval(net, U, np.array([0, 1]), 0.01).any()


@pytest.mark.parametrize("name", NETS)
def test_state_diagonal_is_that_of_the_dense_operator(name):
    net = NETS[name]()
    A = net.A if name == "dense" else net.state_operator().to_dense()
    np.testing.assert_array_equal(net.state_diagonal(), np.diag(A))
