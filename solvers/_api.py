"""The front door: ``solve`` and ``solve_adjoint`` validate, check guarantees, describe the
solve once (:class:`._engines.task.Task`), dispatch to an engine and build the result. No
iteration happens here."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib
import numbers
import warnings

import numpy as np

import contraction
from contraction import Conv2d
from contraction._validation import as_finite_scalar, as_square_matrix

from contraction import _conv_spectrum
from ._activations import get_activation
from ._engines.task import Task
from ._engines.threads import blas_threads
from ._result import AdjointResult, FixedPointResult, NoConvergence, NotGuaranteedWarning, Status, describe_alpha

__all__ = ["solve", "solve_adjoint", "unit_steps", "anderson_step", "METHODS", "ADJOINT_METHODS", "ENGINES",
           "ANDERSON_MEMORY"]

METHODS = contraction.METHODS
#: The adjoint equation is linear: the averaged iteration (and its accelerations) contract in
#: ℓ1 with the forward factor; ``direct`` is a batched dense solve (exact, O(batch n³)).
ADJOINT_METHODS = ("picard", "average", "anderson", "direct")
ENGINES = ("numpy", "numba", "cuda")
_ENGINE_MODULES = {"numpy": "._engines.numpy_engine", "numba": "._engines.numba_engine",
                   "cuda": "._engines.cuda_engine"}
_SPLITTINGS = ("peaceman_rachford", "douglas_rachford")
#: Anderson's default memory (:func:`solve`'s and :func:`solve_adjoint`'s ``memory``).
ANDERSON_MEMORY = 5
_F32_EPS = float(np.finfo(np.float32).eps)
_SUCCESS = int(Status.SUCCESS)
#: Engine modules imported so far (the CUDA one is imported only when asked for).
_loaded: dict = {}


def _engine(name: str):
    if not isinstance(name, str) or name not in ENGINES:
        raise TypeError(f"unknown engine {name!r}; choose from {ENGINES}")
    module = _loaded.get(name)
    if module is None:
        module = _loaded[name] = importlib.import_module(_ENGINE_MODULES[name], __package__)
    if name == "cuda":
        module.require_gpu()
    return module


def _check_int(x, name: str, low: int) -> int:
    if type(x) is not int and (isinstance(x, bool) or not isinstance(x, (numbers.Integral, np.integer))):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    if x < low:
        raise ValueError(f"{name} must be >= {low}, got {x}")
    return int(x)


def _as_batch(W, n: int, name: str, dtype=None) -> tuple[np.ndarray, bool]:
    """Return ``(W as (batch, n), was_1d)``; raise ``ValueError`` naming ``name``."""
    try:
        arr = np.asarray(W)
    except Exception as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.shape[-1] != n:
        raise ValueError(f"{name} must have shape ({n},) or (batch, {n}) to match A, got {arr.shape}")
    if arr.ndim == 2 and arr.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got shape {arr.shape}")
    fast = arr.dtype.char in "fd" and arr.flags.c_contiguous
    if not (contraction.all_finite(arr.reshape(-1)) if fast else np.isfinite(arr).all()):
        bad = ~np.isfinite(arr)
        raise ValueError(f"{name} must be finite; non-finite entries at {np.argwhere(bad)[:5].tolist()}")
    was_1d = arr.ndim == 1
    arr = np.atleast_2d(arr)
    return np.ascontiguousarray(arr, dtype=dtype), was_1d


def _start(x, name: str, like: np.ndarray, like_1d: bool, like_name: str, dtype) -> np.ndarray:
    """``x`` as a batch shaped like the right-hand side ``like`` (zeros when ``x`` is None)."""
    if x is None:
        return np.zeros_like(like)
    xb, x_1d = _as_batch(x, like.shape[1], name, dtype)
    if xb.shape != like.shape or x_1d != like_1d:
        shape = like.shape[1:] if like_1d else like.shape
        raise ValueError(f"{name} must have the shape of {like_name} {shape}, got {np.shape(x)}")
    return xb


@dataclasses.dataclass(frozen=True)
class _Facts:
    """What a solve knows about a dense ``A``, each computed once. :class:`_ConvFacts` answers
    the same questions for a convolution."""

    A: np.ndarray  # square, float, finite (as given: float32 stays float32)
    a_min: float  # min a_ii
    mu: float  # μ∞(A)

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def float32(self) -> bool:
        """Whether ``A`` allows a float32 solve (with a float32 right-hand side)."""
        return self.A.dtype == np.float32

    @functools.cached_property
    def A64(self) -> np.ndarray:
        """``A`` in float64, converted once (the guarantee check, Anderson's factor, the
        resolvent and the error bound all read it)."""
        return self.A if self.A.dtype == np.float64 else self.A.astype(np.float64)

    def operator(self, dtype) -> np.ndarray:
        """``A`` as the engines take it (``Task.op``)."""
        return np.ascontiguousarray(self.A, dtype=dtype)

    def resolvent(self, alpha: float, dtype) -> np.ndarray:
        """``Task.resolvent`` of a splitting: ``((1 + α) I − α A)⁻ᵀ``."""
        return _resolvent_inverse_T(self.A64, alpha, dtype)

    def factor(self, alpha: float, method: str, eta=None) -> float:
        """The method's worst-case factor in ``‖·‖∞,η``."""
        return contraction.contraction_factor(self.A64, alpha, method, eta=eta)

    def mu_2(self) -> float:
        return contraction.mu_2(self.A64)

    def weights(self) -> tuple[np.ndarray, float]:
        """``(η, μ∞,η(A))`` at the optimal weights."""
        return contraction.optimal_weights(self.A64)

    def abscissa(self) -> float:
        """``α(⌈A⌉)``: below 1 iff some weights make ``μ∞,η(A) < 1``."""
        return contraction.spectral_abscissa(contraction.metzler_majorant(self.A64))

    def norm_inf(self) -> float:
        return contraction.induced_norm(self.A64, np.inf)

    def matrix(self) -> np.ndarray:
        """``A`` as a float64 matrix (the direct adjoint solve)."""
        return self.A64


