"""The custom operators on CUDA tensors: the CUDA engine on the tensors' memory, in place, on
torch's current stream.

What :func:`solvers.solve` does on the host before an engine runs is done here for device
memory: the step size, the guarantee check, Anderson's safeguard and the splittings' resolvent
come from a host copy of ``A`` (a matrix or a kernel), and the iteration is one launch of the
CUDA engine's kernels (:func:`solvers._engines.cuda_engine.run_device`) on torch's current
stream, reading ``W`` (or ``G`` and ``σ'(Z)``) and writing the solution into a new tensor. The
per-sample statuses come back to the host (a synchronisation) as the same
:class:`solvers.FixedPointResult` and :class:`solvers.AdjointResult` a host solve returns
(their ``x`` is the CUDA tensor), so a failure is reported as it is on the CPU.

Under ``NUMBA_ENABLE_CUDASIM=1`` the simulator runs the same code on CPU tensors
(``engine="cuda"``), which is how the tests exercise it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

import contraction
import solvers
from solvers._engines import cuda_engine
from solvers._engines.task import Task

__all__ = ["solve", "adjoint"]

_SPLITTINGS = ("peaceman_rachford", "douglas_rachford")


def _stream(t: torch.Tensor):
    """The handle of torch's current stream on ``t``'s device (``None`` for a CPU tensor: the
    simulator)."""
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else None


def _facts(A: torch.Tensor, cfg):
    """``(operator, min a_ii, μ∞(A))`` from a float64 host copy of ``A``."""
    op = cfg.host_operator(A.detach().to("cpu", torch.float64).numpy())
    diagonal = op.diagonal() if isinstance(op, contraction.Conv2d) else np.diagonal(op)
    return op, float(diagonal.min()), contraction.mu_inf(op)


def _alpha(op, a_min: float, method: str, solver):
    """The step of a solve by ``method``: α*, or the per-unit steps (float64, one per unit) when
    ``solver.alpha`` asks for them."""
    if solver.step(method) != "per_unit":
        return contraction.optimal_alpha_from_diagonal(a_min, method)
    return solvers.unit_steps(op)


def _accept(op, method: str, alpha: float) -> float:
    """Anderson's safeguard ratio: the averaged factor when it contracts, else 1."""
    if method != "anderson":
        return 1.0
    factor = contraction.contraction_factor(op, alpha, "average")
    return factor if factor < 1.0 else 1.0


def _resolvent(op, alpha: float, like: torch.Tensor):
    """The splittings' ``((1 + α) I − α A)⁻ᵀ`` on ``like``'s device (a matrix ``A`` only)."""
    if isinstance(op, contraction.Conv2d):
        raise ValueError("the splittings (peaceman_rachford, douglas_rachford) run on CUDA tensors for a matrix A "
                         "only; for a convolution use method='average' or 'anderson', or CPU tensors")
    MinvT = np.linalg.inv(contraction.resolvent_matrix(op, alpha)).T
    return torch.as_tensor(np.ascontiguousarray(MinvT), dtype=like.dtype, device=like.device)


def _check_finite(t: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite; non-finite entries at {torch.nonzero(bad)[:5].tolist()}")


def _statuses(like: torch.Tensor, iters, res, codes):
    """The device results on the host, after the solve on ``like``'s stream finished:
    ``(iterations, residual, codes, converged, status)``."""
    if like.is_cuda:
        torch.cuda.current_stream(like.device).synchronize()
    codes = codes.copy_to_host()
    status = solvers.Status(int(codes.max()))
    return iters.copy_to_host(), res.copy_to_host(), codes, codes == int(solvers.Status.SUCCESS), status


def solve(A: torch.Tensor, W: torch.Tensor, cfg):
    """``(X, result)``: the forward solve of :func:`._ops.fixed_point` on the device."""
    s = cfg.solver
    op, a_min, mu = _facts(A, cfg)
    alpha = _alpha(op, a_min, s.method, s)
    if cfg.check and mu >= 1.0:
        warnings.warn(f"method {s.method!r} is not guaranteed to converge: mu_inf(A) = {mu:.4g} >= 1 (margin "
                      f"{1 - mu:.3g}); project A onto {{mu_inf(A) <= gamma}} (layer.project_()) after every step",
                      solvers.NotGuaranteedWarning, stacklevel=4)
    W = W.detach().contiguous()  # the engine reads tensors through __cuda_array_interface__: no autograd
    _check_finite(W, "W")
    X = torch.zeros_like(W)
    matrix = op if isinstance(op, contraction.Conv2d) else A.detach().t().contiguous().t()  # column-major: coalesced
    task = Task(kind="forward", op=matrix, rhs=W, D=None, x0=X, method=s.method, alpha=alpha, activation=cfg.act,
                atol=s.atol, rtol=0.0, max_iter=s.max_iter, accept=_accept(op, s.method, alpha),
                resolvent=_resolvent(op, alpha, W) if s.method in _SPLITTINGS else None)
    iters, res, codes, converged, status = _statuses(W, *cuda_engine.run_device(task, _stream(W)))
    bound = res / (1.0 - max(0.0, mu)) if mu < 1.0 else np.full_like(res, np.inf)
    return X, solvers.FixedPointResult(x=X, converged=converged, status=status, iterations=iters, residual=res,
                                       alpha=alpha, method=s.method, engine="cuda", activation=cfg.act.name,
                                       history=None, error_bound=bound, sample_status=codes)


def adjoint(A: torch.Tensor, Z: torch.Tensor, G: torch.Tensor, cfg):
    """``(V, result)``: the adjoint solve of :func:`._ops.fixed_point_adjoint` on the device."""
    s = cfg.solver
    if s.adjoint_method == "direct":
        raise ValueError("adjoint_method='direct' runs on CPU tensors only; on CUDA use 'average' or 'anderson'")
    op, a_min, _ = _facts(A, cfg)
    alpha = _alpha(op, a_min, s.adjoint_method, s)
    G = G.detach().contiguous()
    _check_finite(G, "G")
    D = torch.empty_like(Z)
    stream = _stream(G)
    cuda_engine.derivative_device(cfg.act, Z.detach().contiguous(), D, stream)
    lam = torch.zeros_like(G)
    matrix = op if isinstance(op, contraction.Conv2d) else A.detach().contiguous()  # row-major: coalesced
    task = Task(kind="adjoint", op=matrix, rhs=G, D=D, x0=lam, method=s.adjoint_method, alpha=alpha,
                activation=cfg.act, atol=s.adjoint_atol, rtol=0.0, max_iter=s.max_iter,
                accept=_accept(op, s.adjoint_method, alpha))
    iters, res, codes, converged, status = _statuses(G, *cuda_engine.run_device(task, stream))
    return lam * D, solvers.AdjointResult(converged=converged, status=status, iterations=iters, residual=res,
                                          alpha=alpha, method=s.adjoint_method, engine="cuda", history=None,
                                          sample_status=codes)
