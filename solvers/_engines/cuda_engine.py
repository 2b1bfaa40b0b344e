"""The CUDA engine (``numba.cuda``): one thread block per sample, the whole solve in one launch.

Each block keeps its sample's iterate in device memory and runs the iteration loop itself:
its threads split the matrix-vector product (coalesced over the output index), reduce the
residual in shared memory, apply the stopping rule and take the step. Convergence is
therefore checked on the device at every iteration with no host round-trip, and a finished
sample's block simply exits. The scalar activation, prox and small-solve helpers are the
numba engine's ``@njit`` functions, which numba compiles for the device when a kernel calls
them. Mirrors :mod:`.numpy_engine` (the specification); the stopping rule is
:func:`.kernels.classify`, shared with the numba engine.

Tested in CI under ``NUMBA_ENABLE_CUDASIM=1`` (numba's simulator).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from .kernels import ANDERSON_REG, IDENTITY, RUNNING, act_prox, act_value, classify, solve_small_py
from .task import Task

__all__ = ["run", "require_gpu", "threads_per_block"]

#: Upper bound on threads per block (shared reduction buffers are sized by it).
TPB_MAX = 128
#: Threads per block under the simulator, where each thread is a Python thread.
TPB_SIMULATOR = 2
_TINY = float(np.finfo(np.float64).tiny)
# Array arguments: compile the same source as a device function (the simulator cannot pass
# its fake arrays to a CPU dispatcher).
_solve_small_device = cuda.jit(device=True)(solve_small_py)

#: The kernel's method codes.
METHOD_CODES = {"picard": 0, "average": 1, "forward_backward": 2, "peaceman_rachford": 3, "douglas_rachford": 4,
                "anderson": 5}
PEACEMAN_RACHFORD = METHOD_CODES["peaceman_rachford"]
DOUGLAS_RACHFORD = METHOD_CODES["douglas_rachford"]
FORWARD_BACKWARD = METHOD_CODES["forward_backward"]


def _simulated() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def require_gpu() -> None:
    """Raise a clear ``RuntimeError`` when no CUDA device (or simulator) is usable."""
    if _simulated():
        return
    if not cuda.is_available():
        raise RuntimeError(
            "engine='cuda' needs an NVIDIA GPU with a working CUDA driver, and numba.cuda found "
            "none on this machine; use engine='numba' (CPU), or set NUMBA_ENABLE_CUDASIM=1 to run "
            "the CUDA kernels in numba's (slow) simulator"
        )


def threads_per_block(n: int) -> int:
    """A power of two ≥ min(n, cap): the tree reductions need a power of two."""
    cap = TPB_SIMULATOR if _simulated() else TPB_MAX
    t = 1
    while t < min(n, cap):
        t *= 2
    return t


@cuda.jit(device=True)
def _block_reduce(red, val, t, nt, use_max):
    """Block-wide max (NaN-propagating) or sum of ``val``; every thread gets the result."""
    red[t] = val
    cuda.syncthreads()
    stride = nt // 2
    while stride > 0:
        if t < stride:
            a = red[t]
            b = red[t + stride]
            if use_max:
                red[t] = a if (a != a or a >= b) else b
            else:
                red[t] = a + b
        cuda.syncthreads()
        stride //= 2
    out = red[0]
    cuda.syncthreads()
    return out


@cuda.jit(device=True)
def _matvec(src, scale, scaled, Mat, add, out, s, t, nt):
    """``out[s] = (src[s] ⊙ scale[s]) · Mat + add[s]``, threads over the output index."""
    n = out.shape[1]
    for i in range(t, n, nt):
        acc = 0.0
        for j in range(n):
            v = src[s, j] * scale[s, j] if scaled else src[s, j]
            acc += v * Mat[j, i]
        out[s, i] = acc + add[s, i]
    cuda.syncthreads()


@cuda.jit
def _kernel(method, Mat, W, D, X, U, Z, Y, MinvT, alpha, code, slope, atol, rtol, max_iter, norm,
            accept, record, iters, res, codes, hist, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, m):
    s = cuda.blockIdx.x
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    n = X.shape[1]
    scaled = D.shape[0] > 0
    splitting = method == PEACEMAN_RACHFORD or method == DOUGLAS_RACHFORD
    red = cuda.shared.array(TPB_MAX, float64)
    ctl = cuda.shared.array(3, float64)  # flag, first residual, anderson acceptance
    if splitting:  # u0 = (1 − α) x0 + α (A x0 + w)
        _matvec(X, D, scaled, Mat, W, Z, s, t, nt)
        for i in range(t, n, nt):
            U[s, i] = (1.0 - alpha) * X[s, i] + alpha * Z[s, i]
        cuda.syncthreads()
    for k in range(max_iter + 1):
        if splitting:
            for i in range(t, n, nt):
                X[s, i] = act_prox(code, slope, alpha, U[s, i])
            cuda.syncthreads()
        _matvec(X, D, scaled, Mat, W, Z, s, t, nt)
        r = 0.0
        xn = 0.0
        for i in range(t, n, nt):
            d = abs(act_value(code, slope, Z[s, i]) - X[s, i])
            if not math.isfinite(d):
                d = math.inf  # reported as NONFINITE, like the numpy specification
            ax = abs(X[s, i])
            if norm == 0:
                r = d if (d != d or d > r) else r
                xn = max(xn, ax)
            else:
                r += d
                xn += ax
        r = _block_reduce(red, r, t, nt, norm == 0)
        xn = _block_reduce(red, xn, t, nt, norm == 0)
        if t == 0:
            if k == 0:
                ctl[1] = r
            flag = classify(k, r, atol + rtol * xn, ctl[1], max_iter)
            ctl[0] = flag
            if record:
                hist[k, s] = r
            if flag != RUNNING:
                res[s] = r
                iters[s] = k
                codes[s] = flag
        cuda.syncthreads()
        if ctl[0] != RUNNING:
            return
        if method < FORWARD_BACKWARD:
            for i in range(t, n, nt):
                X[s, i] += alpha * (act_value(code, slope, Z[s, i]) - X[s, i])
        elif method == FORWARD_BACKWARD:
            for i in range(t, n, nt):
                X[s, i] = act_prox(code, slope, alpha, (1.0 - alpha) * X[s, i] + alpha * Z[s, i])
        elif splitting:  # v = 2x − u; y = M⁻¹(v + α w); PR: u = 2y − v; DR: u = u + y − x
            for i in range(t, n, nt):
                Y[s, i] = 2.0 * X[s, i] - U[s, i] + alpha * W[s, i]
            cuda.syncthreads()
            for i in range(t, n, nt):
                acc = 0.0
                for j in range(n):
                    acc += Y[s, j] * MinvT[j, i]
                Z[s, i] = acc
            cuda.syncthreads()
            for i in range(t, n, nt):
                if method == PEACEMAN_RACHFORD:
                    U[s, i] = 2.0 * Z[s, i] - (2.0 * X[s, i] - U[s, i])
                else:
                    U[s, i] = U[s, i] + Z[s, i] - X[s, i]
        else:
            _anderson_block(s, t, nt, X, Z, r, alpha, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, red, ctl, code, slope)
        cuda.syncthreads()


@cuda.jit(device=True)
def _anderson_block(s, t, nt, X, Z, r, alpha, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, red, ctl, code, slope):
    """Block-parallel version of ``numba_engine._anderson_step`` for sample ``s``."""
    n = X.shape[1]
    if t == 0:
        ctl[2] = 1.0 if (forced[s] or r <= accept * rp[s]) else 0.0
    cuda.syncthreads()
    if ctl[2] == 0.0:
        for i in range(t, n, nt):
            X[s, i] = gp[s, i]
        cuda.syncthreads()
        if t == 0:
            forced[s] = True
            cnt[s] = 0
            pos[s] = 0
        return
    has_prev = rp[s] < math.inf
    p = pos[s]
    for i in range(t, n, nt):
        g = X[s, i] + alpha * (act_value(code, slope, Z[s, i]) - X[s, i])
        f = g - X[s, i]
        if has_prev:
            dF[s, p, i] = f - fp[s, i]
            dG[s, p, i] = g - gp[s, i]
        fp[s, i] = f
        gp[s, i] = g
    cuda.syncthreads()
    if t == 0 and has_prev:
        pos[s] = (p + 1) % m
        cnt[s] = min(cnt[s] + 1, m)
    cuda.syncthreads()
    k = cnt[s]
    tr = 0.0
    for a in range(k):
        for c in range(a, k):
            part = 0.0
            for i in range(t, n, nt):
                part += dF[s, a, i] * dF[s, c, i]
            val = _block_reduce(red, part, t, nt, False)
            if t == 0:
                H[s, a, c] = val
                H[s, c, a] = val
        tr += H[s, a, a]
        part = 0.0
        for i in range(t, n, nt):
            part += dF[s, a, i] * fp[s, i]
        val = _block_reduce(red, part, t, nt, False)
        if t == 0:
            hb[s, a] = val
    cuda.syncthreads()
    if t == 0 and k > 0:
        reg = ANDERSON_REG * tr / k + _TINY
        for a in range(k):
            H[s, a, a] += reg
        _solve_small_device(H[s], hb[s], k)
    cuda.syncthreads()
    for i in range(t, n, nt):
        x = gp[s, i]
        for a in range(k):
            x -= hb[s, a] * dG[s, a, i]
        X[s, i] = x
    if t == 0:
        rp[s] = r
        forced[s] = False


def run(task: Task):
    """Same contract as :func:`.numpy_engine.run`."""
    require_gpu()
    if not task.dense:
        raise ValueError(f"engine='cuda' does not solve on a convolution ({task.op!r}) yet; use engine='numba' "
                         "(or 'numpy'), or pass the dense matrix op.to_dense() for small images")
    W = task.rhs
    batch, n = W.shape
    dt = W.dtype
    forward = task.kind == "forward"
    Mat = np.ascontiguousarray(task.op.T if forward else task.op)
    code, slope = (task.activation.code, task.activation.slope) if forward else (IDENTITY, 0.0)
    mcode = METHOD_CODES[task.method]
    splitting = mcode in (PEACEMAN_RACHFORD, DOUGLAS_RACHFORD)
    anderson = task.method == "anderson"
    m = task.memory if anderson else 1
    nb = batch if splitting else 1
    na = batch if anderson else 1
    D = np.zeros((0, n), dt) if forward else task.D
    MinvT = task.resolvent if task.resolvent is not None else np.zeros((1, 1), dt)
    d = cuda.to_device
    dX = d(np.zeros_like(W) if task.x0 is None else np.ascontiguousarray(task.x0))
    dZ = cuda.device_array((batch, n), dt)
    dU = cuda.device_array((nb, n), dt)
    dY = cuda.device_array((nb, n), dt)
    iters = d(np.zeros(batch, np.int64))
    res = d(np.zeros(batch, np.float64))
    codes = d(np.full(batch, RUNNING, np.int8))
    hist = d(np.full((task.max_iter + 1 if task.record else 0, batch), np.nan))
    gp, fp = d(np.zeros((na, n), dt)), d(np.zeros((na, n), dt))
    rp, forced = d(np.full(na, np.inf)), d(np.ones(na, np.bool_))
    dF, dG = d(np.zeros((na, m, n), dt)), d(np.zeros((na, m, n), dt))
    cnt, pos = d(np.zeros(na, np.int64)), d(np.zeros(na, np.int64))
    H, hb = d(np.zeros((na, m, m))), d(np.zeros((na, m)))
    _kernel[batch, threads_per_block(n)](
        mcode, d(Mat), d(W), d(D), dX, dU, dZ, dY, d(MinvT), float(task.alpha), int(code), float(slope),
        float(task.atol), float(task.rtol), int(task.max_iter), 0 if forward else 1, float(task.accept),
        bool(task.record), iters, res, codes, hist, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, int(m),
    )
    X = dX.copy_to_host()
    iters_h = iters.copy_to_host()
    hist_h = hist.copy_to_host()
    if task.record:
        hist_h = hist_h[: int(iters_h.max()) + 1].copy()
    return X, iters_h, res.copy_to_host(), codes.copy_to_host(), (hist_h if task.record else None)
