"""Linear operators the compiled engines iterate over, given by their primitives.

An engine never sees "a matrix": it calls three primitives on a block of rows,

- :func:`apply`       ``out = X Aᵀ``       (the forward product, row-major batch),
- :func:`apply_T`     ``out = X A``        (the adjoint's product),
- :func:`resolvent`   ``out = X M⁻ᵀ``      with ``M = (1 + α) I − α A`` (the splittings),

each an ``@overload`` that numba resolves at compile time from the operator's type. A new
operator (a convolution, a sparse or low-rank matrix) is one more namedtuple type and one
more branch in each overload, plus its theory in :mod:`contraction`; the loop driver, the
methods and the stopping rule do not change.
"""

from __future__ import annotations

import collections

import numpy as np
from numba.extending import overload

__all__ = ["Dense", "dense", "apply", "apply_T", "resolvent"]

#: A dense matrix ``A``: ``AT = Aᵀ`` (C-contiguous, for the forward product), ``A`` (for the
#: adjoint) and ``MinvT = ((1 + α) I − α A)⁻ᵀ`` (the splittings). A field a solve does not
#: use holds a (0, 0) array.
Dense = collections.namedtuple("Dense", ["A", "AT", "MinvT"])


def dense(A: np.ndarray, *, forward: bool = True, adjoint: bool = False, MinvT=None) -> Dense:
    """The :class:`Dense` operator of ``A`` (C-contiguous, in the solve's dtype) with the fields
    a solve needs: ``forward`` (``Aᵀ``), ``adjoint`` (``A``), ``MinvT`` (the splittings)."""
    none = np.zeros((0, 0), A.dtype)
    return Dense(
        np.ascontiguousarray(A) if adjoint else none,
        np.ascontiguousarray(A.T) if forward else none,
        none if MinvT is None else MinvT,
    )


def _kind(op):
    return getattr(op, "instance_class", None)


def apply(op, X, out):
    """``out = X Aᵀ`` (compiled code only)."""
    raise NotImplementedError("operators.apply runs in compiled code only")


def apply_T(op, X, out):
    """``out = X A`` (compiled code only)."""
    raise NotImplementedError("operators.apply_T runs in compiled code only")


def resolvent(op, X, out):
    """``out = X M⁻ᵀ``, ``M = (1 + α) I − α A`` (compiled code only)."""
    raise NotImplementedError("operators.resolvent runs in compiled code only")


@overload(apply)
def _apply(op, X, out):
    if _kind(op) is Dense:
        def impl(op, X, out):
            np.dot(X, op.AT, out)
        return impl


@overload(apply_T)
def _apply_T(op, X, out):
    if _kind(op) is Dense:
        def impl(op, X, out):
            np.dot(X, op.A, out)
        return impl


@overload(resolvent)
def _resolvent(op, X, out):
    if _kind(op) is Dense:
        def impl(op, X, out):
            np.dot(X, op.MinvT, out)
        return impl
