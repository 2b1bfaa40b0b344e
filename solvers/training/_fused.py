"""The training step of the common case in one compiled call per thread block: an averaged
or Anderson forward solve and an averaged adjoint solve on the numba engine, cross-entropy
loss, for a dense layer and for a convolutional one.

The generic path (:meth:`ImplicitNetwork.compute_gradients` with ``fused=False``) does, per
batch, an input product, a forward solve, the loss, an adjoint solve and five gradient
products: a dozen NumPy calls and two trips through the solvers' front door, together about
as long as the arithmetic at batch 100 × n 100, and for a convolution each a single-threaded
pass over the whole batch. Here each thread block of the batch
(:func:`solvers.engine.block_bounds` and :func:`solvers.engine.blas_policy`, the engine's own
split and BLAS policy, and a ``prange`` over the blocks as in the engine) runs the
whole step on its rows in one compiled call:

    W = B u + b,   x = σ(A x + W) (averaged, α* or per-unit steps; or Anderson),   Y = C features(x) + c,
    Z = A x + W (the forward solve's last product, not recomputed),
    dY = (softmax(Y) − onehot(y)) / batch,   G = features*(dY C),
    λ = G + Aᵀ (λ ⊙ σ'(Z)) (averaged, ℓ1 residual),   V = λ ⊙ σ'(Z),

with the engine's block solver (:func:`solvers.engine.solve_block`, so the iterations and
the stopping rule are the engine's, sample by sample), then its block's share of the
gradients of ``A``, ``B`` and ``C``; the shares are summed at the end. What differs between
the layers is four hooks on the layer's parameters (:class:`Params`, :class:`ConvParams`, and
:class:`HiddenConvParams` for a convolutional layer read out through a hidden ReLU layer,
``Y = C relu(D f + d) + c``, whose products with ``D`` are BLAS calls on the block's rows):
:func:`inject` (``W``), :func:`readout` (``Y``), :func:`state_gradient` (``G``) and
:func:`gradient_shares`. The loss and ``dY`` are computed in float64 as in the generic path,
and so are a convolutional layer's features, readout, state gradient and kernel gradients
(a hidden readout layer's pre-activations too; its backward products, as the generic path's,
in the network's dtype); everything else in the network's dtype. Samples whose adjoint misses its tolerance are
finished with a dense solve, as in the generic path. Tested against the generic path in
``tests/training/test_fused.py``.
"""

from __future__ import annotations

import collections
import math

import numpy as np
from numba import njit, prange
from numba.extending import overload

import contraction
from solvers import solve_adjoint, unit_steps
from solvers.engine import (
    ANDERSON_MEMORY,
    IDENTITY,
    PRANGE_ONLY,
    SUCCESS,
    Adjoint,
    Anderson,
    Averaged,
    AveragedUnits,
    Forward,
    Output,
    Stopping,
    activation,
    anderson_step,
    blas_policy,
    block_bounds,
    conv,
    copy_row,
    copy_rows,
    correlate,
    correlate_grad,
    serial_work,
    use_blocks,
    dense,
    dsigma,
    solve_block,
)


__all__ = ["fusable", "fused_gradients"]

#: A dense layer's parameters as the kernel reads them (``BT = Bᵀ``, ``CT = Cᵀ``, ``C64``:
#: ``C`` in float64 for ``G = dY C``).
Params = collections.namedtuple("Params", ["BT", "b", "CT", "C64", "c"])
#: A convolutional layer's (:class:`ConvImplicitNetwork`): the input kernel ``B`` (channels,
#: C_in, k_B, k_B), ``b`` per channel, ``C64`` (n_out, features) in float64, ``c``; the input
#: images ``Hin × Win``, the state's ``H × W``, the padding, the input convolution's stride, the
#: pool and the size ``k`` of the state's kernel ``A``.
ConvParams = collections.namedtuple("ConvParams", ["B", "b", "C64", "c", "Hin", "Win", "H", "W", "circular",
                                                   "stride", "pool", "k"])
