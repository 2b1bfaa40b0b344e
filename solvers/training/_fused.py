"""The training step of the common case in one compiled call per thread block: averaged
forward and adjoint solves on the numba engine, cross-entropy loss.

The generic path (:meth:`ImplicitNetwork.compute_gradients` with ``fused=False``) does, per
batch, an input product, a forward solve, the loss, an adjoint solve and five gradient
products: a dozen NumPy calls and two trips through the solvers' front door, together about
as long as the arithmetic at batch 100 × n 100. Here each thread block of the batch
(:func:`solvers.engine.block_bounds` and :func:`solvers.engine.blas_policy`, the engine's own
split and BLAS policy, and a ``prange`` over the blocks as in the engine) runs the
whole step on its rows in one compiled call:

    W = U Bᵀ + b,   x = σ(A x + W) (averaged, α*),   Y = X Cᵀ + c,
    Z = X Aᵀ + W (the forward solve's last product, not recomputed),
    dY = (softmax(Y) − onehot(y)) / batch,   G = dY C,
    λ = G + (λ ⊙ σ'(Z)) A (averaged, ℓ1 residual),   V = λ ⊙ σ'(Z),

with the engine's block solver (:func:`solvers.engine.solve_block`, so the iterations and
the stopping rule are the engine's, sample by sample), then its block's share of ``Vᵀ X``,
``Vᵀ U`` and ``dYᵀ X``; the shares are summed at the end. The loss and ``dY`` are computed
in float64 as in the generic path; everything else in the network's dtype. Samples whose
adjoint misses its tolerance are finished with a dense solve, as in the generic path.
Tested against the generic path in ``tests/training/test_fused.py``.
"""

from __future__ import annotations

import collections
import math

import numpy as np
from numba import njit, prange

import contraction
from solvers import solve_adjoint
from solvers.engine import (
    IDENTITY,
    PRANGE_ONLY,
    SUCCESS,
    Adjoint,
    Averaged,
    Forward,
    Output,
    Stopping,
    activation,
    blas_policy,
    block_bounds,
    serial_work,
    use_blocks,
    dense,
    dsigma,
    solve_block,
)

__all__ = ["fusable", "fused_gradients"]

#: The network's parameters as the kernel reads them (``AT = Aᵀ``, ``BT = Bᵀ``, ``CT = Cᵀ``,
#: ``C64``: ``C`` in float64 for ``G = dY C``).
Params = collections.namedtuple("Params", ["BT", "b", "CT", "C64", "c"])
#: Per-sample work and outputs of the step, batch-wide (each block writes its own rows).
Work = collections.namedtuple("Work", ["U", "y", "W", "X", "Z", "Y", "dY", "dYt", "G", "D", "L", "V", "losses",
                                       "iters_f", "res_f", "codes_f", "iters_a", "res_a", "codes_a", "hist"])
#: Each block's share of the gradients of ``A``, ``B`` and ``C``.
Shares = collections.namedtuple("Shares", ["gA", "gB", "gC"])


