"""Step sizes, contraction factors, iteration bounds and a-posteriori error bounds.

Notes
-----
For ``T(x) = σ(Ax + w)`` with slopes in [0, 1], every Jacobian of an iteration map is a
matrix function of ``D = diag(σ')`` with ``0 ⪯ D ⪯ I``. ``contraction_factor`` returns the
exact supremum of ``‖J‖_{∞,η}`` over that box (it is attained at a vertex), so it is a
valid Lipschitz constant of the iteration map in ``‖·‖_{∞,η}`` for every α, and it
reduces to the closed forms of DESIGN.md section 4 on the guaranteed step ranges:

- average:            ``1 − α (1 − max(0, μ))`` for ``α ∈ (0, 1/(1 − min(0, a_min))]``
- forward_backward:   ``1 − α (1 − μ)``         for ``α ∈ (0, 1/(1 − a_min)]``
- peaceman_rachford:  ``‖2 M⁻¹ − I‖_{∞,η}``, ``M = (1 + α) I − α A``
- douglas_rachford:   ``(1 + ‖2 M⁻¹ − I‖_{∞,η}) / 2``

References
----------
S. Jafarpour et al., "Robust Implicit Networks via Non-Euclidean Contractions", NeurIPS 2021.
E. Winston and J. Z. Kolter, "Monotone operator equilibrium networks", NeurIPS 2020.
"""

from __future__ import annotations

import math

import numpy as np

from ._conv import Conv2d
from ._conv_spectrum import splitting_factor
from ._norms import _scale_inf, mu_inf
from ._validation import as_finite_scalar, as_square_matrix, as_weights

__all__ = [
    "LOCAL_RATE_ITERATIONS",
    "METHODS",
    "optimal_alpha",
    "optimal_alpha_from_diagonal",
    "contraction_factor",
    "local_rate",
    "iteration_bound",
    "error_bound",
    "resolvent_matrix",
]

#: Iteration schemes known to the theory layer (anderson accelerates ``average``).
METHODS = ("picard", "average", "forward_backward", "peaceman_rachford", "douglas_rachford", "anderson")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def optimal_alpha(A, method: str = "average", per_unit: bool = False):
    """Step size of ``method`` with the smallest guaranteed ℓ∞ contraction factor.

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution: every quantity from its kernel, per output channel
        (``eta`` then holds one weight per channel).
    method : str
        One of :data:`METHODS`.
    per_unit : bool
        ``average`` only: one step per unit (per output channel of a convolution),
        ``α_i = 1 / (1 − min(0, a_ii))``, instead of one step for all.

    Returns
    -------
    float, or ndarray of shape (n,) (a convolution: (C,)) when ``per_unit``
        ``average``/``anderson``: ``α* = 1 / (1 − min(0, a_min))`` (1 when every
        ``a_ii ≥ 0``); ``picard``: 1; ``forward_backward``, ``peaceman_rachford``,
        ``douglas_rachford``: ``1 / (1 − a_min)`` when ``a_min < 1`` (else 1), the largest
        step on which ``(1 − α) + α a_ii ≥ 0`` for every row.

    Notes
    -----
    Per-unit steps, ``x_i ← x_i + α_i (σ(Ax + w)_i − x_i)``: row ``i`` of the Jacobian
    ``(I − D_α) + D_α D A`` has ℓ∞ mass ``1 − α_i (1 − d_i μ_i)`` while
    ``α_i ≤ 1 / (1 − min(0, a_ii))``, with ``μ_i = a_ii + Σ_{j≠i} |a_ij|`` the row's own
    log-norm term; the largest such ``α_i`` gives the factor
    ``max_i 1 − α_i (1 − max(0, μ_i))`` (:func:`contraction_factor`); when ``μ∞ ≤ 1`` it is
    never above the single step's ``1 − α* (1 − max(0, μ∞))``, because ``α_i ≥ α*`` and
    ``μ_i ≤ μ∞``. Rows whose self-loops are less negative than the most negative one take
    longer steps.
    """
    _check_method(method)
    conv = isinstance(A, Conv2d)
    diagonal = A.diagonal() if conv else np.diagonal(as_square_matrix(A)).astype(np.float64)
    if per_unit:
        if method != "average":
            raise ValueError(f"per-unit steps are derived for method='average' only, got method={method!r}")
        return 1.0 / (1.0 - np.minimum(0.0, diagonal))
    return optimal_alpha_from_diagonal(float(diagonal.min()), method)


