"""The dense layer's CPU solves in one compiled call each, for the common case.

:func:`solvers.solve` and :func:`solvers.solve_adjoint` validate their arguments, build a task
and return a result object: at batch 100 × n 100 that front door costs about as much as the
iterations themselves, and the operators around them added a product ``Z = A x + w`` and
``σ'(Z)`` in NumPy on every call. Here a forward solve keeps the solver's last product (``Z``,
exactly the pre-activation at the returned ``x``) and an adjoint solve forms ``σ'(Z)`` and
``V = λ ⊙ σ'(Z)`` inside the compiled call, with the engine's own block solver
(:func:`solvers.engine.solve_block`: the same iterations and stopping rule, sample by sample),
thread blocks and BLAS policy, as training's fused step does.

It takes the averaged iteration at ``α*`` of a finite matrix with ``μ∞(A) < 1`` (the
guarantee :func:`solvers.solve` would check), on the numba engine; every other case, and any
solve that fails, goes through the front door, which then reports exactly as it always does.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

import contraction
from solvers.engine import (
    IDENTITY,
    PRANGE_ONLY,
    SUCCESS,
    Adjoint,
    Averaged,
    AveragedUnits,
    Forward,
    Output,
    Stopping,
    activation,
    blas_policy,
    block_bounds,
    dense,
    dsigma,
    serial_work,
    solve_block,
    use_blocks,
)

__all__ = ["applies", "forward", "adjoint"]

#: The adjoint's activation (its iteration is linear).
_IDENTITY = activation(IDENTITY, 0.0)
#: float32's machine epsilon: below ``4 ε`` a float32 tolerance is the front door's to warn about.
_F32_EPS = float(np.finfo(np.float32).eps)


def applies(cfg, method: str, atol: float, A: np.ndarray, dtype) -> tuple | None:
    """``(op, step, μ∞)`` when this path solves for ``cfg`` (a :class:`~._ops.SolveConfig`) with
    ``method`` and ``atol`` on the matrix ``A``; ``None`` sends the solve to the front door."""
    if (cfg.image is not None or cfg.solver.engine != "numba" or method != "average" or A.dtype != dtype
            or (dtype == np.float32 and 0.0 < atol < 4 * _F32_EPS)):
        return None
    A = np.ascontiguousarray(A)
    finite, a_min, mu = contraction.matrix_facts(A)
    if not finite or not mu < 1.0:  # the front door raises or checks the guarantee
        return None
    if cfg.solver.alpha == "per_unit":
        step = AveragedUnits(contraction.optimal_alpha(A, per_unit=True).astype(dtype))
    else:
        step = Averaged(float(contraction.optimal_alpha_from_diagonal(float(a_min))))
    return dense(A, forward=True, adjoint=True), step, float(mu)


@njit(cache=True, nogil=True)
def _forward_block(op, act, identity, step, stop, W, X, Z, iters, res, codes):
    solve_block(op, Forward(W), act, step, stop, W[:0], Output(X, iters, res, codes, np.empty((W.shape[0], 0)), Z))


@njit(cache=True, parallel=PRANGE_ONLY)
def _forward_blocks(bounds, op, act, identity, step, stop, W, X, Z, iters, res, codes):
    for c in prange(bounds.shape[0]):
        lo, hi = bounds[c, 0], bounds[c, 1]
        _forward_block(op, act, identity, step, stop, W[lo:hi], X[lo:hi], Z[lo:hi], iters[lo:hi], res[lo:hi], codes[lo:hi])


@njit(cache=True, nogil=True)
def _adjoint_block(op, act, identity, step, stop, Z, G, D, V, iters, res, codes):
    """``D = σ'(Z)``, ``λ = G + (λ ⊙ D) A`` into ``V``, then ``V = λ ⊙ D`` in place."""
    rows, n = Z.shape
    for s in range(rows):
        for i in range(n):
            D[s, i] = dsigma(act, Z[s, i])
    solve_block(op, Adjoint(G, D), identity, step, stop, G[:0],
                Output(V, iters, res, codes, np.empty((rows, 0)), G[:0]))
    for s in range(rows):
        for i in range(n):
            V[s, i] *= D[s, i]


@njit(cache=True, parallel=PRANGE_ONLY)
def _adjoint_blocks(bounds, op, act, identity, step, stop, Z, G, D, V, iters, res, codes):
    for c in prange(bounds.shape[0]):
        lo, hi = bounds[c, 0], bounds[c, 1]
        _adjoint_block(op, act, identity, step, stop, Z[lo:hi], G[lo:hi], D[lo:hi], V[lo:hi], iters[lo:hi], res[lo:hi],
                       codes[lo:hi])


def _run(name, block, blocks, plan, act, atol: float, max_iter: int, rows: tuple) -> bool:
    """``block(op, act, identity, step, stop, *rows)`` on the engine's thread blocks of the batch-wide
    arrays ``rows`` (followed by iterations, residuals and status codes, made here): through
    ``blocks`` in parallel or on each block in turn (:func:`solvers.engine.use_blocks` decides;
    the results are the same to the bit). Returns ``(residuals, whether every sample converged)``."""
    op, step, _ = plan
    batch, n = rows[0].shape
    res = np.zeros(batch)
    rows = (*rows, np.zeros(batch, np.int64), res, np.full(batch, -1, np.int8))
    fixed = (op, activation(act.code, act.slope), _IDENTITY, step, Stopping(float(atol), 0.0, int(max_iter), False))
    bounds = block_bounds(batch)
    variant = (name, rows[0].dtype.char, type(fixed[1]).__name__, type(step).__name__)
    parallel = use_blocks(variant, len(bounds), blocks, (bounds, *fixed, *rows))
    with blas_policy(len(bounds) if parallel else 1, batch * n * n):
        if parallel:
            blocks(bounds, *fixed, *rows)
        else:
            with serial_work(variant):
                for lo, hi in bounds:
                    block(*fixed, *(a[lo:hi] for a in rows))
    return res, bool((rows[-1] == SUCCESS).all())


def forward(plan, W: np.ndarray, act, atol: float, max_iter: int, X: np.ndarray, Z: np.ndarray):
    """Solve ``x = σ(A x + w)`` into ``X`` (and ``Z = A x + w``) for the rows of ``W`` with ``plan``
    from :func:`applies`; returns each sample's error bound ``r / (1 − max(0, μ∞))``, or ``None``
    when a sample failed (the caller then asks the front door)."""
    res, ok = _run("torch forward", _forward_block, _forward_blocks, plan, act, atol, max_iter, (W, X, Z))
    return res / (1.0 - max(0.0, plan[2])) if ok else None


def adjoint(plan, Z: np.ndarray, G: np.ndarray, act, atol: float, max_iter: int, V: np.ndarray) -> bool:
    """``V = λ ⊙ σ'(Z)`` into ``V``, ``λ = G + (λ ⊙ σ'(Z)) A`` for the rows of ``G``; ``True`` when
    every sample converged (else the caller asks the front door)."""
    return _run("torch adjoint", _adjoint_block, _adjoint_blocks, plan, act, atol, max_iter,
                (Z, G, np.empty_like(G), V))[1]
