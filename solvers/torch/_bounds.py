"""Differentiable interval bounds of an implicit layer over an input box, and the worst-case
logits of a linear readout over them: certified (interval-bound) training inside a torch loop.

The bounds are the equilibrium of the embedded network (DESIGN.md section 5, Jafarpour et al.
2022; :mod:`solvers.training._robust` computes the same in numpy): a 2n-dimensional implicit
network with matrix ``𝒜 = [[A_M, A_N], [A_N, A_M]]``, well-posed under the same ``μ∞`` with the
same ``α*``. Its matrix and inputs are built from the layer's parameters with torch operations
and its equilibrium is the same custom operator as the layer's, so gradients reach ``A``, ``B``,
``b`` and the box through the sign splits (almost everywhere exact).

References
----------
S. Jafarpour, A. Davydov, M. Abate, F. Bullo, S. Coogan, "Robustness Certificates for
Implicit Neural Networks: A Mixed Monotone Contractive Approach", L4DC 2022.
"""

from __future__ import annotations

import dataclasses

import torch

from ._layer import ConvImplicitLayer, ImplicitLayer
from ._ops import fixed_point

__all__ = ["interval_bounds", "worst_case_logits"]


def interval_bounds(layer, lo: torch.Tensor, hi: torch.Tensor, atol: float | None = None, sound: bool = True):
    """Bounds ``x_lo ≤ x*(u) ≤ x_hi`` of the layer's equilibrium for every ``u`` in ``[lo, hi]``.

    Parameters
    ----------
    layer : ImplicitLayer or ConvImplicitLayer
    lo, hi : torch.Tensor
        The box, shaped as the layer's inputs (a batch), ``lo ≤ hi`` entrywise.
    atol : float, optional
        Tolerance of the embedded solve (default the layer's ``atol``).
    sound : bool
        Widen the bounds by the solve's a-posteriori error bound ``r / (1 − max(0, μ∞(A)))``
        (not differentiated) and clamp them to σ's range, so that they hold for the exact
        equilibrium, not only to the solver's tolerance; without a contraction certificate
        (``μ∞(A) ≥ 1``) they are then infinite.

    Returns
    -------
    x_lo, x_hi : torch.Tensor
        Shaped as the layer's outputs; differentiable in the layer's parameters, ``lo`` and ``hi``.
    """
    if not isinstance(layer, (ImplicitLayer, ConvImplicitLayer)):
        raise ValueError(f"layer must be an ImplicitLayer or a ConvImplicitLayer, got {type(layer).__name__}")
    if not isinstance(lo, torch.Tensor) or not isinstance(hi, torch.Tensor) or lo.shape != hi.shape:
        raise ValueError(f"lo and hi must be tensors of one shape, got {getattr(lo, 'shape', type(lo).__name__)} "
                         f"and {getattr(hi, 'shape', type(hi).__name__)}")
    if isinstance(layer, ImplicitLayer):
        layer._check_input(lo, "lo", 2, (layer.n_in,))
        layer._check_input(hi, "hi", 2, (layer.n_in,))
    else:
        layer._check_input(lo, "lo", 4, (layer.in_channels, *layer.image_size))
        layer._check_input(hi, "hi", 4, (layer.in_channels, *layer.image_size))
    if bool((lo > hi).any()):
        first = torch.nonzero(lo > hi)[0].tolist()
        raise ValueError(f"lo must be <= hi entrywise (the box [lo, hi]), got lo > hi at {first}")
    config = layer.config
    if atol is not None:
        config = dataclasses.replace(config, solver=dataclasses.replace(config.solver, atol=atol))
    AA, W2 = layer.embedded(lo, hi)
    X2, _, error = fixed_point(AA, W2, config.key)
    n = layer.n_hidden
    x_hi, x_lo = X2[:, :n], X2[:, n:]
    if sound:
        low, high = layer.activation.range
        widen = error.to(X2.dtype)[:, None]
        x_hi, x_lo = torch.clamp(x_hi + widen, max=high), torch.clamp(x_lo - widen, min=low)
    shape = (lo.shape[0], -1) if isinstance(layer, ImplicitLayer) else (lo.shape[0], layer.channels, *layer.state_shape)
    return x_lo.reshape(shape), x_hi.reshape(shape)


def worst_case_logits(readout, f_lo: torch.Tensor, f_hi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Worst-case logits of a linear readout ``y = C f + c`` over the box ``[f_lo, f_hi]``.

    ``z_j = −min over the box of ((C_k − C_j) f + c_k − c_j)`` with ``k = labels``, so ``z_k = 0``:
    the sample is certified (class ``k`` at every point of the box) when ``z_j < 0`` for every
    ``j ≠ k``, and ``cross_entropy(z, labels)`` bounds the worst-case cross-entropy over the box
    (the loss of interval-bound training).

    Parameters
    ----------
    readout : torch.nn.Linear
    f_lo, f_hi : torch.Tensor, shape (batch, in_features)
        Bounds of the readout's input: :func:`interval_bounds` of the states, or of features
        computed from them by a monotone map (an average pool, flattening).
    labels : torch.Tensor of int, shape (batch,)

    Returns
    -------
    torch.Tensor, shape (batch, out_features)
    """
    if not isinstance(readout, torch.nn.Linear):
        raise ValueError(f"readout must be a torch.nn.Linear, got {type(readout).__name__}")
    C = readout.weight
    if f_lo.shape != f_hi.shape or f_lo.dim() != 2 or f_lo.shape[1] != C.shape[1]:
        raise ValueError(f"f_lo and f_hi must have shape (batch, {C.shape[1]}) for this readout, got "
                         f"{tuple(f_lo.shape)} and {tuple(f_hi.shape)}")
    if labels.shape != (f_lo.shape[0],) or labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels must be integer class indices of shape ({f_lo.shape[0]},), got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    D = C[labels][:, None, :] - C[None, :, :]  # (batch, classes, features): C_k − C_j
    low = (D.clamp(min=0) * f_lo[:, None, :] + D.clamp(max=0) * f_hi[:, None, :]).sum(dim=2)
    if readout.bias is not None:
        c = readout.bias
        low = low + (c[labels][:, None] - c[None, :])
    return -low