#: A convolutional layer whose readout has a hidden ReLU layer, ``C relu(D f + d) + c``: the
#: fields of :class:`ConvParams` (``C64`` then (n_out, hidden)), ``DT64`` = ``Dᵀ`` (features,
#: hidden) in float64 for the forward product, ``D`` (hidden, features) in the network's dtype
#: for the backward ones (as the generic path), ``d`` (hidden,).
HiddenConvParams = collections.namedtuple("HiddenConvParams", ConvParams._fields + ("DT64", "D", "d"))
#: Per-sample work and outputs of the step, batch-wide (each block writes its own rows); ``F``
#: a convolutional layer's pooled features (float64; no columns for a dense layer); ``P`` and
#: ``dP`` a hidden readout layer's pre-activations (float64) and their gradients (the network's
#: dtype; no columns without one).
Work = collections.namedtuple("Work", ["U", "y", "W", "X", "Z", "Y", "dY", "dYt", "G", "D", "L", "V", "losses",
                                       "iters_f", "res_f", "codes_f", "iters_a", "res_a", "codes_a", "hist", "F",
                                       "P", "dP"])
#: Each block's share of the gradients of ``A``, ``B``, ``C`` and a hidden readout layer's
#: ``D``: (blocks, rows, columns), a kernel's share as (channels, C_in·k·k) (``gD`` with no
#: rows without a hidden layer).
Shares = collections.namedtuple("Shares", ["gA", "gB", "gC", "gD"])


# -- what differs between the layers ------------------------------------------------------------

def inject(params, U, W):
    """``W = B u + b`` for the rows of ``U`` (compiled code only)."""
    raise NotImplementedError("inject runs in compiled code only")


def readout(params, X, F, Y, P):
    """``Y = C features(x) + c`` for the rows of ``X`` (``F``: the features where the layer keeps
    them; ``P``: a hidden readout layer's pre-activations; compiled code only)."""
    raise NotImplementedError("readout runs in compiled code only")


def state_gradient(params, dY, G, P, dP):
    """``G = features*(dY C)`` for the rows of ``dY`` (through a hidden readout layer at its
    pre-activations ``P``, keeping their gradients in ``dP``; compiled code only)."""
    raise NotImplementedError("state_gradient runs in compiled code only")


def gradient_shares(params, work, lo, hi, shares, blk):
    """The block's shares of the gradients of ``A``, ``B`` and ``C`` (compiled code only)."""
    raise NotImplementedError("gradient_shares runs in compiled code only")


def _dense_layer(params) -> bool:
    return getattr(params, "instance_class", None) is Params


def _hidden_layer(params) -> bool:
    return getattr(params, "instance_class", None) is HiddenConvParams