#: Largest convolution (``n = C·H·W``) whose dense matrix the direct adjoint solve forms.
DIRECT_CONV_LIMIT = 4096


@dataclasses.dataclass(frozen=True)
class _ConvFacts:
    """What a solve knows about a square :class:`contraction.Conv2d`, from its kernel: every
    quantity per output channel or per frequency (:mod:`contraction._conv_spectrum`), never the dense
    matrix (but for the direct adjoint solve of a small image)."""

    A: Conv2d
    a_min: float
    mu: float

    @property
    def n(self) -> int:
        return self.A.n

    @property
    def float32(self) -> bool:
        """A convolution takes the dtype of its right-hand side."""
        return True

    def operator(self, dtype) -> Conv2d:
        return self.A

    def resolvent(self, alpha: float, dtype) -> np.ndarray:
        """``Task.resolvent`` of a splitting: ``M̂(f)⁻¹`` per frequency (circular padding:
        :func:`_check_splitting` refused zeros)."""
        return _conv_spectrum.inverse_symbol(self.A, alpha)

    def factor(self, alpha: float, method: str, eta=None) -> float:
        if method in _SPLITTINGS:
            return _conv_spectrum.splitting_factor(self.A, alpha, method, eta)
        return contraction.contraction_factor(self.A, alpha, method, eta=eta)

    def mu_2(self) -> float:
        # Only the splittings ask, and they run on circular padding only.
        return _conv_spectrum.conv_mu_2(self.A) if self.A.padding == "circular" else float("inf")

    def weights(self) -> tuple[np.ndarray, float]:
        """The best weights constant on each channel (exactly optimal for circular padding)."""
        return contraction.optimal_weights(self.A)

    def abscissa(self) -> float:
        """``α`` of the channel majorant: below 1 iff some channel weights make ``μ∞,η(A) < 1``."""
        return contraction.spectral_abscissa(self.A.channel_majorant())

    def norm_inf(self) -> float:
        return self.A.norm_inf()

    def matrix(self) -> np.ndarray:
        if self.n > DIRECT_CONV_LIMIT:
            raise ValueError(f"method='direct' forms the dense {self.n}x{self.n} matrix of {self.A!r}; it does so "
                             f"for n <= {DIRECT_CONV_LIMIT} only: use method='average' or 'anderson'")
        return self.A.to_dense()