def optimal_alpha_from_diagonal(a_min: float, method: str = "average") -> float:
    """:func:`optimal_alpha` from the smallest diagonal entry ``a_min`` of ``A`` (the only
    entry it depends on), for callers that know it already."""
    if method == "picard":
        return 1.0
    if method in ("average", "anderson"):
        return 1.0 / (1.0 - min(0.0, a_min))
    return 1.0 / (1.0 - a_min) if a_min < 1.0 else 1.0


def resolvent_matrix(A, alpha: float) -> np.ndarray:
    """``M = (1 + α) I − α A``, whose inverse is the resolvent ``(I + α(I − A))⁻¹``."""
    A = as_square_matrix(A)
    n = A.shape[0]
    return (1.0 + alpha) * np.eye(n) - alpha * A


def _reflected_resolvent(S: np.ndarray, alpha: float) -> np.ndarray:
    """``2 M⁻¹ − I`` for the (scaled) matrix ``S``."""
    M = resolvent_matrix(S, alpha)
    return 2.0 * np.linalg.inv(M) - np.eye(S.shape[0])


def contraction_factor(A, alpha=None, method: str = "average", eta=None) -> float:
    """Exact worst-case ``‖·‖_{∞,η}`` Lipschitz constant of one step of ``method``.

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution: every quantity from its kernel, per output channel
        (``eta`` then holds one weight per channel).
    alpha : float or array_like, optional
        Step size (default :func:`optimal_alpha` of ``method``; ignored for ``picard``); for
        ``average``, also one positive step per unit, shape (n,) (a convolution: one per
        output channel, (C,), or one per unit, (C·H·W,)), as :func:`optimal_alpha` with
        ``per_unit=True`` gives.
    method : str
        One of :data:`METHODS` (``anderson`` reports the factor of its ``average`` step).
    eta : array_like, shape (n,), optional
        Weights of the norm (default all ones).

    Returns
    -------
    float
        ``sup_D ‖J(D)‖_{∞,η}`` over ``D = diag(d)``, ``d ∈ [0, 1]^n``; the iteration contracts
        when it is < 1. For ``peaceman_rachford``/``douglas_rachford`` the norm is on the
        splitting variable ``u``; the equilibrium is ``x = prox(u)``.

    Notes
    -----
    Row ``i`` of ``(1 − α) I + α D S`` has ℓ1 mass ``|1 − α + α d_i s_ii| + α d_i Σ_{j≠i}|s_ij|``,
    convex in ``d_i``, hence maximal at ``d_i ∈ {0, 1}`` (``S = diag(η)⁻¹ A diag(η)``); with
    per-unit steps, row ``i`` has its own ``α_i`` in the same expression.
    Forward-backward's Jacobian is ``D((1 − α) I + α S)``; Peaceman–Rachford's is
    ``(2M⁻¹ − I)(2D − I)`` whose sup is ``‖2M⁻¹ − I‖``; Douglas–Rachford averages it with I.
    """
    _check_method(method)
    conv = isinstance(A, Conv2d)
    if not conv:
        A = as_square_matrix(A).astype(np.float64)
        eta = as_weights(eta, A.shape[0])
    if method == "picard" or alpha is None:
        alpha = optimal_alpha(A, method)
    per_unit = np.ndim(alpha) == 1
    if per_unit:
        alpha = _unit_steps(alpha, method, (A.out_channels, A.n) if conv else (A.shape[0],))
    else:
        alpha = as_finite_scalar(alpha, "alpha", low=0.0, strict=True)
    if conv:  # the rows of a convolution, per output channel (contraction/_conv.py)
        diag, off = A.row_data(eta)
        if per_unit and alpha.size == A.n:  # one step per unit: each channel's rows per pixel
            diag, off = np.repeat(diag, A.pixels), np.repeat(off, A.pixels)
        if method in ("peaceman_rachford", "douglas_rachford"):
            if A.padding == "circular":  # per frequency (contraction/_conv_spectrum.py)
                return splitting_factor(A, alpha, method, None if eta is None else np.asarray(eta, dtype=np.float64))
            A, eta = _conv_dense(A, eta, method)
    else:
        S = _scale_inf(A, eta)
        diag = np.diagonal(S)
        off = np.abs(S).sum(axis=1) - np.abs(diag)
    if method in ("picard", "average", "anderson"):
        rows = np.maximum(abs(1.0 - alpha), np.abs(1.0 - alpha + alpha * diag) + alpha * off)
        return float(rows.max())
    if method == "forward_backward":
        return float((np.abs(1.0 - alpha + alpha * diag) + alpha * off).max())
    K_norm = float(np.abs(_reflected_resolvent(_scale_inf(A, eta), alpha)).sum(axis=1).max())
    if method == "peaceman_rachford":
        return K_norm
    return 0.5 * (1.0 + K_norm)


