"""What the PyTorch-layer tests share: tiny float64 layers solved to 1e-12, a well-posed ``A``
with negative self-loops (so that ``α* < 1``), and the unrolled pure-torch reference."""

from __future__ import annotations

import numpy as np
import torch

import contraction
from solvers.torch import ConvImplicitLayer, ImplicitLayer

#: float64 solves tight enough for finite differences and reference comparisons.
EXACT = dict(dtype=torch.float64, atol=1e-12, max_iter=20_000)


def set_parameters(layer, A, B=None, b=None):
    """Copy numpy (or tensor) values into the layer's parameters."""
    with torch.no_grad():
        for name, value in (("A", A), ("B", B), ("b", b)):
            if value is not None:
                getattr(layer, name).copy_(torch.as_tensor(np.asarray(value)))
    return layer


def dense_layer(seed=0, n_in=4, n_hidden=5, mu=0.8, activation="relu", **kw) -> ImplicitLayer:
    """A float64 layer whose ``A`` has ``μ∞(A) = mu``, negative self-loops and no zero entries
    (the interval bounds' sign split is smooth there), ``b`` non-zero."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n_hidden, n_hidden))
    G[np.diag_indices(n_hidden)] = -rng.uniform(0.5, 1.5, n_hidden)
    A = G * (mu / contraction.mu_inf(G)) if contraction.mu_inf(G) > 0 else G
    layer = ImplicitLayer(n_in, n_hidden, activation=activation, constraint="none", **{**EXACT, **kw})
    return set_parameters(layer, A, rng.standard_normal((n_hidden, n_in)), 0.3 * rng.standard_normal(n_hidden))


def conv_layer(seed=0, padding="circular", stride=1, image=(4, 5), mu=0.7, **kw) -> ConvImplicitLayer:
    """A float64 1 → 2 channel 3 × 3 layer on small images with ``μ∞ = mu`` (kernel formula)."""
    rng = np.random.default_rng(seed)
    layer = ConvImplicitLayer(1, 2, image, 3, padding=padding, stride=stride, constraint="none", **{**EXACT, **kw})
    K = 0.3 * rng.standard_normal((2, 2, 3, 3))
    K[[0, 1], [0, 1], 1, 1] = -0.5
    op = contraction.Conv2d(K, layer.state_shape, padding)
    K *= mu / contraction.mu_inf(op)
    return set_parameters(layer, K, rng.standard_normal((2, 1, 3, 3)), 0.2 * rng.standard_normal(2))


def self_loops(A: torch.Tensor) -> torch.Tensor:
    """The diagonal of the operator: ``a_ii`` of a matrix, the centre taps ``K[c, c, p, p]`` of a kernel."""
    if A.dim() == 2:
        return A.diagonal()
    p = A.shape[-1] // 2
    return A[:, :, p, p].diagonal()


def conv_same(x, K, padding, stride=1):
    """"Same" cross-correlation, written here from ``torch.nn.functional`` alone."""
    p = K.shape[-1] // 2
    if padding == "circular":
        x, p = torch.nn.functional.pad(x, (p, p, p, p), mode="circular"), 0
    return torch.nn.functional.conv2d(x, K, stride=stride, padding=p)


def unrolled(layer, u, iterations=3000):
    """The layer's equilibrium by the averaged iteration written in torch and differentiated by
    autograd through every step (the reference the adjoint must reproduce)."""
    A = layer.A
    alpha = 1.0 / (1.0 - min(0.0, float(self_loops(A.detach()).min())))
    sigma = {"relu": torch.relu, "tanh": torch.tanh, "softplus": torch.nn.functional.softplus}[layer.activation.name]
    if A.dim() == 2:
        W = u @ layer.B.t() + layer.b
        product = lambda x: x @ A.t()  # noqa: E731
    else:
        W = conv_same(u, layer.B, layer.padding, layer.stride) + layer.b[:, None, None]
        product = lambda x: conv_same(x, A, layer.padding)  # noqa: E731
    x = torch.zeros_like(W)
    for _ in range(iterations):
        x = x + alpha * (sigma(product(x) + W) - x)
    return x