def _facts(A) -> _Facts | _ConvFacts:
    """``A`` validated, with ``min a_ii`` and ``μ∞(A)`` from one compiled pass; a non-finite
    ``A`` gets :func:`as_square_matrix`'s error, naming the entries. A convolution's facts come
    from its kernel."""
    if not (type(A) is np.ndarray and A.dtype.kind == "f" and A.ndim == 2 and A.shape[0] == A.shape[1] and A.size):
        if isinstance(A, Conv2d):
            return _conv_facts(A)
        A = as_square_matrix(A)
    A_c = np.ascontiguousarray(A, dtype=None if A.dtype.char in "fd" else np.float64)
    finite, a_min, mu = contraction.matrix_facts(A_c)
    if not finite:
        as_square_matrix(A)  # raises the ValueError that names the non-finite entries
    return _Facts(A_c, float(a_min), float(mu))


def _conv_facts(op: Conv2d) -> _ConvFacts:
    if not op.square:
        raise ValueError(f"A must be a square operator: a convolution needs C_out = C_in, got {op!r}")
    return _ConvFacts(op, float(op.diagonal().min()), contraction.mu_inf(op))


def _check_splitting(facts, method: str) -> None:
    """The splittings need the resolvent, which a convolution has in closed form (per frequency)
    for circular padding only."""
    if method in _SPLITTINGS and isinstance(facts, _ConvFacts) and facts.A.padding != "circular":
        raise ValueError(
            f"method {method!r} needs the resolvent ((1 + alpha) I - alpha A)^-1, which is computed for circular "
            f"padding only, and {facts.A!r} has padding={facts.A.padding!r}: use method='average' or "
            "'anderson', or a convolution with padding='circular'"
        )


#: ``alpha`` asking for one step per unit, ``α_i = 1 / (1 − min(0, a_ii))``.
PER_UNIT = "per_unit"


def unit_steps(A) -> np.ndarray:
    """The steps ``alpha="per_unit"`` takes: ``α_i = 1 / (1 − min(0, a_ii))`` for every unit of
    ``A``, float64, shape (n,). A square :class:`contraction.Conv2d` gives each output channel's
    ``1 / (1 − min(0, K[c,c,p,p]))`` at each of its pixels (its units, row-major)."""
    if isinstance(A, Conv2d):
        return np.repeat(contraction.optimal_alpha(A, per_unit=True), A.pixels)
    return contraction.optimal_alpha(A, per_unit=True)


def anderson_step(A) -> tuple[float, float]:
    """``(α, accept)`` of an Anderson solve of ``A`` with the default step, as :func:`solve`
    takes them: ``α*`` and the safeguard ratio (the averaged iteration's factor at ``α*`` when
    it contracts, else 1). For callers that run the engine's Anderson step themselves (the
    fused training step), so that their iterates are :func:`solve`'s."""
    facts = _facts(A)
    alpha = _alpha(facts, "anderson", None, METHODS)
    return float(alpha), _anderson_accept(facts, "anderson", alpha)


