"""Scalar kernels shared by the numba and CUDA engines: the status codes, the stopping rule
that classifies a sample, the activations with their derivatives and proximal maps, and a
small dense solve. ``math`` only, so that numba compiles them for the CPU and the GPU alike.

The numpy engine (:mod:`.numpy_engine`) is the specification these follow. They avoid the
builtins ``min`` and ``max``: numba's built-in CUDA target cannot compile their varargs
overloads (conditional expressions, written so that NaN passes through, instead).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._activations import PROX_NEWTON_STEPS, PROX_TOL

__all__ = [
    "RUNNING", "SUCCESS", "MAX_ITER", "DIVERGED", "NONFINITE",
    "DIVERGENCE_RATIO", "ANDERSON_REG", "FLUSH",
    "RELU", "LEAKY_RELU", "HARD_TANH", "TANH", "SOFTPLUS", "IDENTITY",
    "classify", "act_value", "act_derivative", "act_prox", "solve_small", "compiled_only",
    "copy_row", "copy_rows",
]

# Per-sample status codes (the values of :class:`solvers.Status`; RUNNING: not stopped yet).
RUNNING = -1
SUCCESS = 0
MAX_ITER = 1
DIVERGED = 2
NONFINITE = 3

#: A sample is declared diverged when its residual exceeds its first residual by this factor.
DIVERGENCE_RATIO = 1e6
#: Relative Tikhonov regularisation of Anderson's normal equations.
ANDERSON_REG = 1e-10
#: The averaged step sets an iterate entry below this magnitude to 0. A unit that ReLU turns off
#: decays as ``(1 − α)^k`` and, left alone, reaches float32's subnormal numbers (below 1.2e-38)
#: after 60-odd iterations at α = 0.75, where CPU arithmetic on it is many times slower (README,
#: "Subnormal numbers"). The change is at most 1e-30 per entry, far below any tolerance, and
#: moves the entry towards its fixed point 0.
FLUSH = 1e-30

# Activation codes (the values of :data:`solvers.ACTIVATIONS`; IDENTITY: the adjoint's).
RELU = 0
LEAKY_RELU = 1
HARD_TANH = 2
TANH = 3
SOFTPLUS = 4
IDENTITY = 5


# numba compiles an assignment from an array into a slice (``a[i] = row``, ``a[:] = b``) with
# an error path that formats both shapes as strings: the formatter costs seconds of
# compilation once per process and rank, in every process that compiles a kernel holding one
# (a first run, each test worker). The kernels copy with these loops instead; the shapes agree
# by construction at every call.
@njit(cache=True, inline="always")
def copy_row(dst, src):
    """``dst[:] = src`` for 1-d arrays of one length (cast to ``dst``'s dtype)."""
    for j in range(src.shape[0]):
        dst[j] = src[j]


@njit(cache=True, inline="always")
def copy_rows(dst, src):
    """``dst[:] = src`` for 2-d arrays of one shape (cast to ``dst``'s dtype)."""
    for s in range(src.shape[0]):
        for j in range(src.shape[1]):
            dst[s, j] = src[s, j]


@njit(cache=True)
def classify(k, r, tol, r_first, max_iter):
    """The stopping rule of every engine and method: the status of a sample whose residual at
    iteration ``k`` is ``r`` (``r_first`` at iteration 0), or RUNNING."""
    if not math.isfinite(r):
        return NONFINITE
    if r <= tol:
        return SUCCESS
    if r > DIVERGENCE_RATIO * r_first:
        return DIVERGED
    if k >= max_iter:
        return MAX_ITER
    return RUNNING


@njit(cache=True, inline="always")
def act_value(code, slope, z):
    """σ(z) for the activation ``code``."""
    if code == RELU:
        return z if z > 0.0 else 0.0 * z
    if code == LEAKY_RELU:
        return z if z >= 0.0 else slope * z
    if code == HARD_TANH:  # (no builtin min/max in kernels: see the module docstring)
        return -1.0 if z < -1.0 else (1.0 if z > 1.0 else z)
    if code == TANH:
        return math.tanh(z)
    if code == SOFTPLUS:
        return (z if z > 0.0 else 0.0) + math.log1p(math.exp(-abs(z)))
    return z


@njit(cache=True, inline="always")
def act_derivative(code, slope, z):
    """σ'(z), with the conventions of :func:`solvers._activations.derivative` at kinks."""
    if code == RELU:
        return 1.0 if z >= 0.0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if z >= 0.0 else slope
    if code == HARD_TANH:
        return 1.0 if abs(z) <= 1.0 else 0.0
    if code == TANH:
        t = math.tanh(z)
        return 1.0 - t * t
    if code == SOFTPLUS:
        return 0.5 * (1.0 + math.tanh(0.5 * z))
    return 1.0


@njit(cache=True, inline="always")
def act_prox(code, slope, alpha, v):
    """``prox_{αf}(v)`` where σ = prox_f; see :mod:`solvers._activations` for the derivation:
    σ itself for the indicators (ReLU, hard tanh, the identity), a closed form for leaky ReLU,
    a safeguarded Newton iteration (:func:`act_prox_newton`, a call) for tanh and softplus."""
    if alpha == 1.0 or code == RELU or code == HARD_TANH or code == IDENTITY:
        return act_value(code, slope, v)
    if code == LEAKY_RELU:
        s = slope / (slope + alpha * (1.0 - slope))
        return v if v >= 0.0 else s * v
    return act_prox_newton(code, slope, alpha, v)


@njit(cache=True)
def act_prox_newton(code, slope, alpha, v):
    """``prox_{αf}(v)`` of a smooth activation (tanh, softplus): the root of
    ``α s + (1 − α) σ(s) = v`` by Newton steps kept inside a bracket."""
    lo = alpha if alpha < 1.0 else 1.0
    s = float(v)
    h = alpha * s + (1.0 - alpha) * act_value(code, slope, s) - v
    a = s - abs(h) / lo
    b = s + abs(h) / lo
    for _ in range(PROX_NEWTON_STEPS):
        h = alpha * s + (1.0 - alpha) * act_value(code, slope, s) - v
        if abs(h) <= PROX_TOL * (1.0 + abs(v)):
            break
        if h < 0.0:
            a = s
        elif h > 0.0:
            b = s
        dh = alpha + (1.0 - alpha) * act_derivative(code, slope, s)
        s_new = s - h / dh
        s = s_new if (s_new > a and s_new < b) else 0.5 * (a + b)
    return act_value(code, slope, s)


def _solve_small_impl(H, b, k):
    """Solve ``H[:k,:k] γ = b[:k]`` in place by Gaussian elimination with partial pivoting."""
    for c in range(k):
        p = c
        for r in range(c + 1, k):
            if abs(H[r, c]) > abs(H[p, c]):
                p = r
        if p != c:
            for j in range(k):
                H[c, j], H[p, j] = H[p, j], H[c, j]
            b[c], b[p] = b[p], b[c]
        for r in range(c + 1, k):
            f = H[r, c] / H[c, c]
            for j in range(c, k):
                H[r, j] -= f * H[c, j]
            b[r] -= f * b[c]
    for c in range(k - 1, -1, -1):
        acc = b[c]
        for j in range(c + 1, k):
            acc -= H[c, j] * b[j]
        b[c] = acc / H[c, c]


solve_small = njit(cache=True)(_solve_small_impl)
#: The same source for device code (a CPU dispatcher cannot take the simulator's arrays).
solve_small_py = _solve_small_impl

_TINY = float(np.finfo(np.float64).tiny)


def compiled_only(name: str, doc: str):
    """A function that exists for numba's ``@overload`` to give it meaning in compiled code
    (per argument type); called from Python it says so."""

    def stub(*args):
        raise NotImplementedError(f"{name} runs in compiled code only")

    stub.__name__ = stub.__qualname__ = name
    stub.__doc__ = doc
    return stub
