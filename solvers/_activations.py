"""Slope-restricted activations σ (slopes in [0, 1]), their derivatives and proximal maps.

Every σ here is the proximal operator of a convex function ``f``; forward-backward and the
operator splittings need ``prox_{αf}``, which equals σ at ``α = 1`` (and for every α when
``f`` is an indicator: relu, hard_tanh). In general ``z = prox_{αf}(v)`` is ``z = σ(s)``
where ``s`` solves ``α s + (1 − α) σ(s) = v`` (substitute ``∂f(z) = σ⁻¹(z) − z`` into
``z + α ∂f(z) ∋ v``); the left side is increasing with slope between ``min(α, 1)`` and
``max(α, 1)``, so a safeguarded Newton iteration finds ``s``.

References
----------
E. Winston and J. Z. Kolter, "Monotone operator equilibrium networks", NeurIPS 2020.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

__all__ = ["Activation", "ACTIVATIONS", "get_activation"]

#: name -> integer code used by the compiled kernels.
ACTIVATIONS = {"relu": 0, "leaky_relu": 1, "hard_tanh": 2, "tanh": 3, "softplus": 4}
#: name -> the closed interval holding σ's values.
_RANGES = {"relu": (0.0, np.inf), "leaky_relu": (-np.inf, np.inf), "hard_tanh": (-1.0, 1.0), "tanh": (-1.0, 1.0),
           "softplus": (0.0, np.inf)}
#: Code of the identity map, used internally by the (linear) adjoint equation.
IDENTITY = 5

#: Newton steps for prox of tanh/softplus; each step at least halves the bracket.
PROX_NEWTON_STEPS = 60
#: Relative tolerance on h(s) for the prox Newton iteration.
PROX_TOL = 4 * np.finfo(np.float64).eps


@dataclasses.dataclass(frozen=True)
class Activation:
    """An entrywise activation; ``slope`` is the negative-side slope of ``leaky_relu``."""

    name: str
    slope: float = 0.01

    @property
    def code(self) -> int:
        return ACTIVATIONS[self.name]

    def __call__(self, z):
        return value(self.code, self.slope, z)

    def derivative(self, z):
        return derivative(self.code, self.slope, z)

    def prox(self, v, alpha: float):
        return prox(self.code, self.slope, alpha, v)

    @property
    def range(self) -> tuple:
        """``(low, high)``: the closed interval holding every value of σ (a state ``x = σ(z)``
        lies in it, whatever ``z``): relu and softplus ``[0, ∞)``, hard_tanh and tanh ``[−1, 1]``,
        leaky_relu the whole line."""
        return _RANGES[self.name]


def get_activation(spec) -> Activation:
    """Accept ``"relu"``, ``"leaky_relu"``, ``("leaky_relu", 0.1)`` or an :class:`Activation`."""
    if isinstance(spec, str) and spec in _BY_NAME:
        return _BY_NAME[spec]
    if isinstance(spec, Activation):
        act = spec
    elif isinstance(spec, str):
        act = Activation(spec)
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        if not isinstance(spec[1], numbers.Real):
            raise ValueError(f"activation slope must be a real number, got {spec[1]!r}")
        act = Activation(spec[0], float(spec[1]))
    else:
        raise TypeError(f"activation must be a name, (name, slope) or Activation, got {spec!r}")
    if act.name not in ACTIVATIONS:
        raise TypeError(f"unknown activation {act.name!r}; choose from {list(ACTIVATIONS)}")
    if not (0.0 <= act.slope < 1.0) or not np.isfinite(act.slope):
        raise ValueError(f"activation slope must be in [0, 1), got {act.slope}")
    if isinstance(spec, str):
        _BY_NAME[spec] = act  # frozen: one instance per valid name
    return act


#: Validated activations by name (every solve looks its activation up).
_BY_NAME: dict = {}


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def value(code: int, slope: float, z):
    """σ(z) (numpy, elementwise)."""
    if code == 0:
        return np.maximum(z, 0)
    if code == 1:
        return np.where(z >= 0, z, slope * z)
    if code == 2:
        return np.clip(z, -1, 1)
    if code == 3:
        return np.tanh(z)
    if code == 4:
        return np.logaddexp(0, z).astype(np.result_type(z), copy=False)
    return z


def derivative(code: int, slope: float, z):
    """σ'(z) (numpy, elementwise).

    Notes
    -----
    At a kink any value in [left, right] is a valid generalised derivative; we take 1 at
    ``z = 0`` for relu/leaky relu and 1 at ``|z| = 1`` for hard tanh (the linear piece).
    """
    z = np.asarray(z)
    one = np.ones_like(z)
    if code == 0:
        return np.where(z >= 0, one, 0 * one)
    if code == 1:
        return np.where(z >= 0, one, slope * one)
    if code == 2:
        return np.where(np.abs(z) <= 1, one, 0 * one)
    if code == 3:
        return 1 - np.tanh(z) ** 2
    if code == 4:
        return _sigmoid(z)
    return one


def prox(code: int, slope: float, alpha: float, v):
    """``prox_{αf}(v)`` where σ = prox_f (numpy, elementwise)."""
    v = np.asarray(v)
    if alpha == 1.0 or code in (0, 2, IDENTITY):
        return value(code, slope, v)
    if code == 1:
        s = slope / (slope + alpha * (1.0 - slope))
        return np.where(v >= 0, v, s * v)
    # Safeguarded Newton on h(s) = α s + (1 − α) σ(s) − v; the slope of h is at least lo.
    lo = min(alpha, 1.0)
    s = v.astype(np.float64)
    h = alpha * s + (1 - alpha) * value(code, slope, s) - v
    a, b = s - np.abs(h) / lo, s + np.abs(h) / lo  # bracket of the root
    for _ in range(PROX_NEWTON_STEPS):
        h = alpha * s + (1 - alpha) * value(code, slope, s) - v
        todo = np.abs(h) > PROX_TOL * (1 + np.abs(v))
        if not np.any(todo):
            break
        a = np.where(h < 0, s, a)
        b = np.where(h > 0, s, b)
        dh = alpha + (1 - alpha) * derivative(code, slope, s)
        s_new = s - h / dh
        s_new = np.where((s_new > a) & (s_new < b), s_new, 0.5 * (a + b))
        s = np.where(todo, s_new, s)
    return value(code, slope, s).astype(v.dtype, copy=False)