def _alpha(facts: _Facts, method, alpha, methods):
    """The step: a float, or per-unit steps (float64, (n,)) for ``average``."""
    if not isinstance(method, str) or method not in methods:
        raise TypeError(f"unknown method {method!r}; choose from {methods}")
    per_unit = (isinstance(alpha, str) and alpha == PER_UNIT) or np.ndim(alpha) == 1
    if per_unit and method != "average":
        raise ValueError(f"per-unit steps (alpha={PER_UNIT!r} or an array) are for method='average' only, "
                         f"got method={method!r}")
    if isinstance(alpha, str) and not per_unit:
        raise ValueError(f"alpha must be a number, {PER_UNIT!r} or an array of per-unit steps, got {alpha!r}")
    if per_unit:
        if isinstance(alpha, str):
            return unit_steps(facts.A if isinstance(facts, _ConvFacts) else facts.A64)
        try:
            steps = np.asarray(alpha, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"alpha must be a number, {PER_UNIT!r} or an array of per-unit steps, got {alpha!r}") from None
        if steps.shape != (facts.n,):
            raise ValueError(f"alpha must hold one step per unit, shape ({facts.n},), got shape {steps.shape}")
        if not (np.isfinite(steps).all() and (steps > 0).all()):
            raise ValueError("alpha must hold finite positive per-unit steps")
        return steps
    if method == "picard":
        if alpha is not None and alpha != 1.0:
            raise ValueError(f"alpha must be 1 (or None) for picard, got {alpha}; use method='average'")
        return 1.0
    if method == "direct":
        return float("nan")
    if alpha is None:
        return contraction.optimal_alpha_from_diagonal(facts.a_min, method)
    return as_finite_scalar(alpha, "alpha", low=0.0, strict=True)


def _tolerances(atol, rtol, max_iter, memory, dtype, check):
    atol = as_finite_scalar(atol, "atol", low=0.0)
    rtol = as_finite_scalar(rtol, "rtol", low=0.0)
    max_iter = _check_int(max_iter, "max_iter", 0)
    memory = _check_int(memory, "memory", 1)
    if check and dtype == np.float32 and 0.0 < atol + rtol < 4 * _F32_EPS:
        warnings.warn(
            f"atol + rtol = {atol + rtol:.1e} is below float32 resolution ({_F32_EPS:.1e}); "
            "expect MAX_ITER: loosen the tolerance or use float64",
            UserWarning,
            stacklevel=4,
        )
    return atol, rtol, max_iter, memory


def _factor(facts: _Facts, method: str, alpha: float) -> float:
    """The method's worst-case ℓ∞ factor: the closed form of DESIGN.md section 4 from the
    μ∞ already known on the guaranteed step range, :func:`contraction.contraction_factor`
    elsewhere."""
    mu, a_min = facts.mu, facts.a_min
    if np.ndim(alpha):
        return facts.factor(alpha, method)
    if method in ("picard", "average", "anderson") and alpha <= 1.0 / (1.0 - min(0.0, a_min)):
        return 1.0 - alpha * (1.0 - max(0.0, mu))
    if method == "forward_backward" and a_min < 1.0 and alpha <= 1.0 / (1.0 - a_min):
        return 1.0 - alpha * (1.0 - mu)
    return facts.factor(alpha, method)


