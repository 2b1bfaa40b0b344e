"""Built-in example matrices for teaching and for the command line."""

from __future__ import annotations

import numpy as np

from ._projection import project_mu_inf

__all__ = ["EXAMPLES", "example"]


def _paper_2x2(n, rng):
    # Satisfies nemon (μ∞ = 0) but neither mon nor idl: the point of the seed paper.
    A = np.array([[-100.0, 50.0], [0.0, 0.0]])
    return A, np.eye(2)


def _random_nemon(n, rng):
    A = project_mu_inf(rng.standard_normal((n, n)) / np.sqrt(n), 0.9)
    return A, rng.standard_normal((n, max(1, n // 2))) / np.sqrt(n)


def _negative_diagonal(n, rng):
    A = rng.standard_normal((n, n)) / np.sqrt(n)
    A[np.diag_indices(n)] = -rng.uniform(1.0, 5.0, n)
    A = project_mu_inf(A, 0.5)
    return A, rng.standard_normal((n, max(1, n // 2))) / np.sqrt(n)


def _mon(n, rng):
    # Winston–Kolter parametrisation A = (1 − m) I − PᵀP + S − Sᵀ with m = 0.1.
    P = rng.standard_normal((n, n)) / np.sqrt(n)
    S = rng.standard_normal((n, n)) / np.sqrt(n)
    A = 0.9 * np.eye(n) - P.T @ P + S - S.T
    return A, rng.standard_normal((n, max(1, n // 2))) / np.sqrt(n)


def _ill_posed(n, rng):
    A = rng.standard_normal((n, n)) * 2.0 / np.sqrt(n)
    return A, rng.standard_normal((n, max(1, n // 2))) / np.sqrt(n)


#: name -> (description, builder(n, rng) -> (A, B))
EXAMPLES = {
    "paper-2x2": ("[[-100, 50], [0, 0]]: nemon holds, mon and idl do not", _paper_2x2),
    "random-nemon": ("Gaussian matrix projected onto mu_inf(A) <= 0.9", _random_nemon),
    "negative-diagonal": ("strongly negative diagonal, mu_inf(A) <= 0.5 (alpha* < 1)", _negative_diagonal),
    "mon": ("monotone-operator parametrisation (1-m)I - P^T P + S - S^T, m = 0.1", _mon),
    "ill-posed": ("Gaussian matrix with spectral scale about 2: no condition holds", _ill_posed),
}


def example(name: str, n: int = 8, seed: int = 0):
    """Return ``(A, B)`` of the built-in example ``name`` (size ``n`` where it applies)."""
    if name not in EXAMPLES:
        raise ValueError(f"example must be one of {list(EXAMPLES)}, got {name!r}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return EXAMPLES[name][1](int(n), np.random.default_rng(seed))
