"""What every engine receives: one solve, described once."""

from __future__ import annotations

import dataclasses

import numpy as np

from contraction import Conv2d

from .._activations import Activation

__all__ = ["Task"]


@dataclasses.dataclass(frozen=True)
class Task:
    """A batch of fixed-point problems for an engine (validated by the front door).

    ``kind="forward"``: ``x = σ(x Aᵀ + w)`` per row ``w`` of ``rhs``, ℓ∞ residual.
    ``kind="adjoint"``: ``λ = g + (λ ⊙ d) A`` per row ``g`` of ``rhs`` and ``d`` of ``D``,
    identity activation, ℓ1 residual.

    Attributes
    ----------
    kind : {"forward", "adjoint"}
    op : ndarray or contraction.Conv2d
        The operator ``A``: a dense (n, n) array in the solve's dtype (C-contiguous), or a
        square :class:`contraction.Conv2d` (its float64 kernel; an engine casts it to the
        solve's dtype).
    rhs : ndarray, shape (batch, n), C-contiguous, in the solve's dtype
    D : ndarray or None
        The adjoint's ``σ'(z)`` (batch, n).
    x0 : ndarray or None
        The start (batch, n); ``None``: zeros.
    method : str
    alpha : float or ndarray
        The step, or per-unit steps (float64, (n,); ``average`` only).
    activation : Activation
    atol, rtol : float
    max_iter : int
    record : bool
        Keep every iteration's residual.
    memory : int
        Anderson's memory.
    accept : float
        Anderson's safeguard ratio.
    resolvent : ndarray or None
        What the splittings need of ``M = (1 + α) I − α A``: ``M⁻ᵀ`` (n, n, the solve's dtype) for
        a dense ``op``; for a circular :class:`~contraction.Conv2d` its inverse symbol
        ``M̂(f)⁻¹`` on the half spectrum (H, W//2 + 1, C, C), complex128
        (:func:`contraction._conv_spectrum.inverse_symbol`). ``None`` for the other methods.
    """

    kind: str
    op: np.ndarray | Conv2d
    rhs: np.ndarray
    D: np.ndarray | None
    x0: np.ndarray | None
    method: str
    alpha: float | np.ndarray
    activation: Activation
    atol: float
    rtol: float
    max_iter: int
    record: bool = False
    memory: int = 5
    accept: float = 1.0
    resolvent: np.ndarray | None = None

    @property
    def dense(self) -> bool:
        """Whether ``op`` is a dense matrix."""
        return type(self.op) is np.ndarray

    @property
    def norm(self) -> str:
        """The residual's norm: ``"inf"`` (forward) or ``"l1"`` (adjoint)."""
        return "inf" if self.kind == "forward" else "l1"