def _guarantee_message(facts: _Facts, method: str, alpha: float) -> str | None:
    """``None`` when ``method`` with step ``alpha`` provably converges, else why not."""
    base = "average" if method == "anderson" else method
    factor = _factor(facts, base, alpha)
    if factor < 1.0:
        return None
    if base in _SPLITTINGS and facts.mu_2() < 1.0:
        return None  # monotone (l2) guarantee, any alpha > 0
    eta, _ = facts.weights()
    weighted = facts.factor(alpha, base, eta=eta)
    if weighted < 1.0:
        return None
    best = min(factor, weighted)
    msg = (
        f"method {method!r} with {describe_alpha(alpha)} is not guaranteed to converge: its worst-case "
        f"l-inf contraction factor is {best:.4g} >= 1 (margin {1 - best:.3g})"
    )
    abscissa = facts.abscissa()
    if abscissa >= 1.0:
        msg += f"; A is not well-posed in any weighted l-inf norm: alpha(ceil(A)) = {abscissa:.4g} >= 1 (margin {1 - abscissa:.3g})"
    elif base == "picard":
        norm = facts.norm_inf()
        msg += (
            f"; picard needs ||A||_inf < 1 (here {norm:.4g}, margin {1 - norm:.3g}) or every a_ii >= 0 "
            f"(min a_ii = {facts.a_min:.4g}); use method='average' (alpha* = "
            f"{contraction.optimal_alpha_from_diagonal(facts.a_min):.4g})"
        )
    elif np.ndim(alpha):
        msg += "; the guaranteed per-unit steps are alpha_i <= 1/(1 - min(0, a_ii))"
    else:
        msg += f"; the guaranteed step is alpha <= {contraction.optimal_alpha_from_diagonal(facts.a_min, base):.4g}"
    if base in _SPLITTINGS:
        msg += f"; the monotone (l2) guarantee needs mu_2(A) < 1, here {facts.mu_2():.4g}"
    return msg


def _warn_if_not_guaranteed(facts, method, alpha, prefix):
    msg = _guarantee_message(facts, method, alpha)
    if msg:
        # stacklevel 3: the warning points at the caller of solve / solve_adjoint.
        warnings.warn(prefix + msg, NotGuaranteedWarning, stacklevel=3)


#: The splittings' resolvent inverses ``(M⁻¹)ᵀ`` of recent matrices, most recent last:
#: ``(n, dtype, α, hash of A's bytes) -> (copy of A, (M⁻¹)ᵀ)``. Repeated solves with one
#: ``A`` (a trained model's batches, a benchmark) then skip the O(n³) inverse.
_RESOLVENTS: collections.OrderedDict = collections.OrderedDict()
#: Most bytes the cache keeps (its copies of A and the inverses).
RESOLVENT_CACHE_BYTES = 64 << 20


def _resolvent_inverse_T(A64: np.ndarray, alpha: float, dtype) -> np.ndarray:
    """``(M⁻¹)ᵀ`` in ``dtype`` for ``M = (1 + α) I − α A`` (the engines only read it),
    computed once per matrix and step: a cached entry is used only when its copy of ``A``
    equals ``A`` entry for entry, so a matrix changed in place is never served stale."""
    key = (A64.shape[0], np.dtype(dtype).str, float(alpha), hash(A64.tobytes()))
    hit = _RESOLVENTS.get(key)
    if hit is not None and np.array_equal(hit[0], A64):
        _RESOLVENTS.move_to_end(key)
        return hit[1]
    M = contraction.resolvent_matrix(A64, alpha)
    try:
        # One BLAS thread: a multi-threaded inverse leaves OpenBLAS workers spinning against
        # the engine's own threads.
        with blas_threads(1) if A64.shape[0] <= 1000 else contextlib.nullcontext():
            MinvT = np.ascontiguousarray(np.linalg.inv(M).T, dtype=dtype)
    except np.linalg.LinAlgError:
        raise ValueError(f"(1 + alpha) I - alpha A is singular for alpha={alpha}: choose another alpha") from None
    _RESOLVENTS[key] = (A64.copy(), MinvT)
    while len(_RESOLVENTS) > 1 and sum(a.nbytes + m.nbytes for a, m in _RESOLVENTS.values()) > RESOLVENT_CACHE_BYTES:
        _RESOLVENTS.popitem(last=False)
    return MinvT


def _anderson_accept(facts: _Facts, method: str, alpha: float) -> float:
    """Anderson's safeguard ratio: the averaged factor when it contracts, else 1."""
    if method != "anderson":
        return 1.0
    factor = facts.factor(alpha, "average")
    return factor if factor < 1.0 else 1.0


