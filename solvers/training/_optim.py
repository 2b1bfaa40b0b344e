"""Optimisers and learning-rate schedules as plain dataclasses (config separate from state)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numba import njit

__all__ = ["OptimizerConfig", "OptimizerState", "Schedule", "make_optimizer_state", "step"]

OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """``constant`` or ``cosine`` decay of the learning rate over ``total_steps``."""

    kind: str = "constant"
    total_steps: int = 0
    final_fraction: float = 0.05

    def factor(self, step_index: int) -> float:
        if self.kind == "constant" or self.total_steps <= 0:
            return 1.0
        return self.factor_at(step_index / self.total_steps)

    def factor_at(self, fraction: float) -> float:
        """The factor once ``fraction`` of the run is done (capped at 1)."""
        if self.kind == "constant":
            return 1.0
        t = min(fraction, 1.0)
        return self.final_fraction + (1 - self.final_fraction) * 0.5 * (1 + math.cos(math.pi * t))


@dataclasses.dataclass
class OptimizerState:
    """First/second moments per parameter name and the step count."""

    t: int
    m: dict
    v: dict


def make_optimizer_state(params: dict) -> OptimizerState:
    return OptimizerState(
        t=0,
        m={k: np.zeros_like(p) for k, p in params.items()},
        v={k: np.zeros_like(p) for k, p in params.items()},
    )


@njit(cache=True, error_model="numpy")
def _adam_update(p, g, m, v, beta1, rest1, beta2, rest2, eps, step_size, inv_correction2):
    """One fused Adam update of flat arrays (``rest = 1 − β``). Every scalar comes in the
    parameter's dtype, so a float32 network updates in float32 (a Python ``1`` in here would
    make the arithmetic float64); ``error_model="numpy"`` drops the division-by-zero check
    that would stop vectorisation."""
    for i in range(p.size):
        gi = g[i]
        mi = beta1 * m[i] + rest1 * gi
        vi = beta2 * v[i] + rest2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] -= step_size * mi / (np.sqrt(vi * inv_correction2) + eps)


@njit(cache=True, error_model="numpy")
def _adam(ps, gs, ms, vs, beta1, rest1, beta2, rest2, eps, step_size, inv_correction2):
    """:func:`_adam_update` of every parameter of one dtype (tuples of flat arrays) in one call."""
    for k in range(len(ps)):
        _adam_update(ps[k], gs[k], ms[k], vs[k], beta1, rest1, beta2, rest2, eps, step_size, inv_correction2)


def step(config: OptimizerConfig, state: OptimizerState, params: dict, grads: dict, lr_factor: float = 1.0):
    """Update ``params`` in place from ``grads`` (Adam with bias correction, or SGD + momentum)."""
    state.t += 1
    lr = config.lr * lr_factor
    if config.name == "adam":
        groups = {}  # dtype -> the flat views (p, g, m, v) of its parameters, updated in one call
        for k, p in params.items():
            m, v = state.m[k], state.v[k]
            if all(a.flags.c_contiguous for a in (p, m, v)):  # ravel gives views: update in place
                group = groups.setdefault(p.dtype, ([], [], [], []))
                for views, a in zip(group, (p, np.asarray(grads[k], dtype=p.dtype), m, v)):
                    views.append(a.ravel())
                continue
            m *= config.beta1
            m += (1 - config.beta1) * grads[k]
            v *= config.beta2
            v += (1 - config.beta2) * grads[k] * grads[k]
            mhat = m / (1 - config.beta1**state.t)
            vhat = v / (1 - config.beta2**state.t)
            p -= (lr * mhat / (np.sqrt(vhat) + config.eps)).astype(p.dtype)
        for dtype, views in groups.items():
            f = dtype.type
            _adam(*(tuple(v) for v in views), f(config.beta1), f(1 - config.beta1), f(config.beta2),
                  f(1 - config.beta2), f(config.eps), f(lr / (1 - config.beta1**state.t)),
                  f(1 / (1 - config.beta2**state.t)))
        return
    for k, p in params.items():
        buf = state.m[k]
        buf *= config.momentum
        buf += grads[k]
        p -= (lr * buf).astype(p.dtype)
