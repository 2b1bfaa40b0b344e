"""The fixed point and its adjoint as PyTorch custom operators (``torch.library.custom_op``).

``nemon::fixed_point(A, W, config) -> (X, Z, error_bound)`` solves ``x = σ(A x + w)`` for every
row ``w`` of ``W`` with :func:`solvers.solve` (CPU tensors: the numba engine on ``numpy`` views
of the tensors, no copies) or the CUDA engine in place (CUDA tensors: :mod:`._device`).
``Z = A x + w`` at the returned ``x`` (what the backward pass needs) and the a-posteriori
error bound of each sample come with it; neither is differentiable.
``nemon::fixed_point_adjoint(A, Z, G, config) -> V`` solves ``λ = G + (λ ⊙ σ'(Z)) A`` and
returns ``V = λ ⊙ σ'(Z)``. The autograd formula of ``fixed_point`` (DESIGN.md section 6) is

    ∂L/∂W = V,    ∂L/∂A = Vᵀ X (a matrix)  or  Σ V[c, i, j] x[c', i + di − p, j + dj − p] (a kernel),

written with torch operations and the adjoint operator, so ``torch.compile`` traces both passes
(each operator has a fake implementation for shapes). Double backward is not supported.

On the CPU, a dense layer's averaged solves with ``μ∞(A) < 1`` skip the front door
(:mod:`._fast`: the engine's block solver in one compiled call, ``Z`` its last product, ``V``
formed inside); every other case, and any failed solve, goes through :func:`solvers.solve` and
:func:`solvers.solve_adjoint`, whose results the failure reports quote.

The operators take the solve's options as one string (``config``, a :class:`SolveConfig` as JSON):
the dispatcher passes only tensors and scalars, and a string is a constant to the compiler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import warnings

import numpy as np
import torch
import torch.nn.functional as F

import solvers
from contraction import PADDINGS, Conv2d
from solvers.training import SolverConfig

from . import _fast

__all__ = ["SolveConfig", "NoConvergenceWarning", "fixed_point", "fixed_point_adjoint", "equilibrium", "solve",
           "report"]

#: What a layer does when a solve fails (a sample out of iterations, diverged or not finite).
ON_FAILURE = ("warn", "raise", "ignore")


class NoConvergenceWarning(RuntimeWarning):
    """A forward or adjoint solve failed for some samples (``on_failure="warn"``); the message
    is :class:`solvers.NoConvergence`'s: the status, how many samples, and what to do."""


@dataclasses.dataclass(frozen=True)
class SolveConfig:
    """One layer's solves: ``solver`` (:class:`solvers.training.SolverConfig`: the methods,
    tolerances, iteration limit and the engine for CPU tensors; CUDA tensors always take the CUDA
    engine), the activation, what a failed solve does (:data:`ON_FAILURE`), whether the forward
    solve checks its guarantee first, and the operator: ``image`` ``None`` for a matrix ``A``,
    else the ``(H, W)`` of the state's images, on which ``A`` is a :class:`contraction.Conv2d`
    kernel with ``padding``."""

    solver: SolverConfig = SolverConfig()
    activation: str = "relu"
    slope: float = 0.01
    on_failure: str = "warn"
    check: bool = True
    image: tuple | None = None
    padding: str = "circular"

    def __post_init__(self):
        if not isinstance(self.solver, SolverConfig):
            raise ValueError(f"solver must be a solvers.training.SolverConfig, got {type(self.solver).__name__}")
        for name, allowed in (("on_failure", ON_FAILURE), ("padding", PADDINGS)):
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise TypeError(f"unknown {name} {getattr(self, name)!r}; choose from {allowed}")
        if not isinstance(self.check, bool):
            raise ValueError(f"check must be True or False, got {self.check!r}")
        self.act  # validates the activation and its slope
        self.key  # computed once, here: a compiled forward pass then only reads it

    @functools.cached_property
    def key(self) -> str:
        """The config as the operators take it."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @functools.cached_property
    def act(self) -> solvers.Activation:
        return solvers.get_activation((self.activation, self.slope))

    def host_operator(self, A: np.ndarray):
        """``A`` as :func:`solvers.solve` takes it: the matrix, or the convolution of the kernel."""
        return A if self.image is None else Conv2d(A, self.image, self.padding)

    def product(self, A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``A x`` for every row of ``X`` (batch, n): ``X Aᵀ``, or the convolution of ``A`` over
        the images of the rows (cross-correlation, stride 1, "same", the config's padding)."""
        if self.image is None:
            return X @ A.t()
        images = X.reshape(X.shape[0], A.shape[1], *self.image)
        return correlate(images, A, self.padding).reshape(X.shape[0], -1)

    def weight_gradient(self, A: torch.Tensor, V: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``∂/∂A Σ ⟨V, A x⟩`` over the rows of ``V`` and ``X`` (the adjoint of :meth:`product`)."""
        if self.image is None:
            return V.t() @ X
        images = X.reshape(X.shape[0], A.shape[1], *self.image)
        return kernel_gradient(images, A.shape, V.reshape(V.shape[0], A.shape[0], *self.image), self.padding)


@functools.lru_cache(maxsize=64)
def config_of(key: str) -> SolveConfig:
    """The :class:`SolveConfig` of an operator's ``config`` string (:attr:`SolveConfig.key`)."""
    fields = json.loads(key)
    if fields["image"] is not None:
        fields["image"] = tuple(fields["image"])
    return SolveConfig(**{**fields, "solver": SolverConfig(**fields["solver"])})


def correlate(x: torch.Tensor, K: torch.Tensor, padding: str, stride: int = 1) -> torch.Tensor:
    """``K ⋆ x`` as :class:`contraction.Conv2d` defines it: "same" cross-correlation of images
    ``x`` (batch, C_in, H, W) with ``K`` (C_out, C_in, k, k), circular or zero padding, keeping
    every ``stride``-th row and column."""
    p = K.shape[-1] // 2
    if padding == "circular":
        return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), K, stride=stride)
    return F.conv2d(x, K, stride=stride, padding=p)