def _overall(codes: np.ndarray) -> Status:
    return Status(int(codes.max())) if codes.size else Status.SUCCESS


def _error_bound(facts: _Facts, residual: np.ndarray) -> np.ndarray:
    """Error bound of each residual from ``μ∞(A)`` (optimal weights when only those certify)."""
    if facts.mu < 1.0:
        return residual / (1.0 - max(0.0, facts.mu))
    eta, mu_eta = facts.weights()
    if mu_eta >= 1.0:
        return np.full_like(residual, np.inf)
    # ‖e‖_∞ ≤ max η ‖e‖_∞,η ≤ max η · r_η / (1 − max(0, μ_η)), and r_η ≤ r / min η.
    return residual * (eta.max() / eta.min()) / (1.0 - max(0.0, mu_eta))


def _task_alpha(alpha):
    """The step as a task and a result hold it: a float, or the per-unit steps (float64)."""
    return alpha if np.ndim(alpha) else float(alpha)


def _prepare(A, rhs, rhs_name, method, alpha, methods, engine, atol, rtol, max_iter, memory, check):
    """What ``solve`` and ``solve_adjoint`` share: ``A``'s facts, the step, the engine, the
    right-hand side as a batch in the solve's dtype and the tolerances, all validated."""
    facts = _facts(A)
    alpha = _alpha(facts, method, alpha, methods)
    _check_splitting(facts, method)
    eng = _engine(engine)
    dtype = np.dtype(np.float32 if facts.float32 and np.asarray(rhs).dtype == np.float32 else np.float64)
    Rb, was_1d = _as_batch(rhs, facts.n, rhs_name, dtype)
    atol, rtol, max_iter, memory = _tolerances(atol, rtol, max_iter, memory, dtype, check)
    return facts, alpha, eng, dtype, Rb, was_1d, atol, rtol, max_iter, memory