@njit(cache=True, nogil=True)
def _step_block(blk, lo, hi, data, labels, rows, op, params, act, identity, step, stop_f, stop_a, work, shares):
    """The whole step on rows ``lo:hi`` of the batch ``data[rows]``; writes the block's rows of
    ``work`` and its share ``blk`` of ``shares``. The rows of a shuffled batch are scattered
    over the data set: each block gathers its own (onto the core that uses them)."""
    n = work.X.shape[1]
    q = work.Y.shape[1]
    batch = rows.shape[0]
    none = work.X[:0]
    U = work.U[lo:hi]
    for s in range(lo, hi):
        work.U[s] = data[rows[s]]
        work.y[s] = labels[rows[s]]
    np.dot(U, params.BT, work.W[lo:hi])
    for s in range(lo, hi):
        for i in range(n):
            work.W[s, i] += params.b[i]
    solve_block(op, Forward(work.W[lo:hi]), act, step, stop_f, none,
                Output(work.X[lo:hi], work.iters_f[lo:hi], work.res_f[lo:hi], work.codes_f[lo:hi],
                       work.hist[lo:hi], work.Z[lo:hi]))  # Z = X Aᵀ + W from the solver's last product
    np.dot(work.X[lo:hi], params.CT, work.Y[lo:hi])
    for s in range(lo, hi):
        for i in range(n):
            work.D[s, i] = dsigma(act, work.Z[s, i])
        top = -np.inf
        for j in range(q):
            work.Y[s, j] += params.c[j]
            top = max(top, float(work.Y[s, j]))
        total = 0.0
        for j in range(q):
            total += math.exp(float(work.Y[s, j]) - top)
        lse = top + math.log(total)
        work.losses[s] = lse - float(work.Y[s, work.y[s]])
        for j in range(q):
            g = math.exp(float(work.Y[s, j]) - lse)
            if j == work.y[s]:
                g -= 1.0
            work.dY[s, j] = g / batch
            work.dYt[s, j] = work.dY[s, j]
    G64 = np.dot(work.dY[lo:hi], params.C64)  # G = dY C in float64, as the generic path
    for s in range(lo, hi):
        for i in range(n):
            work.G[s, i] = G64[s - lo, i]
    solve_block(op, Adjoint(work.G[lo:hi], work.D[lo:hi]), identity, step, stop_a, none,
                Output(work.L[lo:hi], work.iters_a[lo:hi], work.res_a[lo:hi], work.codes_a[lo:hi],
                       work.hist[lo:hi], none))
    for s in range(lo, hi):
        for i in range(n):
            work.V[s, i] = work.L[s, i] * work.D[s, i]
    np.dot(work.V[lo:hi].T, work.X[lo:hi], shares.gA[blk])
    np.dot(work.V[lo:hi].T, U, shares.gB[blk])
    np.dot(work.dYt[lo:hi].T, work.X[lo:hi], shares.gC[blk])


@njit(cache=True, parallel=PRANGE_ONLY)
def _step_blocks(bounds, data, labels, rows, op, params, act, identity, step, stop_f, stop_a, work, shares):
    """:func:`_step_block` on each block ``bounds[c] = (lo, hi)``, one block per thread, then
    the blocks' shares summed into share 0 (one row of the output per task); returns
    :func:`_summary`."""
    for c in prange(bounds.shape[0]):
        _step_block(np.int64(c), bounds[c, 0], bounds[c, 1], data, labels, rows, op, params, act, identity, step,
                    stop_f, stop_a, work, shares)
    _sum_shares(shares)
    return _summary(work)


@njit(cache=True, parallel=PRANGE_ONLY)
def _sum_shares(shares):
    """``shares.gX[0] += shares.gX[k]`` for every block ``k > 0``, rows in parallel."""
    gA, gB, gC = shares
    for i in prange(gA.shape[1]):
        for k in range(1, gA.shape[0]):
            for j in range(gA.shape[2]):
                gA[0, i, j] += gA[k, i, j]
            for j in range(gB.shape[2]):
                gB[0, i, j] += gB[k, i, j]
    for i in range(gC.shape[1]):
        for k in range(1, gC.shape[0]):
            for j in range(gC.shape[2]):
                gC[0, i, j] += gC[k, i, j]


@njit(cache=True)
def _summary(work):
    """What the step reports besides ``gA, gB, gC``, summed over the batch in row order:
    ``(loss sum, gb = Σ V, gc = Σ dY, forward and adjoint iterations summed, samples whose
    forward and adjoint solves succeeded)``. One compiled pass instead of seven NumPy
    reductions (each a few microseconds in a step of about a millisecond)."""
    batch, n = work.V.shape
    gb = np.zeros(n, work.V.dtype)
    gc = np.zeros(work.dYt.shape[1], work.dYt.dtype)
    loss = 0.0
    iters_f = 0
    iters_a = 0
    ok_f = 0
    ok_a = 0
    for s in range(batch):
        loss += work.losses[s]
        for i in range(n):
            gb[i] += work.V[s, i]
        for j in range(gc.shape[0]):
            gc[j] += work.dYt[s, j]
        iters_f += work.iters_f[s]
        iters_a += work.iters_a[s]
        ok_f += work.codes_f[s] == SUCCESS
        ok_a += work.codes_a[s] == SUCCESS
    return loss, gb, gc, iters_f, iters_a, ok_f, ok_a


