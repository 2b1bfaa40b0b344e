"""The training step of the common case in one compiled call: averaged forward and adjoint
solves on the numba engine, cross-entropy loss.

:meth:`ImplicitNetwork.loss_and_grad` does, per batch, an input product, a forward solve, the
loss, an adjoint solve and five gradient products: a dozen NumPy calls and two trips through
the solvers' front door, each small at batch 100 × n 100, together about as long as the
arithmetic. Here the batch is split once into one block of rows per thread (as the numba
engine splits a solve) and each thread runs the whole step on its block:

    W = U Bᵀ + b,   x = σ(A x + W) (averaged, α*),   Y = X Cᵀ + c,
    Z = X Aᵀ + W (the forward solve's last product, not recomputed),
    dY = (softmax(Y) − onehot(y)) / batch,   G = dY C,
    λ = G + (λ ⊙ σ'(Z)) A (averaged, ℓ1 residual),   V = λ ⊙ σ'(Z),

with the engine's own per-block solver (:func:`solvers._numba_engine._solve_rows`, so the
iterations and stopping rule are the engine's, sample by sample), then its block's share of
``Vᵀ X``, ``Vᵀ U`` and ``dYᵀ X``; the shares are summed at the end. The loss and ``dY`` are
computed in float64 as in the generic path; everything else in the network's dtype.
Samples whose adjoint misses its tolerance are finished with a dense solve, as in the
generic path. Tested against the generic path in ``tests/training/test_fused.py``.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
from numba import njit, prange

from contraction._parallel import PRANGE_ONLY
from contraction._steps import _optimal_alpha

from .._activations import IDENTITY
from .._api import solve_adjoint
from .._numba_engine import (METHOD_CODES, MIN_BLOCK_ROWS, MIXED_METHODS, _mixed_setup, _renamed, _solve_rows,
                             _thread_count, act_derivative)
from .._threads import blas_threads

__all__ = ["fusable", "fused_loss_and_grad"]

_AVERAGE = METHOD_CODES["average"]


def _step_impl(data, labels, rows, A, AT, BT, b, CT, C, C64, c, alpha, code, slope, atol_f, atol_a, max_iter,
               threads, Mat32f, Kf, Mat32a, Ka):
    # The batch is rows ``rows`` of ``data`` and ``labels``; each thread gathers its own block
    # (the rows of a shuffled batch are scattered over the data set: two cores fetch them
    # from memory faster than one, and each block lands in the cache of the core using it).
    batch = rows.shape[0]
    m = data.shape[1]
    n = A.shape[0]
    q = C.shape[0]
    dt = data.dtype
    U = np.empty((batch, m), dt)
    y = np.empty(batch, np.int64)
    W = np.empty((batch, n), dt)
    Zf = np.empty((batch, n), dt)
    Yo = np.empty((batch, q), dt)
    dY = np.empty((batch, q))
    G64 = np.empty((batch, n))
    dYt = np.empty((batch, q), dt)
    V = np.empty((batch, n), dt)
    losses = np.empty(batch)
    # Outputs of the engine's block solver: forward (f) and adjoint (a).
    X = np.empty((batch, n), dt)  # every sample is written when its solve stops
    L = np.empty((batch, n), dt)
    Ga = np.empty((batch, n), dt)
    Da = np.empty((batch, n), dt)
    none = np.empty((0, n), dt)
    MinvT = np.zeros((1, 1), dt)
    iters_f = np.zeros(batch, np.int64)
    iters_a = np.zeros(batch, np.int64)
    res_f = np.zeros(batch)
    res_a = np.zeros(batch)
    codes_f = np.full(batch, -1, np.int8)
    codes_a = np.full(batch, -1, np.int8)
    hist = np.full((0, batch), np.nan)

    nblocks = max(1, min(threads, batch // MIN_BLOCK_ROWS))
    size = (batch + nblocks - 1) // nblocks
    gA = np.empty((nblocks, n, n), dt)
    gB = np.empty((nblocks, n, m), dt)
    gC = np.empty((nblocks, q, n), dt)
    for blk in prange(nblocks):
        lo = blk * size
        hi = min(batch, lo + size)
        if lo < hi:
            for s in range(lo, hi):
                U[s] = data[rows[s]]
                y[s] = labels[rows[s]]
            np.dot(U[lo:hi], BT, W[lo:hi])
            for s in range(lo, hi):
                for i in range(n):
                    W[s, i] += b[i]
            _solve_rows(_AVERAGE, AT, W[lo:hi], none, none, MinvT, alpha, code, slope, atol_f, 0.0,
                        max_iter, 0, 1.0, 0, X[lo:hi], iters_f[lo:hi], res_f[lo:hi], codes_f[lo:hi], hist[:, lo:hi],
                        False, Zf[lo:hi], Mat32f, Kf)  # Zf = X Aᵀ + W from the solver's last product
            np.dot(X[lo:hi], CT, Yo[lo:hi])
            for s in range(lo, hi):
                for i in range(n):
                    Da[s, i] = act_derivative(code, slope, Zf[s, i])
                top = -np.inf
                for j in range(q):
                    Yo[s, j] += c[j]
                    top = max(top, float(Yo[s, j]))
                total = 0.0
                for j in range(q):
                    total += math.exp(float(Yo[s, j]) - top)
                lse = top + math.log(total)
                losses[s] = lse - float(Yo[s, y[s]])
                for j in range(q):
                    g = math.exp(float(Yo[s, j]) - lse)
                    if j == y[s]:
                        g -= 1.0
                    dY[s, j] = g / batch
                    dYt[s, j] = dY[s, j]
            np.dot(dY[lo:hi], C64, G64[lo:hi])  # G = dY C in float64, as the generic path
            for s in range(lo, hi):
                for i in range(n):
                    Ga[s, i] = G64[s, i]
            _solve_rows(_AVERAGE, A, Ga[lo:hi], Da[lo:hi], none, MinvT, alpha, IDENTITY, 0.0, atol_a,
                        0.0, max_iter, 1, 1.0, 0, L[lo:hi], iters_a[lo:hi], res_a[lo:hi], codes_a[lo:hi],
                        hist[:, lo:hi], False, none, Mat32a, Ka)
            for s in range(lo, hi):
                for i in range(n):
                    V[s, i] = L[s, i] * act_derivative(code, slope, Zf[s, i])
            np.dot(V[lo:hi].T, X[lo:hi], gA[blk])
            np.dot(V[lo:hi].T, U[lo:hi], gB[blk])
            np.dot(dYt[lo:hi].T, X[lo:hi], gC[blk])
    # Sum the blocks' shares into block 0's, one row of the output per task.
    for i in prange(n):
        for k in range(1, nblocks):
            for j in range(n):
                gA[0, i, j] += gA[k, i, j]
            for j in range(m):
                gB[0, i, j] += gB[k, i, j]
    for i in range(q):
        for k in range(1, nblocks):
            for j in range(n):
                gC[0, i, j] += gC[k, i, j]
    gb = np.zeros(n, dt)
    gc = np.zeros(q, dt)
    for s in range(batch):
        for i in range(n):
            gb[i] += V[s, i]
        for j in range(q):
            gc[j] += dYt[s, j]
    # Solver statistics: mean forward and adjoint iterations, fractions converged.
    stats = np.zeros(4)
    for s in range(batch):
        stats[0] += iters_f[s]
        stats[1] += iters_a[s]
        stats[2] += codes_f[s] == 0
        stats[3] += codes_a[s] == 0
    stats /= batch
    return losses.sum() / batch, gA[0], gB[0], gb, gC[0], gc, Yo, codes_a, U, X, Zf, Ga, L, stats


_step_serial = njit(cache=True)(_renamed(_step_impl, "_step_serial_impl"))
_step_parallel = njit(cache=True, parallel=PRANGE_ONLY)(_renamed(_step_impl, "_step_parallel_impl"))


def fusable(net, loss: str) -> bool:
    """Whether :func:`fused_loss_and_grad` computes what the generic path would."""
    s = net.solver
    return (loss == "cross_entropy" and s.engine == "numba" and s.method == "average"
            and s.adjoint_method == "average")


def fused_loss_and_grad(net, U, targets, rows=None):
    """``net.loss_and_grad(U, targets)`` for a :func:`fusable` network in one compiled call.

    With ``rows`` (the trainer's batch indices), the batch is ``U[rows]``, ``targets[rows]``
    and the arrays are trusted: ``U`` finite and C-contiguous in the network's dtype,
    ``targets`` valid labels (the trainer validates the whole set once, not every batch).
    Adjoint samples that miss their tolerance are finished with a dense solve, and the
    gradients of ``A``, ``B``, ``b`` recomputed, as the generic path does.
    """
    if rows is None:
        U = net._as_inputs(U)
        targets = net._check_labels(targets, U.shape[0])
        rows = np.arange(U.shape[0])
    s = net.solver
    A = np.ascontiguousarray(net.A)
    alpha = _optimal_alpha(A, "average")
    act = net.activation
    AT = np.ascontiguousarray(A.T)
    threads = _thread_count()
    # Mixed products in float64, as solve and solve_adjoint take them by default (the forward
    # product is X Aᵀ, the adjoint's Λ A); None (float32): compiled without them.
    if A.dtype == np.float64 and "average" in MIXED_METHODS:
        mixed = (*_mixed_setup(AT, 0), *_mixed_setup(A, 1))
    else:
        mixed = (None, 0.0, None, 0.0)
    parallel = threads > 1 and rows.shape[0] >= 2 * MIN_BLOCK_ROWS
    kernel = _step_parallel if parallel else _step_serial
    with blas_threads(1) if parallel else contextlib.nullcontext():
        value, gA, gB, gb, gC, gc, Y, codes_a, U, X, Z, G, lam, stats = kernel(
            U, targets.astype(np.int64, copy=False), rows.astype(np.int64, copy=False), A, AT,
            net.B.T, net.b, net.C.T, net.C, net.C.astype(np.float64), net.c, float(alpha), int(act.code),
            float(act.slope), float(s.atol), float(s.adjoint_atol), int(s.max_iter), threads, *mixed)
    if stats[3] < 1.0:
        bad = codes_a != 0
        lam[bad], _ = solve_adjoint(A, Z[bad], G[bad], method="direct", activation=act, check=False)
        V = (lam.astype(np.float64) * act.derivative(Z)).astype(net.dtype)
        gA, gB, gb = V.T @ X, V.T @ U, V.sum(axis=0)
    net.last_stats = {
        "forward_iterations": float(stats[0]),
        "adjoint_iterations": float(stats[1]),
        "forward_converged": float(stats[2]),
        "adjoint_converged": float(stats[3]),
        "logits": Y,
    }
    return float(value), {"A": gA, "B": gB, "b": gb, "C": gC, "c": gc}