def solve(
    A,
    W,
    method: str = "average",
    alpha=None,
    atol: float = 1e-8,
    rtol: float = 0.0,
    max_iter: int = 1000,
    activation="relu",
    x0=None,
    engine: str = "numba",
    record: bool = False,
    *,
    memory: int = ANDERSON_MEMORY,
    raise_on_failure: bool = False,
    check: bool = True,
) -> FixedPointResult:
    """Solve the equilibrium equation ``x = σ(A x + w)`` for one input or a batch.

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        A square convolution (``n = C·H·W``, images flattened row-major) is applied through its
        kernel and never formed densely; the solve takes the dtype of ``W`` (float32 or
        float64).
    W : array_like, shape (n,) or (batch, n)
        Injected inputs ``w = B u + b`` (row-major batch).
    method : {"average", "picard", "forward_backward", "peaceman_rachford",
              "douglas_rachford", "anderson"}
        The splittings need the resolvent: for a convolution, circular padding only.
    alpha : float, "per_unit" or array_like of shape (n,), optional
        Step size; default :func:`contraction.optimal_alpha` of the method. For ``average``
        also one step per unit, ``x_i ← x_i + α_i (σ(Ax + w)_i − x_i)``: ``"per_unit"``
        takes ``α_i = 1 / (1 − min(0, a_ii))`` (for a convolution, per output channel), whose
        guaranteed factor ``max_i 1 − α_i (1 − max(0, μ_i))`` is never above α*'s when
        μ∞(A) ≤ 1 (:func:`contraction.optimal_alpha` with ``per_unit=True``).
    atol, rtol : float
        Stop a sample when ``‖σ(Ax + w) − x‖_∞ ≤ atol + rtol ‖x‖_∞`` (the same rule for
        every method, evaluated on the method's current equilibrium candidate).
    max_iter : int
        Most steps per sample.
    activation : str, (str, float) or Activation
        ``relu``, ``leaky_relu`` (with slope), ``hard_tanh``, ``tanh``, ``softplus``.
    x0 : array_like, optional
        Start (same shape as ``W``; default zeros).
    engine : {"numba", "numpy", "cuda"}
    record : bool
        Keep the residual of every iteration in ``result.history``.
    memory : int
        Anderson memory.
    raise_on_failure : bool
        Raise :class:`NoConvergence` (carrying the result) instead of returning a failure.
    check : bool
        Check the method's convergence guarantee first and warn
        (:class:`NotGuaranteedWarning`) with the violated condition and its margin.

    Returns
    -------
    FixedPointResult

    Notes
    -----
    Converged samples stop being updated. A sample whose residual grows by
    ``1e6`` over its first value is ``DIVERGED``; NaN/Inf iterates are ``NONFINITE``.
    The error bound is ``r / (1 − max(0, μ∞(A)))`` (with optimal weights when only
    ``α(⌈A⌉) < 1``; for a convolution, the best weights constant on each channel).
    A convolution's splittings invert ``(1 + α) I − α A`` per frequency, one ``C × C``
    system each (DESIGN.md section 8b).

    References
    ----------
    S. Jafarpour et al., "Robust Implicit Networks via Non-Euclidean Contractions", NeurIPS 2021.
    """
    act = get_activation(activation)
    facts, alpha, eng, dtype, Wb, was_1d, atol, rtol, max_iter, memory = _prepare(
        A, W, "W", method, alpha, METHODS, engine, atol, rtol, max_iter, memory, check)
    X0 = None if x0 is None else _start(x0, "x0", Wb, was_1d, "W", dtype)  # None: the engine starts at 0
    if check:
        _warn_if_not_guaranteed(facts, method, alpha, "")
    task = Task(
        kind="forward", op=facts.operator(dtype), rhs=Wb, D=None, x0=X0, method=method,
        alpha=_task_alpha(alpha), activation=act, atol=atol, rtol=rtol, max_iter=max_iter, record=bool(record),
        memory=memory, accept=_anderson_accept(facts, method, alpha),
        resolvent=facts.resolvent(alpha, dtype) if method in _SPLITTINGS else None,
    )
    X, iters, res, codes, hist = eng.run(task)
    result = FixedPointResult(
        x=X[0] if was_1d else X,
        converged=codes == _SUCCESS,
        status=_overall(codes),
        iterations=iters,
        residual=res,
        alpha=_task_alpha(alpha),
        method=method,
        engine=engine,
        activation=act.name,
        history=hist,
        error_bound=_error_bound(facts, res),
        sample_status=codes,
    )
    if raise_on_failure and not result.success:
        raise NoConvergence(result)
    return result