def fusable(solver, loss: str) -> bool:
    """Whether :func:`fused_gradients` computes what the generic path would for ``solver``."""
    return (loss == "cross_entropy" and solver.engine == "numba" and solver.method == "average"
            and solver.adjoint_method == "average")


def fused_gradients(net, U, targets, rows, solver):
    """``(value, grads, stats)`` of the cross-entropy loss of the batch ``U[rows]``,
    ``targets[rows]`` for a :func:`fusable` ``solver``; ``U`` finite and C-contiguous in the
    network's dtype, ``targets`` valid int64 labels (validated by the caller)."""
    A = np.ascontiguousarray(net.A)
    dt = A.dtype
    batch = rows.shape[0]
    n, m, q = net.n_hidden, net.n_in, net.n_out
    alpha = contraction.optimal_alpha_from_diagonal(float(np.diagonal(A).min()))
    op = dense(A, forward=True, adjoint=True)
    params = Params(net.B.T, net.b, net.C.T, net.C.astype(np.float64), net.c)  # transposed views: no copies
    act = activation(net.activation.code, net.activation.slope)
    step = Averaged(float(alpha))
    stop_f = Stopping(float(solver.atol), 0.0, int(solver.max_iter), False)
    stop_a = Stopping(float(solver.adjoint_atol), 0.0, int(solver.max_iter), False)
    e = np.empty
    work = Work(e((batch, m), dt), e(batch, np.int64), e((batch, n), dt), e((batch, n), dt), e((batch, n), dt),
                e((batch, q), dt), e((batch, q)), e((batch, q), dt), e((batch, n), dt), e((batch, n), dt),
                e((batch, n), dt), e((batch, n), dt), e(batch), np.zeros(batch, np.int64), np.zeros(batch),
                np.full(batch, -1, np.int8), np.zeros(batch, np.int64), np.zeros(batch),
                np.full(batch, -1, np.int8), e((batch, 0)))
    bounds = block_bounds(batch)
    k_blocks = len(bounds)
    shares = Shares(e((k_blocks, n, n), dt), e((k_blocks, n, m), dt), e((k_blocks, q, n), dt))
    rows = rows.astype(np.int64, copy=False)
    identity = activation(IDENTITY, 0.0)
    args = (bounds, U, targets, rows, op, params, act, identity, step, stop_f, stop_a, work, shares)
    variant = ("fused step", net.activation.code, dt.char)
    parallel = use_blocks(variant, k_blocks, _step_blocks, args)
    with blas_policy(k_blocks if parallel else 1, batch * n * n):
        if parallel:
            loss, gb, gc, iters_f, iters_a, ok_f, ok_a = _step_blocks(*args)
        else:  # the same blocks one after the other: the same products, the same results
            with serial_work(variant):
                for c, (lo, hi) in enumerate(bounds):
                    _step_block(c, lo, hi, U, targets, rows, op, params, act, identity, step, stop_f, stop_a, work,
                                shares)
                for g in shares:  # summed in the order of _sum_shares
                    for k in range(1, k_blocks):
                        g[0] += g[k]
                loss, gb, gc, iters_f, iters_a, ok_f, ok_a = _summary(work)
    gA, gB, gC = (g[0] for g in shares)
    if ok_a < batch:  # outside the averaged adjoint's guarantee: finish the failed samples exactly
        bad = work.codes_a != SUCCESS
        lam = work.L.copy()
        lam[bad], _ = solve_adjoint(A, work.Z[bad], work.G[bad], method="direct", activation=net.activation,
                                    check=False)
        V = (lam.astype(np.float64) * net.activation.derivative(work.Z)).astype(dt)
        gA, gB, gb = V.T @ work.X, V.T @ work.U, V.sum(axis=0)
    stats = {
        "forward_iterations": iters_f / batch,
        "adjoint_iterations": iters_a / batch,
        "forward_converged": ok_f / batch,
        "adjoint_converged": ok_a / batch,
        "logits": work.Y,
    }
    return loss / batch, {"A": gA, "B": gB, "b": gb, "C": gC, "c": gc}, stats
