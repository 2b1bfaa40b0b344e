"""Result objects, the status enum, the exception and the warning category of the solvers."""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

__all__ = ["Status", "FixedPointResult", "AdjointResult", "NoConvergence", "NotGuaranteedWarning"]


class Status(enum.IntEnum):
    """Outcome of a solve; per-sample codes use the same values (worst one is the overall status)."""

    SUCCESS = 0
    MAX_ITER = 1
    DIVERGED = 2
    NONFINITE = 3

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.SUCCESS: "every sample met the tolerance",
    Status.MAX_ITER: (
        "some samples ran out of iterations before meeting the tolerance: raise max_iter, "
        "loosen atol/rtol, or use a faster guaranteed method (see `nemon check`)"
    ),
    Status.DIVERGED: (
        "the residual grew by a factor of 1e6 over its starting value for some samples: the "
        "method is outside its guarantee; use method='average' with its default step, or make "
        "A well-posed (mu_inf(A) < 1)"
    ),
    Status.NONFINITE: (
        "non-finite iterates (NaN/Inf) appeared for some samples: the iteration blew up; use a "
        "guaranteed method and step size"
    ),
}


class NotGuaranteedWarning(UserWarning):
    """A method is used outside its convergence guarantee (the message states the margin)."""


@dataclasses.dataclass(frozen=True)
class FixedPointResult:
    """Solution of ``x = σ(Ax + w)`` for one vector or a batch.

    Attributes
    ----------
    x : ndarray, shape (n,) or (batch, n)
        The last iterate (same shape as ``W``).
    converged : ndarray of bool, shape (batch,)
        Per sample: residual ``‖σ(Ax + w) − x‖_∞ ≤ atol + rtol ‖x‖_∞``.
    status : Status
        Worst per-sample outcome; ``status.message`` says what to do.
    iterations : ndarray of int, shape (batch,)
        Steps taken per sample (0 when ``x0`` already meets the tolerance).
    residual : ndarray, shape (batch,)
        Final ℓ∞ fixed-point residual per sample.
    alpha : float or ndarray of shape (n,)
        Step size used (per-unit steps: one per unit).
    method, engine, activation : str
    history : ndarray, shape (iterations + 1, batch) or None
        Residual per iteration (NaN after a sample stopped), when ``record=True``.
    error_bound : ndarray, shape (batch,)
        ``‖x − x*‖_∞`` bound from the residual (``inf`` without a contraction certificate).
    sample_status : ndarray of int8, shape (batch,)
        Per-sample :class:`Status` codes.
    """

    x: np.ndarray
    converged: np.ndarray
    status: Status
    iterations: np.ndarray
    residual: np.ndarray
    alpha: float | np.ndarray
    method: str
    engine: str
    activation: str
    history: np.ndarray | None
    error_bound: np.ndarray
    sample_status: np.ndarray

    @property
    def success(self) -> bool:
        return self.status == Status.SUCCESS

    @property
    def message(self) -> str:
        return self.status.message

    def __repr__(self) -> str:
        it = self.iterations
        return (
            f"FixedPointResult(method={self.method!r}, engine={self.engine!r}, status={self.status.name}, "
            f"converged={int(self.converged.sum())}/{self.converged.size}, iterations mean {it.mean():.1f} "
            f"max {it.max()}, residual max {self.residual.max():.3e}, {describe_alpha(self.alpha)})"
        )


def describe_alpha(alpha) -> str:
    """``alpha=0.5``, or the range of per-unit steps."""
    if np.ndim(alpha):
        return f"per-unit alpha in [{float(np.min(alpha)):.4g}, {float(np.max(alpha)):.4g}]"
    return f"alpha={alpha:.4g}"


@dataclasses.dataclass(frozen=True)
class AdjointResult:
    """Solution of the adjoint equation ``λ = G + (λ ⊙ σ'(Z)) A`` (ℓ1 residual per sample)."""

    converged: np.ndarray
    status: Status
    iterations: np.ndarray
    residual: np.ndarray
    alpha: float | np.ndarray
    method: str
    engine: str
    history: np.ndarray | None
    sample_status: np.ndarray

    @property
    def success(self) -> bool:
        return self.status == Status.SUCCESS


class NoConvergence(RuntimeError):
    """Raised on failure when ``raise_on_failure=True``; ``.result`` holds the full result."""

    def __init__(self, result):
        self.result = result
        bad = int((~result.converged).sum())
        super().__init__(
            f"{result.method} ({result.engine}) failed for {bad}/{result.converged.size} samples: "
            f"{result.status.name}: {result.status.message}"
        )
