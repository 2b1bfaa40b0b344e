"""Argument checks shared by the public functions (validate at the boundary)."""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "as_square_matrix",
    "as_matrix",
    "as_weights",
    "as_positive_definite",
    "as_finite_scalar",
]


def _finite_array(x, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}: {exc}") from None
    kind = arr.dtype.kind  # dtype kinds (cheaper than np.issubdtype on every solve)
    if kind not in "biufc":
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if kind == "c":
        raise ValueError(f"{name} must be real, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if kind != "f":
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[:5].tolist()
        raise ValueError(f"{name} must be finite; non-finite entries at {bad}")
    return arr


def as_matrix(A, name: str = "A") -> np.ndarray:
    """Return ``A`` as a finite real 2-D float array or raise ``ValueError``."""
    arr = _finite_array(A, name, 2)
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    return arr


def as_square_matrix(A, name: str = "A") -> np.ndarray:
    """Return ``A`` as a finite real square float array or raise ``ValueError``."""
    arr = as_matrix(A, name)
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be square, got shape {arr.shape}")
    return arr


def as_weights(eta, n: int, name: str = "eta") -> np.ndarray | None:
    """Return positive finite weights of length ``n`` (``None`` stays ``None``)."""
    if eta is None:
        return None
    arr = _finite_array(eta, name, 1).astype(np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be strictly positive; min is {arr.min():.3g}")
    return arr


def as_positive_definite(P, n: int, name: str = "P") -> np.ndarray | None:
    """Return a symmetric positive definite ``(n, n)`` matrix (``None`` stays ``None``)."""
    if P is None:
        return None
    arr = as_square_matrix(P, name).astype(np.float64)
    if arr.shape != (n, n):
        raise ValueError(f"{name} must have shape ({n}, {n}), got {arr.shape}")
    if not np.allclose(arr, arr.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(arr).max())):
        raise ValueError(f"{name} must be symmetric")
    try:
        np.linalg.cholesky(arr)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name} must be positive definite") from None
    return arr


def as_finite_scalar(x, name: str, *, low: float | None = None, strict: bool = False) -> float:
    """Return ``x`` as a finite float, optionally bounded below, or raise ``ValueError``."""
    if type(x) is not float and (isinstance(x, bool) or not isinstance(x, (numbers.Real, np.number))):
        raise ValueError(f"{name} must be a real number, got {type(x).__name__}")
    val = float(x)
    if not math.isfinite(val):
        raise ValueError(f"{name} must be finite, got {val}")
    if low is not None and (val <= low if strict else val < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {val}")
    return val
