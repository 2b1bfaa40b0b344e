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

from .kernels import compiled_only

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


apply = compiled_only("apply", "``out = X Aᵀ``.")
apply_T = compiled_only("apply_T", "``out = X A``.")
resolvent = compiled_only("resolvent", "``out = X M⁻ᵀ``, ``M = (1 + α) I − α A``.")


def _dense_primitive(primitive, field: int) -> None:
    """``primitive(op, X, out)`` for a :class:`Dense` ``op``: ``out = X op[field]`` (one GEMM)."""

    @overload(primitive)
    def _for(op, X, out):
        if _kind(op) is Dense:
            return lambda op, X, out: np.dot(X, op[field], out)


for _primitive, _field in ((apply, Dense._fields.index("AT")), (apply_T, Dense._fields.index("A")),
                           (resolvent, Dense._fields.index("MinvT"))):
    _dense_primitive(_primitive, _field)