def _adjoint_direct(A, D, G, was_1d, engine, record, raise_on_failure):
    """Batched dense solve of ``λ (I − diag(d) A) = g``; singular systems are NONFINITE."""
    n = A.shape[0]
    M = np.eye(n)[None] - D.astype(np.float64)[:, :, None] * A[None]  # I − diag(d_s) A
    codes = np.zeros(G.shape[0], dtype=np.int8)
    try:
        lam = np.linalg.solve(np.swapaxes(M, 1, 2), G.astype(np.float64)[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        lam = np.full(G.shape, np.nan)
    residual = np.abs(G + (lam * D) @ A - lam).sum(axis=1)
    codes[~np.isfinite(residual)] = Status.NONFINITE
    result = AdjointResult(
        converged=codes == _SUCCESS,
        status=_overall(codes),
        iterations=np.zeros(G.shape[0], dtype=np.int64),
        residual=residual,
        alpha=float("nan"),
        method="direct",
        engine=engine,
        history=np.array([residual]) if record else None,
        sample_status=codes,
    )
    if raise_on_failure and not result.success:
        raise NoConvergence(result)
    lam = lam.astype(G.dtype)
    return (lam[0] if was_1d else lam), result


def solve_adjoint(
    A,
    Z,
    G,
    method: str = "average",
    alpha=None,
    atol: float = 1e-8,
    rtol: float = 0.0,
    max_iter: int = 1000,
    activation="relu",
    lam0=None,
    engine: str = "numba",
    record: bool = False,
    *,
    memory: int = ANDERSON_MEMORY,
    raise_on_failure: bool = False,
    check: bool = True,
):
    """Solve the adjoint equation ``λ = G + (λ ⊙ σ'(Z)) A`` (row-batch form).

    With ``z* = A x* + w`` and upstream gradient ``g = ∂L/∂x*``, ``v = λ ⊙ σ'(z*)`` gives
    ``∂L/∂A = vᵀ x*`` (summed over the batch), ``∂L/∂w = v`` and ``∂L/∂u = v B``.

    Parameters
    ----------
    A : array_like, shape (n, n), or contraction.Conv2d
        As in :func:`solve`; ``direct`` forms a convolution's dense matrix (small images only).
    Z : array_like, shape (n,) or (batch, n)
        Pre-activations ``A x* + w`` at the equilibrium.
    G : array_like, same shape as ``Z``
        Upstream gradients.
    method : {"average", "picard", "anderson", "direct"}
        ``direct`` solves ``λ (I − diag(σ'(z)) A) = g`` densely per sample (NumPy/LAPACK
        whatever the engine): exact, for monotone-parametrised networks whose ℓ1 adjoint
        iteration has no guarantee, and as a reference.
    atol, rtol : float
        Stop when ``‖G + (λ ⊙ σ'(Z)) A − λ‖_1 ≤ atol + rtol ‖λ‖_1`` per sample.
    Other parameters as in :func:`solve`.

    Returns
    -------
    lam : ndarray, shape of ``G``
    result : AdjointResult

    Notes
    -----
    The averaged adjoint map has column-form Jacobian ``(1 − α) I + α Aᵀ D``, whose ℓ1 norm
    equals the ℓ∞ norm of ``(1 − α) I + α D A``: it contracts in ``‖·‖_1`` (the dual norm)
    with the same factor and the same ``α*`` as the forward iteration. Per-unit steps
    (``alpha="per_unit"``, ``average``) give ``(I − D_α) + D_α Aᵀ D``, similar through ``D_α`` to
    the transpose of the forward's ``(I − D_α) + D_α D A``: it contracts in ``‖D_α⁻¹ ·‖_1``
    with the forward's per-unit factor.
    """
    act = get_activation(activation)
    facts, alpha, eng, dtype, Gb, was_1d, atol, rtol, max_iter, memory = _prepare(
        A, G, "G", method, alpha, ADJOINT_METHODS, engine, atol, rtol, max_iter, memory, check)
    Zb = _start(Z, "Z", Gb, was_1d, "G", np.float64)
    D = np.ascontiguousarray(act.derivative(Zb), dtype=dtype)
    L0 = None if lam0 is None else _start(lam0, "lam0", Gb, was_1d, "G", dtype)
    if method == "direct":
        return _adjoint_direct(facts.matrix(), D, Gb, was_1d, engine, record, raise_on_failure)
    if check:
        _warn_if_not_guaranteed(facts, method, alpha, "adjoint: ")
    task = Task(
        kind="adjoint", op=facts.operator(dtype), rhs=Gb, D=D, x0=L0, method=method,
        alpha=_task_alpha(alpha), activation=act, atol=atol, rtol=rtol, max_iter=max_iter, record=bool(record),
        memory=memory, accept=_anderson_accept(facts, method, alpha),
    )
    lam, iters, res, codes, hist = eng.run(task)
    result = AdjointResult(
        converged=codes == _SUCCESS,
        status=_overall(codes),
        iterations=iters,
        residual=res,
        alpha=_task_alpha(alpha),
        method=method,
        engine=engine,
        history=hist,
        sample_status=codes,
    )
    if raise_on_failure and not result.success:
        raise NoConvergence(result)
    return (lam[0] if was_1d else lam), result
