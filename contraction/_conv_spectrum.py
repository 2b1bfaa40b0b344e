"""A circular :class:`Conv2d` in the frequency domain: its symbol per frequency, the
splittings' resolvent, and the quantities that are not per-channel row sums (μ2 and the
splittings' contraction factor). Nothing here forms the dense matrix.

Notes
-----
With circular padding the operator is block-circulant: the 2-D discrete Fourier transform of
each channel diagonalises it into one ``C × C`` matrix per frequency ``f = (u, v)``,

    K̂(f)[c, c'] = Σ_{di, dj} K[c, c', di, dj] · exp(2πi (u (di − p)/H + v (dj − p)/W)),

so that ``(A x)^(f) = K̂(f) x̂(f)`` (cross-correlation: the plus sign). A real kernel has
``K̂(−f) = conj(K̂(f))``: the half spectrum ``v = 0 … W//2`` (``numpy.fft.rfft2``'s) holds
everything. Then ``M = (1 + α) I − α A`` has ``M̂(f) = (1 + α) I − α K̂(f)``, its inverse is
``M̂(f)⁻¹`` per frequency, ``μ2(A) = max_f λ_max((K̂(f) + K̂(f)ᴴ)/2)`` (a unitary change of basis
keeps the symmetric part's spectrum), and the reflected resolvent ``2 M⁻¹ − I`` is again a
circular convolution, whose kernel is the inverse transform of ``2 M̂(f)⁻¹ − I``.
"""

from __future__ import annotations

import numpy as np

from ._conv import Conv2d

__all__ = ["symbol", "inverse_symbol", "apply_inverse_symbol", "conv_mu_2", "splitting_factor"]


def symbol(op: Conv2d) -> np.ndarray:
    """``K̂(f)`` on the half spectrum: (H, W//2 + 1, C_out, C_in), complex128."""
    C_out, C_in, k, _ = op.kernel.shape
    H, W = op.image_shape
    p = k // 2
    # The kernel as an image whose pixel (h, w) multiplies x[i − h, j − w]: tap (di, dj) sits at
    # (p − di, p − dj) mod (H, W), distinct pixels since H, W ≥ k.
    G = np.zeros((C_out, C_in, H, W))
    rows = (p - np.arange(k)) % H
    cols = (p - np.arange(k)) % W
    G[:, :, rows[:, None], cols[None, :]] = op.kernel
    return np.ascontiguousarray(np.fft.rfft2(G).transpose(2, 3, 0, 1))


def inverse_symbol(op: Conv2d, alpha: float) -> np.ndarray:
    """``M̂(f)⁻¹ = ((1 + α) I − α K̂(f))⁻¹`` on the half spectrum (H, W//2 + 1, C, C), complex128,
    for a square circular convolution; ``ValueError`` when some ``M̂(f)`` is singular."""
    C = op.out_channels
    M = (1.0 + alpha) * np.eye(C) - alpha * symbol(op)
    try:
        return np.ascontiguousarray(np.linalg.inv(M))
    except np.linalg.LinAlgError:
        raise ValueError(f"(1 + alpha) I - alpha A is singular for alpha={alpha}: choose another alpha") from None


def apply_inverse_symbol(R: np.ndarray, V: np.ndarray, image_shape) -> np.ndarray:
    """``M⁻¹ v`` for every row ``v`` of ``V`` (batch, C·H·W), float64: per frequency, the
    ``C × C`` product of ``R = M̂⁻¹`` with the transformed channels."""
    H, W = image_shape
    C = R.shape[2]
    x = np.fft.rfft2(V.reshape(V.shape[0], C, H, W))
    y = np.einsum("uvcd,bduv->bcuv", R, x)
    return np.fft.irfft2(y, s=(H, W)).reshape(V.shape[0], C * H * W)


def conv_mu_2(op: Conv2d) -> float:
    """``μ2(A)`` of a square circular convolution: the largest eigenvalue of the Hermitian part
    of ``K̂(f)`` over every frequency."""
    S = symbol(op)
    herm = 0.5 * (S + np.conj(np.swapaxes(S, -1, -2)))
    return float(np.linalg.eigvalsh(herm).max())


def splitting_factor(op: Conv2d, alpha: float, method: str, eta=None) -> float:
    """:func:`~contraction.contraction_factor` of ``peaceman_rachford`` / ``douglas_rachford`` for a
    square circular convolution, in ``‖·‖∞,η`` with channel weights ``eta``: ``‖2 M⁻¹ − I‖∞,η``
    from the kernel of ``2 M⁻¹ − I`` (PR), its average with 1 (DR)."""
    C = op.out_channels
    H, W = op.image_shape
    reflected = 2.0 * inverse_symbol(op, alpha) - np.eye(C)
    kernel = np.fft.irfft2(reflected.transpose(2, 3, 0, 1), s=(H, W))  # (C, C, H, W)
    mass = np.abs(kernel).sum(axis=(2, 3))
    if eta is not None:
        mass = mass * eta[None, :] / eta[:, None]
    norm = float(mass.sum(axis=1).max())
    return norm if method == "peaceman_rachford" else 0.5 * (1.0 + norm)