#: Power-iteration steps of :func:`local_rate` by default.
LOCAL_RATE_ITERATIONS = 200


def local_rate(A, slopes, alpha=None, iterations: int = LOCAL_RATE_ITERATIONS, seed: int = 0, product=None):
    """Rate at which the averaged iteration converges near an equilibrium, per sample.

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution is applied through its kernel.
    slopes : array_like, shape (n,) or (batch, n)
        ``d = σ'(z*)`` at the equilibrium, ``z* = A x* + w``: values in [0, 1] (the slopes of a
        monotone 1-Lipschitz activation; for ReLU, 1 where ``z*_i > 0`` and 0 elsewhere).
    alpha : float or array_like, optional
        The step: default :func:`optimal_alpha`; also one step per unit, shape (n,) (a
        convolution: (C,) or (C·H·W,)), as ``optimal_alpha(A, per_unit=True)`` gives.
    iterations : int
        Power-iteration steps (at least 2); the rate is measured over the second half.
    seed : int
        Seed of the random start.
    product : callable, optional
        ``V ↦ V Aᵀ`` on float64 rows, ``(batch, n) → (batch, n)``: a faster implementation of
        the same operator (default: the matrix product, or :meth:`Conv2d.apply`).

    Returns
    -------
    float, or ndarray of shape (batch,) for 2-D ``slopes``
        An estimate of the spectral radius of the step's Jacobian at the equilibrium,
        ``J = I − diag(α) + diag(α) diag(d) A``, on the units whose slope is not 0 (0 when
        there are none).

    Notes
    -----
    Near the equilibrium the error of ``x ← x + α (σ(Ax + w) − x)`` obeys ``e_{k+1} ≈ J e_k``
    (exactly, for ReLU, once every pre-activation has its equilibrium sign). A unit with slope 0
    feeds nothing back: its row of ``J`` is ``(1 − α_i) e_i``, so its error decays by
    ``|1 − α_i|`` on its own, and ``J`` is block triangular with the units of nonzero slope as
    the other block, ``J_AA``. The rate returned is ``ρ(J_AA)``, the coupled part; ``ρ(J)``
    is the larger of it and ``max |1 − α_i|`` over the units with slope 0. A ReLU solve
    started at 0 sees the latter only on units that turned on along the way (a unit never
    active stays exactly 0), so ``ρ(J_AA)`` is the rate at which such a solve's residual
    finally shrinks. Both are at most ``‖J‖∞ ≤ contraction_factor(A, alpha)``, the bound over
    every ``d ∈ [0, 1]^n``.

    The estimate is the geometric mean of ``‖J v_{k+1}‖∞ / ‖J v_k‖∞`` over the second half of
    the power iteration from a random ``v_0`` on the units of nonzero slope (``J`` keeps
    it there). Every such ratio is at most ``‖J‖∞``, so the estimate never exceeds the bound;
    it tends to ``ρ(J_AA)`` as ``iterations`` grows (also for dominant eigenvalues ``±ρ`` or
    complex pairs, whose norms oscillate around ``ρ^k``), at a speed set by the gap to the
    next eigenvalue's modulus. A sample whose iterates vanish (``J_AA`` nilpotent) has rate 0.
    """
    conv = isinstance(A, Conv2d)
    if conv:
        A._require_square("local_rate")
        n = A.n
    else:
        A = as_square_matrix(A).astype(np.float64)
        n = A.shape[0]
    try:
        d = np.asarray(slopes, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"slopes must be an array of activation slopes in [0, 1], got {slopes!r}") from None
    single = d.ndim == 1
    d = np.atleast_2d(d)
    if d.ndim != 2 or d.shape[1] != n:
        raise ValueError(f"slopes must have shape ({n},) or (batch, {n}) for this operator (n = {n}), "
                         f"got {np.shape(slopes)}")
    if not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(d > 1):
        raise ValueError("slopes must be finite and in [0, 1] (the slopes of a monotone 1-Lipschitz activation)")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 2:
        raise ValueError(f"iterations must be an integer >= 2, got {iterations!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if alpha is None:
        alpha = optimal_alpha(A)
    if np.ndim(alpha) == 1:
        alpha = _unit_steps(alpha, "average", (A.out_channels, n) if conv else (n,))
        if conv and alpha.size == A.out_channels:
            alpha = np.repeat(alpha, A.pixels)
    else:
        alpha = as_finite_scalar(alpha, "alpha", low=0.0, strict=True)
    if product is None:
        product = A.apply if conv else (lambda V: V @ A.T)
    elif not callable(product):
        raise ValueError(f"product must be a callable V -> V A^T, got {product!r}")
    V = np.random.default_rng(seed).uniform(-1.0, 1.0, size=d.shape) * (d > 0)
    V /= np.maximum(np.abs(V).max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    log_growth = np.zeros(len(d))
    vanished = np.zeros(len(d), dtype=bool)
    start = iterations - iterations // 2
    for k in range(iterations):
        V = V + alpha * (d * product(V) - V)
        size = np.abs(V).max(axis=1)
        vanished |= size == 0
        size[size == 0] = 1.0
        if k >= start:
            log_growth += np.log(size)
        V /= size[:, None]
    rate = np.exp(log_growth / (iterations - start))
    rate[vanished] = 0.0
    return float(rate[0]) if single else rate


def _unit_steps(alpha, method: str, sizes: tuple) -> np.ndarray:
    """``alpha`` as per-unit steps (float64), checked: ``average`` only, one of ``sizes``
    entries, finite and positive."""
    if method != "average":
        raise ValueError(f"per-unit steps (an array alpha) are derived for method='average' only, got method={method!r}")
    try:
        steps = np.asarray(alpha, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number or an array of per-unit steps, got {alpha!r}") from None
    if steps.size not in sizes:
        raise ValueError(f"alpha must hold one step per unit ({' or '.join(map(str, sizes))} entries), "
                         f"got {steps.size}")
    if not (np.isfinite(steps).all() and (steps > 0).all()):
        raise ValueError("alpha must hold finite positive per-unit steps")
    return steps


#: Largest convolution (n = C·H·W) whose splitting factors are computed from its dense matrix.
CONV_DENSE_LIMIT = 4096


def _conv_dense(op: Conv2d, eta, method: str):
    """``(matrix, weights per pixel)`` of a convolution, for the splittings' factors (their
    reflected resolvent is not a row quantity of the kernel)."""
    if op.n > CONV_DENSE_LIMIT:
        raise ValueError(f"contraction_factor of {method} for {op!r} needs its {op.n}x{op.n} resolvent; "
                         f"computed for n <= {CONV_DENSE_LIMIT} only with zero padding (circular padding: any "
                         "size, per frequency; the averaged and forward-backward factors have no such limit)")
    w = None if eta is None else np.repeat(np.asarray(eta, dtype=np.float64), op.pixels)
    return op.to_dense(), w


def iteration_bound(factor: float, initial_residual: float, tol: float) -> float:
    """Iterations ``k`` after which ``factor^k · r(x0) ≤ tol`` (``inf`` when ``factor ≥ 1``).

    Notes
    -----
    For the averaged iteration ``r(x_k) ≤ ρ^k r(x0)`` in the norm the factor is measured
    in, since ``x_{k+1} − x_k = α (T(x_k) − x_k)`` and the step map is ρ-Lipschitz.
    """
    factor = as_finite_scalar(factor, "factor", low=0.0)
    r0 = as_finite_scalar(initial_residual, "initial_residual", low=0.0)
    tol = as_finite_scalar(tol, "tol", low=0.0, strict=True)
    if r0 <= tol:
        return 0
    if factor == 0.0:
        return 1
    if factor >= 1.0:
        return math.inf
    return int(math.ceil(math.log(tol / r0) / math.log(factor)))


def error_bound(A, residual, eta=None):
    """A-posteriori bound ``‖x − x*‖_{∞,η} ≤ r_η(x) / (1 − max(0, μ_{∞,η}(A)))``.

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution: every quantity from its kernel, per output channel
        (``eta`` then holds one weight per channel).
    residual : float or array_like
        Fixed-point residual(s) ``‖σ(Ax + w) − x‖_{∞,η}``.
    eta : array_like, optional

    Returns
    -------
    float or ndarray
        The bound (``inf`` where ``μ_{∞,η}(A) ≥ 1``: no certificate).

    Notes
    -----
    With ``e = x* − x`` and ``r = T(x) − x``: ``e = D A e + r`` row-wise; at the row where
    ``|e_i|`` is largest, ``|e_i| (1 − d_i (a_ii + Σ_{j≠i}|a_ij|)) ≤ |r_i|``.
    """
    mu = mu_inf(A, eta)
    r = np.asarray(residual, dtype=np.float64)
    if np.any(r < 0) or not np.all(np.isfinite(r)):
        raise ValueError("residual must be finite and >= 0")
    if mu >= 1.0:
        out = np.full_like(r, np.inf)
    else:
        out = r / (1.0 - max(0.0, mu))
    return float(out) if out.ndim == 0 else out
