"""Contraction theory for implicit networks ``x = σ(Ax + Bu + b)`` in non-Euclidean norms.

Norms and log-norms, optimal weights, well-posedness conditions, step sizes and
contraction factors, Lipschitz bounds and certified radii, and projections onto the
well-posed polytope. Plain numpy (cvxpy for the semidefinite and reference programs).
"""

from ._numba_cache import configure_numba_cache

configure_numba_cache()  # before any kernel is defined: numba picks its cache folder then

from ._conv import PADDINGS, Conv2d
from ._conditions import CONDITIONS, LBEN_TIME_LIMIT, ConditionResult, WellposednessReport, lben_value, wellposedness
from ._examples import EXAMPLES, example
from ._facts import all_finite, matrix_facts
from ._lipschitz import certified_radius, lipschitz_bound
from ._norms import induced_norm, log_norm, mu_1, mu_2, mu_inf, vector_norm
from ._projection import project_mu_inf, project_norm_inf
from ._steps import (
    LOCAL_RATE_ITERATIONS,
    METHODS,
    contraction_factor,
    error_bound,
    iteration_bound,
    local_rate,
    optimal_alpha,
    optimal_alpha_from_diagonal,
    resolvent_matrix,
)
from ._weights import (
    is_irreducible,
    metzler_majorant,
    optimal_weights,
    spectral_abscissa,
    spectral_radius,
)

__all__ = [
    "CONDITIONS",
    "ConditionResult",
    "Conv2d",
    "EXAMPLES",
    "LBEN_TIME_LIMIT",
    "LOCAL_RATE_ITERATIONS",
    "METHODS",
    "PADDINGS",
    "WellposednessReport",
    "all_finite",
    "certified_radius",
    "contraction_factor",
    "error_bound",
    "example",
    "induced_norm",
    "is_irreducible",
    "iteration_bound",
    "lben_value",
    "lipschitz_bound",
    "local_rate",
    "log_norm",
    "matrix_facts",
    "metzler_majorant",
    "mu_1",
    "mu_2",
    "mu_inf",
    "optimal_alpha",
    "optimal_alpha_from_diagonal",
    "optimal_weights",
    "project_mu_inf",
    "project_norm_inf",
    "resolvent_matrix",
    "spectral_abscissa",
    "spectral_radius",
    "vector_norm",
    "wellposedness",
]
