"""Implicit layers as ``torch.nn.Module``: a dense one and a convolutional one.

Each owns the parameters ``A``, ``B``, ``b`` of ``x = σ(A x + B u + b)`` and maps an input
batch to the equilibria. ``B u + b`` is an ordinary torch expression; the equilibrium is the
custom operator of :mod:`._ops`, whose backward pass is the adjoint solve. Well-posedness is
kept by projecting ``A`` after every optimiser step (:meth:`project_`,
:func:`project_after_step`), with the constraints of :func:`solvers.training.make_constraint`,
and certified by :meth:`certificate` from the parameters alone.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
import torch

import contraction
import solvers
from solvers.training import SolverConfig, make_constraint

from ._ops import SolveConfig, correlate, equilibrium, solve

__all__ = ["Certificate", "ConvImplicitLayer", "ImplicitLayer", "project_after_step"]

#: The constraints a dense layer trains under (projections, or none), and a convolutional one.
DENSE_CONSTRAINTS = ("mu_inf", "norm_inf", "none")
CONV_CONSTRAINTS = ("mu_inf", "none")
#: Scale of the initial ``A`` (as :class:`solvers.training.ImplicitNetwork` draws it): a small
#: Gaussian, projected onto the constraint.
A_INIT_SCALE = 0.1


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Certificate:
    """What a layer's parameters guarantee, computed from them in float64.

    Attributes
    ----------
    mu_inf : float
        ``μ∞(A)`` (for a convolution, from its kernel). Below 1: a unique equilibrium for every
        input, and the averaged iteration converges from any start.
    alpha : float
        The step ``α*`` of the layer's method (``average``: ``1 / (1 − min(0, min a_ii))``).
    contraction_factor : float
        Worst-case ℓ∞ factor of one step of the method at ``α*`` (``1 − α*(1 − max(0, μ∞))``
        for ``average``); the solve's residual shrinks at least this fast.
    lipschitz, lipschitz_paper : float
        ℓ∞ Lipschitz bound of ``u ↦ x*(u)`` (or ``u ↦ C x*(u) + c`` with a readout):
        ``‖B‖∞ ‖C‖∞ / (1 − μ∞)`` (tight form) and the seed paper's ``/(1 − max(0, μ∞))``;
        ``inf`` when ``μ∞ ≥ 1``.
    method, constraint, gamma
        The layer's forward method and constraint.
    violation : str or None
        ``None`` when ``A`` satisfies the constraint (to rounding), else what is violated.
    """

    mu_inf: float
    alpha: float
    contraction_factor: float
    lipschitz: float
    lipschitz_paper: float
    method: str
    constraint: str
    gamma: float
    violation: str | None

    @property
    def well_posed(self) -> bool:
        """``μ∞(A) < 1``."""
        return self.mu_inf < 1.0

    def __str__(self) -> str:
        return (f"mu_inf(A) = {self.mu_inf:.6g} (constraint {self.constraint}, gamma {self.gamma:g}"
                f"{': ' + self.violation if self.violation else ''}), alpha* = {self.alpha:.4g}, "
                f"contraction factor {self.contraction_factor:.4g} ({self.method}), Lipschitz bound "
                f"{self.lipschitz:.4g} (paper form {self.lipschitz_paper:.4g})")


def _readout_matrix(readout, n: int) -> np.ndarray | None:
    """A readout (``torch.nn.Linear``, a weight tensor or an array, shape (q, n)) as a float64
    matrix."""
    if readout is None:
        return None
    weight = readout.weight if isinstance(readout, torch.nn.Linear) else readout
    C = weight.detach().to("cpu", torch.float64).numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    if C.ndim != 2 or C.shape[1] != n:
        raise ValueError(f"readout must be a torch.nn.Linear or a matrix with {n} columns (the layer's state), "
                         f"got shape {C.shape}")
    return C.astype(np.float64)


class _Implicit(torch.nn.Module):
    """What the dense and the convolutional layers share: the solver options, the constraint,
    the projection, the certificate and the call of the fixed-point operator."""

    CONSTRAINTS: tuple = ()

    def _setup(self, gamma, activation, method, atol, adjoint_atol, constraint, dtype, *, adjoint_method,
               max_iter, engine, on_failure, check, diag_min, image=None, padding="circular"):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if not isinstance(constraint, str) or constraint not in self.CONSTRAINTS:
            raise TypeError(f"unknown constraint {constraint!r} for {type(self).__name__}; choose from "
                            f"{self.CONSTRAINTS}")
        self.constraint = make_constraint(constraint, gamma, diag_min)
        solver = SolverConfig(method=method, adjoint_method=adjoint_method, atol=atol,
                              adjoint_atol=atol if adjoint_atol is None else adjoint_atol, max_iter=max_iter,
                              engine=engine)
        act = solvers.get_activation(activation)
        #: What the custom operators are told (validated, its key computed, once per setting).
        self.config = SolveConfig(solver=solver, activation=act.name, slope=act.slope, on_failure=on_failure,
                                  check=check, image=image, padding=padding)

    def _init_parameters(self, A_shape, B_shape, dtype, device):
        """``A``, ``B``, ``b`` drawn as :class:`solvers.training.ImplicitNetwork` draws them from
        torch's generator (Gaussians over the square root of each output's fan-in, ``A`` scaled
        by :data:`A_INIT_SCALE`; ``b = 0``), ``A`` projected onto the constraint."""
        def gaussian(shape, scale=1.0):
            draw = torch.randn(*shape, dtype=torch.float64) * (scale / math.sqrt(math.prod(shape[1:])))
            return torch.nn.Parameter(draw.to(dtype))

        self.A, self.B = gaussian(A_shape, A_INIT_SCALE), gaussian(B_shape)
        self.b = torch.nn.Parameter(torch.zeros(A_shape[0], dtype=dtype))
        self.project_()
        self.to(device)

    @property
    def solver(self) -> SolverConfig:
        """The methods, tolerances, iteration limit and CPU engine (a :class:`solvers.training.SolverConfig`;
        assign a ``dataclasses.replace`` of it to change them)."""
        return self.config.solver

    @solver.setter
    def solver(self, value: SolverConfig):
        self.config = dataclasses.replace(self.config, solver=value)

    @property
    def on_failure(self) -> str:
        """``"warn"``, ``"raise"`` or ``"ignore"``: what a failed solve does."""
        return self.config.on_failure

    @on_failure.setter
    def on_failure(self, value: str):
        self.config = dataclasses.replace(self.config, on_failure=value)

    @property
    def activation(self) -> solvers.Activation:
        return self.config.act

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        X = equilibrium(self.A, self._injected(u), self.config)
        return X.reshape(self._output_shape(u))

    @torch.no_grad()
    def solve(self, u: torch.Tensor) -> solvers.FixedPointResult:
        """The forward solve of ``u`` as :func:`solvers.solve` reports it, without gradients:
        the equilibria ``result.x`` as rows (a numpy array; the CUDA tensor on the GPU), the
        iterations, residuals, statuses and error bounds per sample. :meth:`forward` reports
        only failures (``on_failure``); this is for monitoring."""
        return solve(self.A, self._injected(u), self.config)[1]

    def _check_input(self, u, name: str, dims: int, shape: tuple):
        """``u`` checked: a tensor of the layer's dtype and device with ``dims`` dimensions whose
        trailing ones are ``shape`` and at least one sample; a ``ValueError`` naming ``name``."""
        if not isinstance(u, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(u).__name__}")
        if u.dim() != dims or tuple(u.shape[1:]) != shape or u.shape[0] == 0:
            want = ", ".join(["batch"] + [str(s) for s in shape])
            raise ValueError(f"{name} must have shape ({want}) with batch >= 1 for this layer, got {tuple(u.shape)}")
        if u.dtype != self.A.dtype:
            raise ValueError(f"{name} must have the layer's dtype {self.A.dtype}, got {u.dtype}: convert it with "
                             f"{name}.to({self.A.dtype}) or the layer with .to({u.dtype})")
        if u.device != self.A.device:
            raise ValueError(f"{name} must be on the layer's device {self.A.device}, got {u.device}")
        return u

    # -- well-posedness ---------------------------------------------------------------------------
    def _host_A(self) -> np.ndarray:
        return self.A.detach().to("cpu", torch.float64).numpy()

    def _host_B(self) -> np.ndarray:
        return self.B.detach().to("cpu", torch.float64).numpy()

    @torch.no_grad()
    def project_(self):
        """Project ``A`` in place onto the layer's constraint (the Euclidean projection onto
        ``{μ∞(A) ≤ γ}`` or ``{‖A‖∞ ≤ γ}``, :func:`contraction.project_mu_inf`; nothing for
        ``"none"``). Call it after every ``optimizer.step()``, or let
        :func:`project_after_step` do it. Returns the layer."""
        if self.constraint.projected:
            A = self.constraint.project({"A": self._host_A().copy()})["A"]
            self.A.copy_(torch.from_numpy(A))
        return self

    def certificate(self, readout=None) -> Certificate:
        """μ∞(A), α*, the contraction factor and the ℓ∞ Lipschitz bound (:class:`Certificate`).

        ``readout`` (a ``torch.nn.Linear`` or a (q, n) matrix on the state) makes the Lipschitz
        bounds those of ``u ↦ C x*(u) + c``."""
        A, B = self.host_operators()
        method = self.solver.method
        alpha = contraction.optimal_alpha(A, method)
        C = _readout_matrix(readout, self.n_hidden)
        return Certificate(
            mu_inf=contraction.mu_inf(A), alpha=alpha,
            contraction_factor=contraction.contraction_factor(A, alpha, method),
            lipschitz=contraction.lipschitz_bound(A, B, C, form="tight"),
            lipschitz_paper=contraction.lipschitz_bound(A, B, C, form="paper"),
            method=method, constraint=self.constraint.name, gamma=self.constraint.gamma,
            violation=self.constraint.violation(A, tol=max(1e-6, 1e3 * torch.finfo(self.A.dtype).eps)),
        )

    def extra_repr(self) -> str:
        return (f"{self._sizes()}, activation={self.activation.name!r}, method={self.solver.method!r}, "
                f"atol={self.solver.atol:g}, constraint={self.constraint.name!r}, gamma={self.constraint.gamma:g}")


class ImplicitLayer(_Implicit):
    """The implicit layer ``x = σ(A x + B u + b)``: ``u`` (batch, n_in) ↦ ``x*`` (batch, n_hidden).

    Parameters
    ----------
    n_in, n_hidden : int
    gamma : float
        The constraint's bound: ``μ∞(A) ≤ γ < 1`` (``"mu_inf"``) or ``‖A‖∞ ≤ γ`` (``"norm_inf"``).
    activation : str, (str, float) or solvers.Activation
        A slope-restricted σ: ``relu``, ``leaky_relu``, ``hard_tanh``, ``tanh``, ``softplus``.
    method : str
        The forward solver (:data:`solvers.METHODS`), at its optimal step ``α*``.
    atol, adjoint_atol : float
        Stop the forward solve at ℓ∞ residual ``‖σ(Ax + w) − x‖∞ ≤ atol`` and the adjoint at ℓ1
        residual ``≤ adjoint_atol`` (default ``atol``), per sample.
    constraint : {"mu_inf", "norm_inf", "none"}
        What :meth:`project_` projects ``A`` onto.
    dtype : torch.float32 or torch.float64
    adjoint_method : str
        :data:`solvers.ADJOINT_METHODS` (``direct``: CPU tensors only).
    max_iter : int
        Most iterations of each solve.
    engine : {"numba", "numpy", "cuda"}
        The engine for CPU tensors (CUDA tensors always take the CUDA engine, in place, on torch's
        current stream; ``"cuda"`` with CPU tensors runs that path in numba's simulator).
    on_failure : {"warn", "raise", "ignore"}
        A solve that fails for some samples (out of iterations, diverged, not finite) warns
        :class:`NoConvergenceWarning` (default: failure is data, training goes on), raises
        :class:`solvers.NoConvergence`, or is ignored; the message is the solver's.
    check : bool
        Check the forward method's guarantee before each solve (:class:`solvers.NotGuaranteedWarning`
        with the violated condition and its margin, e.g. when ``A`` was not projected).
    diag_min : float, optional
        With ``"mu_inf"``: also keep ``a_ii ≥ diag_min`` (bounds ``α*`` from below).
    device : torch.device, optional

    Notes
    -----
    Parameters: ``A`` (n_hidden, n_hidden), ``B`` (n_hidden, n_in), ``b`` (n_hidden), drawn as
    :class:`solvers.training.ImplicitNetwork` draws them (``A`` a small Gaussian, projected;
    ``B`` Gaussian over ``√n_in``; ``b = 0``) from torch's random generator. Forward:
    ``W = u Bᵀ + b`` (torch), ``X = x*(W)`` by :func:`solvers.solve` (``torch.ops.nemon.fixed_point``).
    Backward: ``λ = ∂L/∂X + (λ ⊙ σ'(Z)) A``, ``V = λ ⊙ σ'(Z)``, ``∂L/∂A = Vᵀ X``, ``∂L/∂W = V``
    (then torch takes ``V`` to ``B``, ``b`` and ``u``). Inputs of shape (n_in,) or with several
    leading dimensions are flattened to rows and the result reshaped back.
    """

    CONSTRAINTS = DENSE_CONSTRAINTS

    def __init__(self, n_in, n_hidden, gamma=0.9, activation="relu", method="average", atol=1e-4, adjoint_atol=None,
                 constraint="mu_inf", dtype=torch.float32, *, adjoint_method="average", max_iter=1000, engine="numba",
                 on_failure="warn", check=True, diag_min=None, device=None):
        super().__init__()
        m, n = _count(n_in, "n_in"), _count(n_hidden, "n_hidden")
        self._setup(gamma, activation, method, atol, adjoint_atol, constraint, dtype, adjoint_method=adjoint_method,
                    max_iter=max_iter, engine=engine, on_failure=on_failure, check=check, diag_min=diag_min)
        self._init_parameters((n, n), (n, m), dtype, device)

    @property
    def n_in(self) -> int:
        return self.B.shape[1]

    @property
    def n_hidden(self) -> int:
        return self.A.shape[0]

    def _sizes(self) -> str:
        return f"n_in={self.n_in}, n_hidden={self.n_hidden}"

    def _injected(self, u: torch.Tensor) -> torch.Tensor:
        """``W = u Bᵀ + b`` of the rows of ``u`` (checked)."""
        rows = u.reshape(-1, u.shape[-1]) if isinstance(u, torch.Tensor) and u.dim() >= 1 else u
        return torch.addmm(self.b, self._check_input(rows, "u", 2, (self.n_in,)), self.B.t())

    def _output_shape(self, u: torch.Tensor) -> tuple:
        return (*u.shape[:-1], self.n_hidden)

    def host_operators(self):
        """``(A, B)`` as float64 matrices, as :mod:`contraction` takes them."""
        return self._host_A(), self._host_B()

    def embedded(self, u_lo: torch.Tensor, u_hi: torch.Tensor):
        """The embedded network over the box ``[u_lo, u_hi]`` (DESIGN.md section 5), in torch
        (differentiable): ``(𝒜, W2)`` with ``𝒜 = [[A_M, A_N], [A_N, A_M]]`` (``A_N`` the
        negative off-diagonal entries of ``A``) and ``W2 = [B u_c + |B| u_r + b, B u_c − |B| u_r + b]``
        (centre ``u_c``, radius ``u_r``); its equilibrium is ``[x_hi, x_lo]``."""
        A = self.A
        off = ~torch.eye(A.shape[0], dtype=torch.bool, device=A.device)
        A_N = torch.where(off & (A < 0), A, torch.zeros_like(A))
        A_M = A - A_N
        AA = torch.cat([torch.cat([A_M, A_N], 1), torch.cat([A_N, A_M], 1)], 0)
        centre = torch.addmm(self.b, (u_hi + u_lo) * 0.5, self.B.t())
        spread = ((u_hi - u_lo) * 0.5) @ self.B.abs().t()
        return AA, torch.cat([centre + spread, centre - spread], 1)


class ConvImplicitLayer(_Implicit):
    """The convolutional implicit layer ``x = σ(A ⋆ x + B ⋆ u + b)``: images ``u`` (batch, C_in, H, W)
    ↦ ``x*`` (batch, channels, H/stride, W/stride).

    Parameters
    ----------
    in_channels, channels : int
    image_size : int or (int, int)
        ``(H, W)`` of the inputs; the state's images are ``(H/stride, W/stride)``, at least k × k.
    kernel_size : int
        Odd ``k`` of both convolutions.
    gamma, activation, method, atol, adjoint_atol, dtype, adjoint_method, max_iter, engine,
    on_failure, check, diag_min, device
        As for :class:`ImplicitLayer`.
    constraint : {"mu_inf", "none"}
        ``"mu_inf"`` projects the kernel onto ``{μ∞ ≤ γ}`` per output channel (DESIGN.md section 8b).
    padding : {"circular", "zeros"}
    stride : int
        Stride of the input convolution ``B`` (divides ``H`` and ``W``).

    Notes
    -----
    ``A`` (channels, channels, k, k), ``B`` (channels, in_channels, k, k), ``b`` (channels): "same"
    cross-correlations with the layer's padding (torch's ``conv2d``; :class:`contraction.Conv2d`),
    drawn as :class:`solvers.training.ConvImplicitNetwork` draws them. Backward as for
    :class:`ImplicitLayer`, with ``∂L/∂A[c, c', di, dj] = Σ V[c, i, j] x[c', i + di − p, j + dj − p]``.
    """

    CONSTRAINTS = CONV_CONSTRAINTS

    def __init__(self, in_channels, channels, image_size, kernel_size=3, gamma=0.9, activation="relu", method="average",
                 atol=1e-4, adjoint_atol=None, constraint="mu_inf", dtype=torch.float32, *, padding="circular",
                 stride=1, adjoint_method="average", max_iter=1000, engine="numba", on_failure="warn", check=True,
                 diag_min=None, device=None):
        super().__init__()
        C_in, C = _count(in_channels, "in_channels"), _count(channels, "channels")
        k, s = _count(kernel_size, "kernel_size"), _count(stride, "stride")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {k}")
        size = (image_size, image_size) if isinstance(image_size, numbers.Integral) else tuple(image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be an integer or (H, W), got {image_size!r}")
        H, W = (_count(v, "image_size") for v in size)
        if H % s or W % s:
            raise ValueError(f"stride must divide the image size {H}x{W}, got {s}")
        self.image_size, self.stride, self.padding = (H, W), s, padding
        self.state_shape = (H // s, W // s)
        self._setup(gamma, activation, method, atol, adjoint_atol, constraint, dtype, adjoint_method=adjoint_method,
                    max_iter=max_iter, engine=engine, on_failure=on_failure, check=check, diag_min=diag_min,
                    image=self.state_shape, padding=padding)
        contraction.Conv2d(np.zeros((1, 1, k, k)), self.state_shape, padding)  # refuses images smaller than k x k
        self._init_parameters((C, C, k, k), (C, C_in, k, k), dtype, device)

    @property
    def channels(self) -> int:
        return self.A.shape[0]

    @property
    def in_channels(self) -> int:
        return self.B.shape[1]

    @property
    def n_hidden(self) -> int:
        """The state's size ``channels · (H/stride) · (W/stride)``."""
        return self.channels * self.state_shape[0] * self.state_shape[1]

    def _inject(self, u: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``B ⋆ u (+ b)`` at the layer's stride, as rows (batch, n_hidden)."""
        W = correlate(u, B, self.padding, self.stride)
        if bias is not None:
            W = W + bias[:, None, None]
        return W.reshape(u.shape[0], -1)

    def _sizes(self) -> str:
        H, W = self.image_size
        return (f"in_channels={self.in_channels}, channels={self.channels}, image_size=({H}, {W}), "
                f"kernel_size={self.A.shape[-1]}, padding={self.padding!r}, stride={self.stride}")

    def _injected(self, u: torch.Tensor) -> torch.Tensor:
        """``W = B ⋆ u + b`` of the images ``u`` (checked), as rows."""
        return self._inject(self._check_input(u, "u", 4, (self.in_channels, *self.image_size)), self.B, self.b)

    def _output_shape(self, u: torch.Tensor) -> tuple:
        return (u.shape[0], self.channels, *self.state_shape)

    def host_operators(self):
        """``(A, B)`` as the :class:`contraction.Conv2d` operators of their float64 kernels."""
        return (contraction.Conv2d(self._host_A(), self.state_shape, self.padding),
                contraction.Conv2d(self._host_B(), self.image_size, self.padding, self.stride))

    def embedded(self, u_lo: torch.Tensor, u_hi: torch.Tensor):
        """:meth:`ImplicitLayer.embedded` split per tap: ``𝒜`` the kernel
        ``[[K_M, K_N], [K_N, K_M]]`` (``K_N`` the negative taps other than each channel's own
        centre tap) on ``2·channels`` images ``[x_hi, x_lo]``."""
        K = self.A
        C, p = self.channels, K.shape[-1] // 2
        centre = torch.zeros(K.shape, dtype=torch.bool, device=K.device)
        centre[torch.arange(C), torch.arange(C), p, p] = True
        K_N = torch.where(~centre & (K < 0), K, torch.zeros_like(K))
        K_M = K - K_N
        KK = torch.cat([torch.cat([K_M, K_N], 1), torch.cat([K_N, K_M], 1)], 0)
        centre_in = self._inject((u_hi + u_lo) * 0.5, self.B, self.b)
        spread = self._inject((u_hi - u_lo) * 0.5, self.B.abs(), None)
        hi = (centre_in + spread).reshape(u_lo.shape[0], C, -1)
        lo = (centre_in - spread).reshape(u_lo.shape[0], C, -1)
        return KK, torch.cat([hi, lo], 1).reshape(u_lo.shape[0], -1)


def project_after_step(optimizer: torch.optim.Optimizer, module: torch.nn.Module):
    """Project every implicit layer of ``module`` (itself included) after each
    ``optimizer.step()``: registers :meth:`ImplicitLayer.project_` as the optimiser's post-step
    hook. Returns the hook's handle (``handle.remove()`` undoes it)."""
    layers = [m for m in module.modules() if isinstance(m, _Implicit)]
    if not layers:
        raise ValueError(f"module holds no ImplicitLayer or ConvImplicitLayer: {type(module).__name__}")

    def project(opt, args, kwargs):
        for layer in layers:
            layer.project_()

    return optimizer.register_step_post_hook(project)