@njit(cache=True, nogil=True)
def _pool_rows(params, X, F):
    """``F = pool(x)`` (float64 block means, channel-major) for the rows of ``X``."""
    p = params.pool
    h, w = params.H // p, params.W // p
    channels = X.shape[1] // (params.H * params.W)
    for s in range(X.shape[0]):
        f = F[s]
        f[:] = 0.0
        for c in range(channels):
            for i in range(params.H):
                row = X[s, (c * params.H + i) * params.W:(c * params.H + i + 1) * params.W]
                out = f[(c * h + i // p) * w:(c * h + i // p + 1) * w]
                for j in range(params.W):
                    out[j // p] += row[j]
        for e in range(f.shape[0]):
            f[e] /= p * p


@njit(cache=True, nogil=True)
def _unpool_rows(params, g, G, s):
    """Row ``s`` of ``G``: the feature gradients ``g`` spread over their blocks, over ``pool²``."""
    p = params.pool
    h, w = params.H // p, params.W // p
    channels = G.shape[1] // (params.H * params.W)
    for c in range(channels):
        for i in range(params.H):
            src = g[(c * h + i // p) * w:(c * h + i // p + 1) * w]
            row = G[s, (c * params.H + i) * params.W:(c * params.H + i + 1) * params.W]
            for j in range(params.W):
                row[j] = src[j // p] / (p * p)


@overload(inject)
def _inject(params, U, W):
    if _dense_layer(params):
        def dense_layer(params, U, W):
            np.dot(U, params.BT, W)
            for s in range(W.shape[0]):
                for i in range(W.shape[1]):
                    W[s, i] += params.b[i]
        return dense_layer

    def conv_layer(params, U, W):
        channels, pixels = params.B.shape[0], params.H * params.W
        if params.stride == 1:
            correlate(params.B, params.Hin, params.Win, params.circular, U, W)
        else:  # the convolution on the input grid, then every stride-th pixel
            full = np.empty((U.shape[0], channels * params.Hin * params.Win), W.dtype)
            correlate(params.B, params.Hin, params.Win, params.circular, U, full)
            for s in range(W.shape[0]):
                for c in range(channels):
                    for i in range(params.H):
                        for j in range(params.W):
                            W[s, (c * params.H + i) * params.W + j] = full[
                                s, (c * params.Hin + i * params.stride) * params.Win + j * params.stride]
        for s in range(W.shape[0]):
            for c in range(channels):
                for e in range(c * pixels, (c + 1) * pixels):
                    W[s, e] += params.b[c]
    return conv_layer


@overload(readout)
def _readout(params, X, F, Y, P):
    if _dense_layer(params):
        def dense_layer(params, X, F, Y, P):
            np.dot(X, params.CT, Y)
            for s in range(Y.shape[0]):
                for j in range(Y.shape[1]):
                    Y[s, j] += params.c[j]
        return dense_layer

    if _hidden_layer(params):
        def hidden_layer(params, X, F, Y, P):
            _pool_rows(params, X, F)
            copy_rows(P, np.dot(F, params.DT64))  # D f, a BLAS product over the block's rows
            for s in range(X.shape[0]):
                for u in range(P.shape[1]):
                    P[s, u] += params.d[u]
                for j in range(Y.shape[1]):
                    y = 0.0
                    for u in range(P.shape[1]):
                        if P[s, u] > 0.0:
                            y += params.C64[j, u] * P[s, u]
                    Y[s, j] = y + params.c[j]
        return hidden_layer

    def conv_layer(params, X, F, Y, P):
        _pool_rows(params, X, F)
        for s in range(X.shape[0]):
            f = F[s]
            for j in range(Y.shape[1]):  # C f + c: a few dozen dot products (no BLAS call to compile)
                y = 0.0
                for e in range(f.shape[0]):
                    y += params.C64[j, e] * f[e]
                Y[s, j] = y + params.c[j]
    return conv_layer


@overload(state_gradient)
def _state_gradient(params, dY, G, P, dP):
    if _dense_layer(params):
        def dense_layer(params, dY, G, P, dP):
            G64 = np.dot(dY, params.C64)  # G = dY C in float64, as the generic path
            for s in range(G.shape[0]):
                for i in range(G.shape[1]):
                    G[s, i] = G64[s, i]
        return dense_layer

    if _hidden_layer(params):
        def hidden_layer(params, dY, G, P, dP):
            for s in range(G.shape[0]):
                for u in range(P.shape[1]):
                    g = 0.0
                    if P[s, u] > 0.0:
                        for j in range(dY.shape[1]):
                            g += dY[s, j] * params.C64[j, u]
                    dP[s, u] = g
            dF = np.dot(dP, params.D)  # in the network's dtype, as the generic path
            for s in range(G.shape[0]):
                _unpool_rows(params, dF[s], G, s)
        return hidden_layer

    def conv_layer(params, dY, G, P, dP):
        g = np.empty(params.C64.shape[1])  # dY C of one row, in float64
        for s in range(G.shape[0]):
            g[:] = 0.0
            for j in range(dY.shape[1]):
                d = dY[s, j]
                for e in range(g.shape[0]):
                    g[e] += d * params.C64[j, e]
            _unpool_rows(params, g, G, s)
    return conv_layer


@overload(gradient_shares)
def _gradient_shares(params, work, lo, hi, shares, blk):
    if _dense_layer(params):
        def dense_layer(params, work, lo, hi, shares, blk):
            np.dot(work.V[lo:hi].T, work.X[lo:hi], shares.gA[blk])
            np.dot(work.V[lo:hi].T, work.U[lo:hi], shares.gB[blk])
            np.dot(work.dYt[lo:hi].T, work.X[lo:hi], shares.gC[blk])
        return dense_layer

    if _hidden_layer(params):
        def hidden_layer(params, work, lo, hi, shares, blk):
            _kernel_shares(params, work, lo, hi, shares, blk)
            _readout_share(work.dYt[lo:hi], np.maximum(work.P[lo:hi], 0.0), shares.gC[blk])
            # gD = dPᵀ F, in the network's dtype (as the generic path)
            copy_rows(shares.gD[blk], np.dot(work.dP[lo:hi].T, work.F[lo:hi].astype(work.dP.dtype)))
        return hidden_layer

    def conv_layer(params, work, lo, hi, shares, blk):
        _kernel_shares(params, work, lo, hi, shares, blk)
        _readout_share(work.dYt[lo:hi], work.F[lo:hi], shares.gC[blk])
    return conv_layer


@njit(cache=True, nogil=True)
def _readout_share(dY, H, gC):
    """``gC = dYᵀ H`` (float64 sums) of the readout ``C h + c`` over a block's rows."""
    gC[:] = 0.0
    for s in range(dY.shape[0]):
        for j in range(gC.shape[0]):
            d = float(dY[s, j])
            for e in range(gC.shape[1]):
                gC[j, e] += d * H[s, e]


@njit(cache=True, nogil=True)
def _kernel_shares(params, work, lo, hi, shares, blk):
    """A convolutional layer's shares of the gradients of the kernels ``A`` and ``B``."""
    C, C_in, kB, _ = params.B.shape
    k = params.k
    V = work.V[lo:hi]
    correlate_grad(V, work.X[lo:hi], k, params.H, params.W, params.circular, shares.gA[blk].reshape(C, C, k, k))
    if params.stride > 1:  # the stride's adjoint: V spread onto the input grid, zeros between
        up = np.zeros((hi - lo, C * params.Hin * params.Win), V.dtype)
        for s in range(hi - lo):
            for c in range(C):
                for i in range(params.H):
                    for j in range(params.W):
                        up[s, (c * params.Hin + i * params.stride) * params.Win + j * params.stride] = V[
                            s, (c * params.H + i) * params.W + j]
    else:
        up = V
    correlate_grad(up, work.U[lo:hi], kB, params.Hin, params.Win, params.circular,
                   shares.gB[blk].reshape(C, C_in, kB, kB))


# -- the step ----------------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _step_block(blk, lo, hi, data, labels, rows, op, params, act, identity, step_f, step_a, stop_f, stop_a, work,
                shares):
    """The whole step on rows ``lo:hi`` of the batch ``data[rows]``; writes the block's rows of
    ``work`` and its share ``blk`` of ``shares``. The rows of a shuffled batch are scattered
    over the data set: each block gathers its own (onto the core that uses them)."""
    n = work.X.shape[1]
    q = work.Y.shape[1]
    batch = rows.shape[0]
    none = work.X[:0]
    for s in range(lo, hi):
        copy_row(work.U[s], data[rows[s]])
        work.y[s] = labels[rows[s]]
    inject(params, work.U[lo:hi], work.W[lo:hi])
    solve_block(op, Forward(work.W[lo:hi]), act, step_f, stop_f, none,
                Output(work.X[lo:hi], work.iters_f[lo:hi], work.res_f[lo:hi], work.codes_f[lo:hi],
                       work.hist[lo:hi], work.Z[lo:hi]))  # Z = A x + W from the solver's last product
    readout(params, work.X[lo:hi], work.F[lo:hi], work.Y[lo:hi], work.P[lo:hi])
    for s in range(lo, hi):
        for i in range(n):
            work.D[s, i] = dsigma(act, work.Z[s, i])
        top = -np.inf
        for j in range(q):
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
    state_gradient(params, work.dY[lo:hi], work.G[lo:hi], work.P[lo:hi], work.dP[lo:hi])
    solve_block(op, Adjoint(work.G[lo:hi], work.D[lo:hi]), identity, step_a, stop_a, none,
                Output(work.L[lo:hi], work.iters_a[lo:hi], work.res_a[lo:hi], work.codes_a[lo:hi],
                       work.hist[lo:hi], none))
    for s in range(lo, hi):
        for i in range(n):
            work.V[s, i] = work.L[s, i] * work.D[s, i]
    gradient_shares(params, work, lo, hi, shares, blk)


@njit(cache=True, parallel=PRANGE_ONLY)
def _step_blocks(bounds, data, labels, rows, op, params, act, identity, step_f, step_a, stop_f, stop_a, work, shares):
    """:func:`_step_block` on each block ``bounds[c] = (lo, hi)``, one block per thread, then
    the blocks' shares summed into share 0 (one row of the output per task); returns
    :func:`_summary`."""
    for c in prange(bounds.shape[0]):
        _step_block(np.int64(c), bounds[c, 0], bounds[c, 1], data, labels, rows, op, params, act, identity, step_f,
                    step_a, stop_f, stop_a, work, shares)
    _sum_shares(shares)
    return _summary(work)


@njit(cache=True, parallel=PRANGE_ONLY)
def _sum_shares(shares):
    """``shares.gX[0] += shares.gX[k]`` for every block ``k > 0``, rows in parallel."""
    gA, gB, gC, gD = shares
    for i in prange(gD.shape[1]):
        for k in range(1, gD.shape[0]):
            for j in range(gD.shape[2]):
                gD[0, i, j] += gD[k, i, j]
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
    return (loss == "cross_entropy" and solver.engine == "numba" and solver.method in ("average", "anderson")
            and solver.adjoint_method == "average")


def _layer(net, dt):
    """``(op, params, diagonal minimum, shares' shapes, features)`` of the network's layer."""
    A = np.ascontiguousarray(net.A)
    n, m, q = net.n_hidden, net.n_in, net.n_out
    if net.DENSE:
        params = Params(net.B.T, net.b, net.C.T, net.C.astype(np.float64), net.c)  # transposed views: no copies
        return (dense(A, forward=True, adjoint=True), params, float(np.diagonal(A).min()),
                ((n, n), (n, m), (q, n), (0, 0)), 0)
    C, C_in, kB, _ = net.B.shape
    k = A.shape[-1]
    _, Hin, Win = net.in_shape
    H, W = net.state_shape
    p = k // 2
    circular = net.padding == "circular"
    fields = (np.ascontiguousarray(net.B), net.b, net.C.astype(np.float64), net.c, Hin, Win, H, W, circular,
              net.stride, net.pool, k)
    hidden = getattr(net, "readout_hidden", 0)
    if hidden:
        params = HiddenConvParams(*fields, np.ascontiguousarray(net.D.T, dtype=np.float64),
                                  np.ascontiguousarray(net.D), net.d.astype(np.float64))
        features = net.D.shape[1]
    else:
        params = ConvParams(*fields)
        features = net.C.shape[1]
    return (conv(net.state_operator(), dt), params, float(A[np.arange(C), np.arange(C), p, p].min()),
            ((C, C * k * k), (C, C_in * kB * kB), (q, net.C.shape[1]), (hidden, features if hidden else 0)),
            features)


def fused_gradients(net, U, targets, rows, solver):
    """``(value, grads, stats)`` of the cross-entropy loss of the batch ``U[rows]``,
    ``targets[rows]`` for a :func:`fusable` ``solver``; ``U`` finite and C-contiguous in the
    network's dtype, ``targets`` valid int64 labels (validated by the caller)."""
    dt = np.dtype(net.dtype)
    batch = rows.shape[0]
    n, m, q = net.n_hidden, net.n_in, net.n_out
    op, params, diagonal_min, share_shapes, features = _layer(net, dt)
    hidden = share_shapes[3][0]
    act = activation(net.activation.code, net.activation.slope)
    if solver.alpha == "per_unit":  # one step per unit, for the averaged solves
        step_a = AveragedUnits(unit_steps(net.state_operator()).astype(dt))
    else:
        step_a = Averaged(float(contraction.optimal_alpha_from_diagonal(diagonal_min)))
    step_f = step_a
    if solver.method == "anderson":  # solvers.solve's Anderson: alpha*, its safeguard, the default memory
        alpha, accept = anderson_step(net.state_operator())
        step_f = Anderson(alpha, ANDERSON_MEMORY, accept)
    stop_f = Stopping(float(solver.atol), 0.0, int(solver.max_iter), False)
    stop_a = Stopping(float(solver.adjoint_atol), 0.0, int(solver.max_iter), False)
    e = np.empty
    work = Work(e((batch, m), dt), e(batch, np.int64), e((batch, n), dt), e((batch, n), dt), e((batch, n), dt),
                e((batch, q), dt), e((batch, q)), e((batch, q), dt), e((batch, n), dt), e((batch, n), dt),
                e((batch, n), dt), e((batch, n), dt), e(batch), np.zeros(batch, np.int64), np.zeros(batch),
                np.full(batch, -1, np.int8), np.zeros(batch, np.int64), np.zeros(batch),
                np.full(batch, -1, np.int8), e((batch, 0)), e((batch, features)), e((batch, hidden)),
                e((batch, hidden), dt))
    bounds = block_bounds(batch)
    k_blocks = len(bounds)
    # a dense layer's shares in its dtype (BLAS products), a convolution's in float64 (sums)
    share_dt = dt if net.DENSE else np.float64
    shares = Shares(*(e((k_blocks, *shape), share_dt) for shape in share_shapes))
    rows = rows.astype(np.int64, copy=False)
    identity = activation(IDENTITY, 0.0)
    args = (bounds, U, targets, rows, op, params, act, identity, step_f, step_a, stop_f, stop_a, work, shares)
    variant = ("fused step", type(params).__name__, type(act).__name__, type(step_f).__name__, type(step_a).__name__,
               dt.char)
    parallel = use_blocks(variant, k_blocks, _step_blocks, args)
    with blas_policy(k_blocks if parallel else 1, batch * n * n if net.DENSE else batch * features * hidden):
        if parallel:
            loss, gb, gc, iters_f, iters_a, ok_f, ok_a = _step_blocks(*args)
        else:  # the same blocks one after the other: the same products, the same results
            with serial_work(variant):
                for c, (lo, hi) in enumerate(bounds):
                    _step_block(c, lo, hi, U, targets, rows, op, params, act, identity, step_f, step_a, stop_f,
                                stop_a, work, shares)
                for g in shares:  # summed in the order of _sum_shares
                    for k in range(1, k_blocks):
                        g[0] += g[k]
                loss, gb, gc, iters_f, iters_a, ok_f, ok_a = _summary(work)
    grads = {"A": shares.gA[0].reshape(net.A.shape), "B": shares.gB[0].reshape(net.B.shape), "b": gb,
             "C": shares.gC[0], "c": gc}
    if hidden:
        grads.update(D=shares.gD[0], d=work.dP.sum(axis=0, dtype=np.float64))
    if ok_a < batch:  # outside the averaged adjoint's guarantee: finish the failed samples exactly
        bad = work.codes_a != SUCCESS
        lam = work.L.copy()
        lam[bad], _ = solve_adjoint(net.state_operator(), work.Z[bad], work.G[bad], method="direct",
                                    activation=net.activation, check=False)
        V = (lam.astype(np.float64) * net.activation.derivative(work.Z)).astype(dt)
        from ._network import ForwardPass  # (_network imports this module)

        fp = ForwardPass(work.U, work.X, work.Z, work.Y, work.iters_f, work.codes_f == SUCCESS, work.F, work.P)
        exact = net._parameter_gradients(fp, V, work.dYt)
        grads.update(A=exact["A"], B=exact["B"], b=exact["b"])
    elif not net.DENSE:  # Σ V per channel (the sums per state unit, summed over the pixels)
        grads["b"] = gb.astype(np.float64).reshape(len(net.b), -1).sum(axis=1)
    stats = {
        "forward_iterations": iters_f / batch,
        "adjoint_iterations": iters_a / batch,
        "forward_converged": ok_f / batch,
        "adjoint_converged": ok_a / batch,
        "logits": work.Y,
    }
    return loss / batch, {k: g.astype(dt, copy=False) for k, g in grads.items()}, stats