def kernel_gradient(x: torch.Tensor, shape, v: torch.Tensor, padding: str) -> torch.Tensor:
    """``∂/∂K Σ ⟨v, K ⋆ x⟩`` for :func:`correlate` at stride 1 (a kernel of ``shape``)."""
    p = shape[-1] // 2
    if padding == "circular":
        return torch.nn.grad.conv2d_weight(F.pad(x, (p, p, p, p), mode="circular"), shape, v)
    return torch.nn.grad.conv2d_weight(x, shape, v, padding=p)


def report(result, what: str, on_failure: str) -> None:
    """A failed ``result`` (forward or adjoint) as ``on_failure`` asks: raise
    :class:`solvers.NoConvergence`, warn :class:`NoConvergenceWarning` with its message, or
    nothing."""
    if result.success or on_failure == "ignore":
        return
    error = solvers.NoConvergence(result)
    if on_failure == "raise":
        raise error
    warnings.warn(f"{what}: {error}", NoConvergenceWarning, stacklevel=2)


@contextlib.contextmanager
def _torch_threads_kept():
    """Keep torch's thread count across a call of the numba engine: numba's OpenMP threading
    layer sets the OpenMP runtime's thread count when it runs a parallel region (the compiled
    convolutions do), and torch reads its own count from that runtime (``torch.get_num_threads``);
    a model run with ``torch.set_num_threads(1)`` would otherwise find its convolutions on two
    threads after the first solve."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _host(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a numpy array: a view when it is contiguous (the engines copy what is not)."""
    return t.detach().numpy()


def _device_path(t: torch.Tensor, cfg: SolveConfig) -> bool:
    return t.is_cuda or cfg.solver.engine == "cuda"


# -- the forward solve ---------------------------------------------------------------------------


def solve(A: torch.Tensor, W: torch.Tensor, cfg: SolveConfig):
    """``(X, result)``: the equilibria of the rows of ``W`` as a tensor and the solve's
    :class:`solvers.FixedPointResult` (from the CUDA engine for CUDA tensors or ``engine="cuda"``)."""
    if _device_path(W, cfg):
        from . import _device

        return _device.solve(A, W, cfg)
    with _torch_threads_kept():
        s = cfg.solver
        result = solvers.solve(cfg.host_operator(_host(A)), _host(W), method=s.method, alpha=s.step(s.method),
                               atol=s.atol, max_iter=s.max_iter, activation=cfg.act, engine=s.engine, check=cfg.check)
    return torch.from_numpy(result.x), result


