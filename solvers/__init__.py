"""Fixed-point solvers for implicit networks ``x = σ(Ax + w)`` and their adjoints.

One front door (:func:`solve`, :func:`solve_adjoint`), six methods, three engines:
``numpy`` (the readable specification), ``numba`` (CPU, default) and ``cuda``
(``numba.cuda``). Every method stops on the same ℓ∞ fixed-point residual.
"""

from ._activations import ACTIVATIONS, Activation, get_activation
from ._api import ADJOINT_METHODS, ENGINES, METHODS, PRECISIONS, solve, solve_adjoint
from ._result import AdjointResult, FixedPointResult, NoConvergence, NotGuaranteedWarning, Status

__all__ = [
    "ACTIVATIONS",
    "ADJOINT_METHODS",
    "Activation",
    "AdjointResult",
    "ENGINES",
    "FixedPointResult",
    "METHODS",
    "NoConvergence",
    "NotGuaranteedWarning",
    "PRECISIONS",
    "Status",
    "get_activation",
    "solve",
    "solve_adjoint",
]
