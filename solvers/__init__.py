"""Fixed-point solvers for implicit networks ``x = σ(Ax + w)`` and their adjoints.

One front door (:func:`solve`, :func:`solve_adjoint`), six methods, three engines:
``numpy`` (the readable specification), ``numba`` (CPU, default) and ``cuda``
(``numba.cuda``). Every method stops on the same ℓ∞ fixed-point residual.
"""

import contraction  # noqa: F401  (first: it sets numba's cache folder before any kernel is defined)

from ._activations import ACTIVATIONS, Activation, get_activation
from ._api import ADJOINT_METHODS, ENGINES, METHODS, solve, solve_adjoint, unit_steps
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
    "Status",
    "get_activation",
    "solve",
    "solve_adjoint",
    "unit_steps",
]