@torch.library.custom_op("nemon::fixed_point", mutates_args=())
def fixed_point(A: torch.Tensor, W: torch.Tensor, config: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(X, Z, error_bound)``: the equilibria of ``x = σ(A x + w)`` for the rows of ``W``, their
    pre-activations ``Z = A x + w`` and the bound ``‖x − x*‖∞ ≤ r / (1 − max(0, μ∞(A)))``."""
    cfg = config_of(config)
    fast = None if _device_path(W, cfg) else _fast_forward(A, W, cfg)
    if fast is not None:
        return fast
    X, result = solve(A, W, cfg)
    report(result, "forward solve", cfg.on_failure)
    bound = torch.as_tensor(result.error_bound, dtype=torch.float64, device=W.device)
    return X, cfg.product(A, X) + W, bound


def _fast_forward(A: torch.Tensor, W: torch.Tensor, cfg: SolveConfig):
    """``fixed_point``'s outputs from :mod:`._fast` (a dense matrix, the averaged iteration,
    ``μ∞(A) < 1``), or ``None``: the front door's case."""
    s = cfg.solver
    Wh = _host(W)
    plan = _fast.applies(cfg, s.method, s.atol, _host(A), Wh.dtype) if Wh.flags.c_contiguous else None
    if plan is None:
        return None
    X, Z = torch.empty_like(W), torch.empty_like(W)
    with _torch_threads_kept():
        bound = _fast.forward(plan, Wh, cfg.act, s.atol, s.max_iter, X.numpy(), Z.numpy())
    return None if bound is None else (X, Z, torch.from_numpy(bound))


@fixed_point.register_fake
def _(A, W, config):
    return torch.empty_like(W), torch.empty_like(W), W.new_empty(W.shape[0], dtype=torch.float64)


# -- the adjoint solve ---------------------------------------------------------------------------


@torch.library.custom_op("nemon::fixed_point_adjoint", mutates_args=())
def fixed_point_adjoint(A: torch.Tensor, Z: torch.Tensor, G: torch.Tensor, config: str) -> torch.Tensor:
    """``V = λ ⊙ σ'(Z)`` where ``λ = G + (λ ⊙ σ'(Z)) A`` (row form): ``∂L/∂W`` of the
    equilibrium of ``W`` at pre-activations ``Z``, from ``G = ∂L/∂X``."""
    cfg = config_of(config)
    if _device_path(G, cfg):
        from . import _device

        V, result = _device.adjoint(A, Z, G, cfg)
    else:
        Zh, Gh, s = _host(Z), _host(G), cfg.solver
        contiguous = Zh.flags.c_contiguous and Gh.flags.c_contiguous and Zh.dtype == Gh.dtype
        plan = _fast.applies(cfg, s.adjoint_method, s.adjoint_atol, _host(A), Gh.dtype) if contiguous else None
        if plan is not None:
            V = torch.empty_like(G)
            with _torch_threads_kept():
                if _fast.adjoint(plan, Zh, Gh, cfg.act, s.adjoint_atol, s.max_iter, V.numpy()):
                    return V
        with _torch_threads_kept():
            lam, result = solvers.solve_adjoint(cfg.host_operator(_host(A)), Zh, Gh, method=s.adjoint_method,
                                                alpha=s.step(s.adjoint_method), atol=s.adjoint_atol, max_iter=s.max_iter, activation=cfg.act,
                                                engine=s.engine, check=False)  # the forward solve checked A
        V = torch.from_numpy(lam * cfg.act.derivative(Zh))
    report(result, "adjoint solve", cfg.on_failure)
    return V


@fixed_point_adjoint.register_fake
def _(A, Z, G, config):
    return torch.empty_like(G)


# -- autograd ------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    A, _, config = inputs
    X, Z, bound = output
    ctx.save_for_backward(A, X, Z)
    ctx.config = config
    ctx.mark_non_differentiable(Z, bound)


def _backward(ctx, gX, gZ, gbound):
    A, X, Z = ctx.saved_tensors
    V = fixed_point_adjoint(A, Z, gX.contiguous(), ctx.config)
    gA = config_of(ctx.config).weight_gradient(A, V, X) if ctx.needs_input_grad[0] else None
    return gA, V, None


fixed_point.register_autograd(_backward, setup_context=_setup_context)


def equilibrium(A: torch.Tensor, W: torch.Tensor, config: SolveConfig) -> torch.Tensor:
    """The equilibria ``X`` (differentiable in ``A`` and ``W``) of the rows of ``W``."""
    return fixed_point(A, W, config.key)[0]
