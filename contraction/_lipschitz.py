"""Input-output Lipschitz bounds of implicit networks and certified ℓ∞ radii.

Notes
-----
For ``x = σ(Ax + Bu + b)``: ``δx = D(A δx + B δu)`` with ``0 ⪯ D ⪯ I``. At the row ``i``
where ``|δx_i|`` is largest, ``|δx_i| (1 − d_i r_i) ≤ d_i ‖B‖_∞ ‖δu‖_∞`` with
``r_i = a_ii + Σ_{j≠i}|a_ij| ≤ μ``; ``d/(1 − d r)`` increases in ``d``, so
``‖δx‖_∞ ≤ ‖B‖_∞ ‖δu‖_∞ / (1 − μ_∞(A))`` (the tight form). The seed paper divides by
``1 − max(0, μ)``, which is never smaller. With weights the same argument runs in
``‖·‖_{∞,η}``: ``‖diag(η)⁻¹B‖_∞ / (1 − μ_{∞,η}(A))``, then ``‖C diag(η)‖_∞`` to the output.

References
----------
S. Jafarpour et al., "Robust Implicit Networks via Non-Euclidean Contractions", NeurIPS 2021.
"""

from __future__ import annotations

import numpy as np

from ._conv import Conv2d
from ._norms import mu_inf
from ._validation import as_finite_scalar, as_matrix, as_square_matrix, as_weights

__all__ = ["lipschitz_bound", "certified_radius"]

_FORMS = ("tight", "paper")


def _inf_norm(M: np.ndarray) -> float:
    return float(np.abs(M).sum(axis=1).max())


def lipschitz_bound(A, B, C=None, eta=None, form: str = "tight") -> float:
    """ℓ∞ Lipschitz bound of ``u ↦ x*(u)`` (or of ``u ↦ C x*(u)`` when ``C`` is given).

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution: every quantity from its kernel, per output channel
        (``eta`` then holds one weight per channel).
    B : array_like, shape (n, m), or contraction.Conv2d (an input convolution, with ``A`` a Conv2d)
    C : array_like, shape (q, n), optional
        For a convolutional layer, compose its average pool into ``C`` first (pooling has
        ‖·‖∞ = 1, and ``C`` times a pool has the ℓ∞ norm of ``C``).
    eta : array_like, shape (n,), optional
        Weights of the state norm (default all ones).
    form : {"tight", "paper"}
        Divide by ``1 − μ`` (tight, derived) or by ``1 − max(0, μ)`` (seed paper).

    Returns
    -------
    float
        The bound; ``inf`` when ``μ_{∞,η}(A) ≥ 1`` (no guarantee).
    """
    if isinstance(A, Conv2d):
        return _conv_lipschitz(A, B, C, eta, form)
    A = as_square_matrix(A)
    n = A.shape[0]
    B = as_matrix(B, "B")
    if B.shape[0] != n:
        raise ValueError(f"B must have {n} rows to match A, got shape {B.shape}")
    if C is not None:
        C = as_matrix(C, "C")
        if C.shape[1] != n:
            raise ValueError(f"C must have {n} columns to match A, got shape {C.shape}")
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
    eta = as_weights(eta, n)
    w = np.ones(n) if eta is None else eta
    mu = mu_inf(A, eta)
    if mu >= 1.0:
        return float("inf")
    denom = 1.0 - mu if form == "tight" else 1.0 - max(0.0, mu)
    bound = _inf_norm(B / w[:, None]) / denom
    if C is not None:
        bound *= _inf_norm(C * w[None, :])
    return float(bound)


def _conv_lipschitz(A: Conv2d, B, C, eta, form: str) -> float:
    """:func:`lipschitz_bound` for a convolutional layer: ``B`` a :class:`Conv2d` (an input
    convolution onto A's channels) or a matrix with ``A.n`` rows, ``C`` a matrix with ``A.n``
    columns (compose an average pool into it first: pooling has ‖·‖∞ = 1, and ``C`` times a
    pool has the ℓ∞ norm of ``C``); ``eta`` one weight per channel."""
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
    mu = mu_inf(A, eta)
    if mu >= 1.0:
        return float("inf")
    C_ch, pixels = A.out_channels, A.pixels
    w = np.ones(C_ch) if eta is None else np.asarray(eta, dtype=np.float64)
    if isinstance(B, Conv2d):
        if B.out_channels != C_ch or B.out_shape != A.image_shape:
            raise ValueError(f"B must map onto A's {C_ch} channels of {A.image_shape} images, got {B!r}")
        b_norm = float((np.abs(B.kernel).sum(axis=(1, 2, 3)) / w).max())
    else:
        B = as_matrix(B, "B")
        if B.shape[0] != A.n:
            raise ValueError(f"B must have {A.n} rows to match A, got shape {B.shape}")
        b_norm = _inf_norm(B / np.repeat(w, pixels)[:, None])
    denom = 1.0 - mu if form == "tight" else 1.0 - max(0.0, mu)
    bound = b_norm / denom
    if C is not None:
        C = as_matrix(C, "C")
        if C.shape[1] != A.n:
            raise ValueError(f"C must have {A.n} columns to match A, got shape {C.shape}")
        bound *= _inf_norm(C * np.repeat(w, pixels)[None, :])
    return float(bound)


def certified_radius(logits, C, lipschitz_x):
    """Certified ℓ∞ radius of each prediction from its logit margins.

    Parameters
    ----------
    logits : array_like, shape (batch, q)
        Outputs ``y = C x + c`` of the clean inputs.
    C : array_like, shape (q, n)
        Output matrix.
    lipschitz_x : float
        ℓ∞ input-to-state Lipschitz bound (:func:`lipschitz_bound` without ``C``).

    Returns
    -------
    radius : ndarray, shape (batch,)
        The prediction cannot change for any ``‖δu‖_∞ < radius``.
    predicted : ndarray of int, shape (batch,)

    Notes
    -----
    Class ``k`` stays on top at ``u + δu`` when, for every ``j ≠ k``,
    ``y_k − y_j > ‖C_k − C_j‖_1 · L_x · ‖δu‖_∞``, since
    ``|(C_k − C_j) δx| ≤ ‖C_k − C_j‖_1 ‖δx‖_∞``.
    """
    Y = as_matrix(logits, "logits")
    C = as_matrix(C, "C")
    if C.shape[0] != Y.shape[1]:
        raise ValueError(f"C must have {Y.shape[1]} rows (one per logit), got shape {C.shape}")
    L = as_finite_scalar(lipschitz_x, "lipschitz_x", low=0.0)
    k = np.argmax(Y, axis=1)
    margins = Y[np.arange(len(k)), k][:, None] - Y  # (batch, q), >= 0
    sens = np.abs(C[k][:, None, :] - C[None, :, :]).sum(axis=2) * L  # (batch, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sens > 0, margins / np.where(sens > 0, sens, 1.0), np.where(margins > 0, np.inf, 0.0))
    ratio[np.arange(len(k)), k] = np.inf
    return ratio.min(axis=1), k
