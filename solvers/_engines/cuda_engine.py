"""The CUDA engine (``numba.cuda``): one thread block per sample, the whole solve in one launch.

Each block keeps its sample's iterate in device memory and runs the iteration loop itself:
its threads split the operator's product (over the output index), reduce the residual in
shared memory, apply the stopping rule and take the step. Convergence is therefore checked on
the device at every iteration with no host round-trip, and a finished sample's block simply
exits. The scalar activation, prox and small-solve helpers are the numba engine's ``@njit``
functions, which numba compiles for the device when a kernel calls them. Mirrors
:mod:`.numpy_engine` (the specification); the stopping rule is :func:`.kernels.classify`,
shared with the numba engine.

The loop meets the operator only through two device functions, as the numba engine meets it
through :mod:`.operators`: ``product`` (``z = (x ⊙ d) M + w``) and ``resolvent``
(``y = v M⁻ᵀ``, the splittings). :func:`_solver` builds one kernel per operator from the same
loop source: :data:`_SOLVE_DENSE` over a :class:`DenseOp` (a matrix) and :data:`_SOLVE_CONV`
over a :class:`ConvOp` (a :class:`contraction.Conv2d`: a direct correlation per output pixel,
and for circular padding the resolvent per frequency by DFTs written as sums, as
:func:`.operators._inverse_symbol_apply` does on the CPU).

:func:`run_device` runs the same kernels on device memory in place (CUDA tensors, through
``__cuda_array_interface__``) on the caller's stream, for the PyTorch layer.

Tested in CI under ``NUMBA_ENABLE_CUDASIM=1`` (numba's simulator).
"""

from __future__ import annotations

import collections
import contextlib
import math
import sys

import numpy as np
from numba import cuda, float64

from contraction import Conv2d

from .kernels import ANDERSON_REG, FLUSH, IDENTITY, RUNNING, act_derivative, act_prox, act_value, classify, solve_small_py
from .operators import _half_spectrum_weights, _twiddles, conv
from .task import Task

__all__ = ["run", "run_device", "device_array", "derivative_device", "require_gpu", "threads_per_block"]

#: Upper bound on threads per block (CUDA's own limit).
TPB_MAX = 1024
#: Threads per block of a solve on a GPU (a power of two, at most TPB_MAX): a block holds one
#: sample, so this sets how many threads share its product. Its dynamic shared memory holds
#: one float64 per thread and three more (:func:`shared_slots`). ``python benchmarks/gpu_conv_check.py
#: --threads-per-block 128,256,512,1024`` times the choices on a GPU.
TPB_CAP = 128
#: Threads per block under the simulator, where each thread is a Python thread.
TPB_SIMULATOR = 2
#: The interpreter's thread switch interval (s) while a simulated kernel runs. The simulator's
#: block manager polls its threads for ``syncthreads`` while holding the GIL, so at Python's
#: default (5 ms) every barrier waits for the next forced switch (benchmarks/README.md).
SIMULATOR_SWITCH_INTERVAL = 1e-5
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


def shared_slots(tpb: int) -> int:
    """float64 slots of a solve block's dynamic shared memory: one per thread (the reductions)
    and three controls."""
    return tpb + 3


@contextlib.contextmanager
def _simulator_pace():
    """Inside the block, a simulated kernel's threads hand over the GIL every
    :data:`SIMULATOR_SWITCH_INTERVAL` (restored on exit); on a GPU nothing changes."""
    if not _simulated():
        yield
        return
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SIMULATOR_SWITCH_INTERVAL)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def threads_per_block(n: int) -> int:
    """A power of two ≥ min(n, cap): the tree reductions need a power of two."""
    cap = TPB_SIMULATOR if _simulated() else min(TPB_CAP, TPB_MAX)
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


#: A dense ``A`` on the device: ``Mat`` the product's matrix (``Aᵀ`` forward, ``A`` adjoint)
#: and ``MinvT = ((1 + α) I − α A)⁻ᵀ`` for the splittings ((1, 1) when unused); the solve's dtype.
DenseOp = collections.namedtuple("DenseOp", ["Mat", "MinvT"])
#: A square :class:`contraction.Conv2d` on the device. ``K`` (C, C, k, k), float64: its kernel
#: (forward) or the adjoint's (flipped, channels swapped); ``H``, ``W`` the image size;
#: ``circular`` the padding (else zeros). For the splittings (circular padding), the inverse
#: symbol ``M̂(f)⁻¹`` on the half spectrum, real and imaginary parts ``Rr``, ``Ri`` (H, W//2 + 1,
#: C, C); the twiddles ``cw``, ``sw`` (cos and sin of ``2π v w / W``, (W//2 + 1, W)) and ``ch``,
#: ``sh`` (of ``2π u h / H``, (H, H)); ``weight`` (W//2 + 1) the real inverse transform's
#: weight of each column frequency; ``spec`` (batch, 4, C·H·(W//2 + 1)) each sample's
#: frequency-domain work space. Unused arrays have no entries.
ConvOp = collections.namedtuple("ConvOp", ["K", "H", "W", "circular", "Rr", "Ri", "cw", "sw", "ch", "sh",
                                           "weight", "spec"])


@cuda.jit(device=True)
def _dense_product(op, src, scale, scaled, add, out, s, t, nt):
    """``out[s] = (src[s] ⊙ scale[s]) · Mat + add[s]``, threads over the output index."""
    Mat = op.Mat
    n = out.shape[1]
    for i in range(t, n, nt):
        acc = 0.0
        for j in range(n):
            v = src[s, j] * scale[s, j] if scaled else src[s, j]
            acc += v * Mat[j, i]
        out[s, i] = acc + add[s, i]
    cuda.syncthreads()


@cuda.jit(device=True)
def _dense_resolvent(op, V, out, s, t, nt):
    """``out[s] = V[s] · M⁻ᵀ``, threads over the output index."""
    MinvT = op.MinvT
    n = out.shape[1]
    for i in range(t, n, nt):
        acc = 0.0
        for j in range(n):
            acc += V[s, j] * MinvT[j, i]
        out[s, i] = acc
    cuda.syncthreads()


@cuda.jit(device=True)
def _conv_product(op, src, scale, scaled, add, out, s, t, nt):
    """``out[s] = K ⋆ (src[s] ⊙ scale[s]) + add[s]``: the "same" cross-correlation of
    :class:`contraction.Conv2d`, one output pixel ``(c, i, j)`` per thread and pass, its
    ``C k²`` taps summed in float64 (as the numpy specification's float64 kernel does) and
    rounded to the solve's dtype before ``add`` is added (as the specification does)."""
    K = op.K
    C = K.shape[0]
    k = K.shape[2]
    p = k // 2
    H = op.H
    W = op.W
    HW = H * W
    n = out.shape[1]
    for o in range(t, n, nt):
        c = o // HW
        i = (o - c * HW) // W
        j = o - c * HW - i * W
        acc = 0.0
        for di in range(k):
            y = i + di - p
            if y < 0 or y >= H:
                if not op.circular:
                    continue
                y = y + H if y < 0 else y - H  # p < H: one wrap suffices
            for dj in range(k):
                x = j + dj - p
                if x < 0 or x >= W:
                    if not op.circular:
                        continue
                    x = x + W if x < 0 else x - W
                for c2 in range(C):
                    q = (c2 * H + y) * W + x
                    v = src[s, q] * scale[s, q] if scaled else src[s, q]
                    acc += K[c, c2, di, dj] * v
        out[s, o] = acc
        out[s, o] += add[s, o]
    cuda.syncthreads()


@cuda.jit(device=True)
def _conv_resolvent(op, V, out, s, t, nt):
    """``out[s] = M⁻¹ V[s]`` for a circular convolution with inverse symbol ``Rr + i Ri``: a real
    DFT along the columns, a DFT along the rows, one ``C × C`` product per frequency, and the
    inverse transforms (:func:`.operators._inverse_symbol_apply`, the CPU version), each a direct
    sum in float64 with the threads over its outputs. ``spec[s]`` holds the transforms: slots
    0, 1 and 2, 3 take turns as the real and imaginary parts of the input and the output of
    each stage."""
    Rr = op.Rr
    Ri = op.Ri
    cw = op.cw
    sw = op.sw
    ch = op.ch
    sh = op.sh
    weight = op.weight
    F = op.spec
    H = op.H
    W = op.W
    Wh = weight.shape[0]
    C = Rr.shape[2]
    m = C * H * Wh
    n = out.shape[1]
    for e in range(t, m, nt):  # along the columns: Σ_w x[c, h, w] e^{−2πi v w / W}
        row = e // Wh  # the image row (c, h)
        v = e - row * Wh
        base = row * W
        re = 0.0
        im = 0.0
        for w in range(W):
            x = V[s, base + w]
            re += x * cw[v, w]
            im -= x * sw[v, w]
        F[s, 0, e] = re
        F[s, 1, e] = im
    cuda.syncthreads()
    for e in range(t, m, nt):  # along the rows: Σ_h e^{−2πi u h / H} (slots 0, 1 → 2, 3)
        c = e // (H * Wh)
        u = (e - c * H * Wh) // Wh
        v = e - c * H * Wh - u * Wh
        re = 0.0
        im = 0.0
        for h in range(H):
            q = (c * H + h) * Wh + v
            a = F[s, 0, q]
            b = F[s, 1, q]
            re += ch[u, h] * a + sh[u, h] * b
            im += ch[u, h] * b - sh[u, h] * a
        F[s, 2, e] = re
        F[s, 3, e] = im
    cuda.syncthreads()
    for e in range(t, m, nt):  # M̂(f)⁻¹ per frequency (slots 2, 3 → 0, 1)
        c = e // (H * Wh)
        f = e - c * H * Wh  # the frequency (u, v), row-major
        u = f // Wh
        v = f - u * Wh
        re = 0.0
        im = 0.0
        for d in range(C):
            q = d * H * Wh + f
            a = F[s, 2, q]
            b = F[s, 3, q]
            re += Rr[u, v, c, d] * a - Ri[u, v, c, d] * b
            im += Rr[u, v, c, d] * b + Ri[u, v, c, d] * a
        F[s, 0, e] = re
        F[s, 1, e] = im
    cuda.syncthreads()
    for e in range(t, m, nt):  # the inverse along the rows, 1/H Σ_u e^{+2πi u h / H} (0, 1 → 2, 3)
        c = e // (H * Wh)
        h = (e - c * H * Wh) // Wh
        v = e - c * H * Wh - h * Wh
        re = 0.0
        im = 0.0
        for u in range(H):
            q = (c * H + u) * Wh + v
            a = F[s, 0, q]
            b = F[s, 1, q]
            re += ch[h, u] * a - sh[h, u] * b
            im += ch[h, u] * b + sh[h, u] * a
        F[s, 2, e] = re / H
        F[s, 3, e] = im / H
    cuda.syncthreads()
    for o in range(t, n, nt):  # the real inverse along the columns (slots 2, 3)
        row = o // W  # the image row (c, h)
        w = o - row * W
        base = row * Wh
        acc = 0.0
        for v in range(Wh):
            acc += weight[v] * (F[s, 2, base + v] * cw[v, w] - F[s, 3, base + v] * sw[v, w])
        out[s, o] = acc
    cuda.syncthreads()


def _solver(product, resolvent):
    """The solve kernel over an operator given by its ``product`` and ``resolvent`` device
    functions (one compiled kernel per operator; the loop is the same source)."""

    @cuda.jit
    def solve(method, op, W, D, X, U, Z, Y, alpha, steps, code, slope, atol, rtol, max_iter, norm,
              accept, record, iters, res, codes, hist, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, m):
        s = cuda.blockIdx.x
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        n = X.shape[1]
        scaled = D.shape[0] > 0
        splitting = method == PEACEMAN_RACHFORD or method == DOUGLAS_RACHFORD
        # One dynamic shared buffer (the launch sizes it: shared_slots): a float64 per thread for
        # the reductions, then the flag, the first residual and Anderson's acceptance. A static
        # shared array would do on a GPU, but numba's simulator creates one per call site on a
        # thread's first call and does not lock it: two threads starting together got two arrays.
        dyn = cuda.shared.array(0, float64)
        red = dyn[:nt]
        ctl = dyn[nt:]
        if splitting:  # u0 = (1 − α) x0 + α (A x0 + w)
            product(op, X, D, scaled, W, Z, s, t, nt)
            for i in range(t, n, nt):
                U[s, i] = (1.0 - alpha) * X[s, i] + alpha * Z[s, i]
            cuda.syncthreads()
        for k in range(max_iter + 1):
            if splitting:
                for i in range(t, n, nt):
                    X[s, i] = act_prox(code, slope, alpha, U[s, i])
                cuda.syncthreads()
            product(op, X, D, scaled, W, Z, s, t, nt)
            r = 0.0
            xn = 0.0
            for i in range(t, n, nt):
                d = abs(act_value(code, slope, Z[s, i]) - X[s, i])
                if not math.isfinite(d):
                    d = math.inf  # reported as NONFINITE, like the numpy specification
                ax = abs(X[s, i])
                if norm == 0:
                    r = d if (d != d or d > r) else r
                    xn = ax if ax > xn else xn  # not max(): see _anderson_block
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
                per_unit = steps.shape[0] > 0  # else one step for all units
                for i in range(t, n, nt):
                    a = steps[i] if per_unit else alpha
                    v = X[s, i] + a * (act_value(code, slope, Z[s, i]) - X[s, i])
                    X[s, i] = 0.0 if abs(v) < FLUSH else v  # as the CPU engines (kernels.FLUSH)
            elif method == FORWARD_BACKWARD:
                for i in range(t, n, nt):
                    X[s, i] = act_prox(code, slope, alpha, (1.0 - alpha) * X[s, i] + alpha * Z[s, i])
            elif splitting:  # v = 2x − u; y = M⁻¹(v + α w); PR: u = 2y − v; DR: u = u + y − x
                for i in range(t, n, nt):
                    Y[s, i] = 2.0 * X[s, i] - U[s, i] + alpha * W[s, i]
                cuda.syncthreads()
                resolvent(op, Y, Z, s, t, nt)
                for i in range(t, n, nt):
                    if method == PEACEMAN_RACHFORD:
                        U[s, i] = 2.0 * Z[s, i] - (2.0 * X[s, i] - U[s, i])
                    else:
                        U[s, i] = U[s, i] + Z[s, i] - X[s, i]
            else:
                _anderson_block(s, t, nt, X, Z, r, alpha, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb,
                                red, ctl, code, slope)
            cuda.syncthreads()

    return solve


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
        # Not min(): numba's built-in CUDA target fails to compile the builtin's varargs overload.
        cnt[s] = cnt[s] + 1 if cnt[s] < m else m
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


#: The solve kernel of each kind of operator.
_SOLVE_DENSE = _solver(_dense_product, _dense_resolvent)
_SOLVE_CONV = _solver(_conv_product, _conv_resolvent)


def _dense_op(task: Task, dt) -> DenseOp:
    """The device :class:`DenseOp` of ``task``."""
    Mat = np.ascontiguousarray(task.op.T if task.kind == "forward" else task.op)
    MinvT = task.resolvent if task.resolvent is not None else np.zeros((1, 1), dt)
    return DenseOp(cuda.to_device(Mat), cuda.to_device(MinvT))


def _conv_op(task: Task, batch: int, stream=0) -> ConvOp:
    """The device :class:`ConvOp` of ``task``: the kernel of its product (the adjoint's for an
    adjoint task) and, for a splitting, the inverse symbol, the twiddles and a work space per
    sample, copied on ``stream``."""
    op = conv(task.op, np.float64)
    K = op.K if task.kind == "forward" else op.KT
    C = K.shape[0]
    H, W = op.H, op.W
    Wh = W // 2 + 1

    def d(a):
        return cuda.to_device(a, stream=stream)

    if task.resolvent is None:
        none2, none4 = np.zeros((0, 0)), np.zeros((0, 0, 0, 0))
        return ConvOp(d(K), H, W, op.circular, d(none4), d(none4), d(none2), d(none2), d(none2), d(none2),
                      d(np.zeros(0)), cuda.device_array((0, 4, 0), np.float64, stream=stream))
    R = task.resolvent
    cw, sw = _twiddles(Wh, W)
    ch, sh = _twiddles(H, H)
    weight = _half_spectrum_weights(W)
    return ConvOp(d(K), H, W, op.circular, d(np.ascontiguousarray(R.real)), d(np.ascontiguousarray(R.imag)),
                  d(cw), d(sw), d(ch), d(sh), d(weight),
                  cuda.device_array((batch, 4, C * H * Wh), np.float64, stream=stream))


def _launch(task: Task, op, dW, dD, dX, stream):
    """Launch the solve kernel of ``task`` over the device operator ``op`` on ``stream``: ``dW``
    the right-hand sides, ``dD`` the adjoint's ``σ'(Z)`` (no rows for a forward task) and ``dX``
    the start, overwritten with the last iterate; returns the device arrays of the iterations,
    residuals, status codes and history (no rows unless ``task.record``)."""
    batch, n = dX.shape
    dt = dX.dtype
    forward = task.kind == "forward"
    solve = _SOLVE_CONV if isinstance(op, ConvOp) else _SOLVE_DENSE
    code, slope = (task.activation.code, task.activation.slope) if forward else (IDENTITY, 0.0)
    mcode = METHOD_CODES[task.method]
    splitting = mcode in (PEACEMAN_RACHFORD, DOUGLAS_RACHFORD)
    anderson = task.method == "anderson"
    m = task.memory if anderson else 1
    nb = batch if splitting else 1
    na = batch if anderson else 1

    def d(a):
        return cuda.to_device(a, stream=stream)

    per_unit = np.ndim(task.alpha) > 0
    alpha = float("nan") if per_unit else float(task.alpha)  # per-unit: only the averaged step reads them
    steps = d(np.ascontiguousarray(task.alpha, dt) if per_unit else np.zeros(0, dt))

    dZ = cuda.device_array((batch, n), dt, stream=stream)
    dU = cuda.device_array((nb, n), dt, stream=stream)
    dY = cuda.device_array((nb, n), dt, stream=stream)
    iters = d(np.zeros(batch, np.int64))
    res = d(np.zeros(batch, np.float64))
    codes = d(np.full(batch, RUNNING, np.int8))
    hist = d(np.full((task.max_iter + 1 if task.record else 0, batch), np.nan))
    gp, fp = d(np.zeros((na, n), dt)), d(np.zeros((na, n), dt))
    rp, forced = d(np.full(na, np.inf)), d(np.ones(na, np.bool_))
    dF, dG = d(np.zeros((na, m, n), dt)), d(np.zeros((na, m, n), dt))
    cnt, pos = d(np.zeros(na, np.int64)), d(np.zeros(na, np.int64))
    H, hb = d(np.zeros((na, m, m))), d(np.zeros((na, m)))
    tpb = threads_per_block(n)
    with _simulator_pace():
        solve[batch, tpb, stream, 8 * shared_slots(tpb)](
            mcode, op, dW, dD, dX, dU, dZ, dY, alpha, steps, int(code), float(slope),
            float(task.atol), float(task.rtol), int(task.max_iter), 0 if forward else 1, float(task.accept),
            bool(task.record), iters, res, codes, hist, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, int(m),
        )
    return iters, res, codes, hist


def run(task: Task):
    """Same contract as :func:`.numpy_engine.run`."""
    require_gpu()
    W = task.rhs
    batch, n = W.shape
    dt = W.dtype
    op = _dense_op(task, dt) if task.dense else _conv_op(task, batch)
    D = np.zeros((0, n), dt) if task.kind == "forward" else task.D
    d = cuda.to_device
    dX = d(np.zeros_like(W) if task.x0 is None else np.ascontiguousarray(task.x0))
    iters, res, codes, hist = _launch(task, op, d(W), d(D), dX, 0)
    X = dX.copy_to_host()
    iters_h = iters.copy_to_host()
    hist_h = hist.copy_to_host()
    if task.record:
        hist_h = hist_h[: int(iters_h.max()) + 1].copy()
    return X, iters_h, res.copy_to_host(), codes.copy_to_host(), (hist_h if task.record else None)


# -- device memory in place (the PyTorch layer's CUDA tensors) ----------------------------------


def device_array(obj, name: str = "array"):
    """``obj`` as a numba device array, in place (a view: nothing is copied or synchronised).

    A numba device array is taken as it is, and so is anything with ``__cuda_array_interface__``
    (a CUDA ``torch.Tensor``, a CuPy array), through :func:`numba.cuda.as_cuda_array` with
    ``sync=False``: the caller launches on the stream that orders its work. Under
    ``NUMBA_ENABLE_CUDASIM=1`` device memory is host memory, and any array numpy can view without
    a copy (a numpy array, a CPU tensor) is used in place, so the device path runs in the tests.
    """
    if _simulated():
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return obj if isinstance(obj, FakeCUDAArray) else FakeCUDAArray(np.asarray(obj))
    if cuda.is_cuda_array(obj):
        return cuda.as_cuda_array(obj, sync=False)
    raise ValueError(f"{name} must be in GPU memory (an object with __cuda_array_interface__, such as a CUDA "
                     f"torch.Tensor), got {type(obj).__name__}: the cuda engine's device path works in place; "
                     "move the data to the GPU (tensor.cuda()) or use engine='numba'")


def _stream(stream):
    """A numba stream for ``stream``: a numba stream as it is, an integer as the handle of a stream
    created elsewhere (``torch.cuda.current_stream().cuda_stream``), ``None`` numba's default
    stream; the simulator runs everything synchronously and ignores it."""
    if _simulated() or stream is None:
        return 0
    return cuda.external_stream(stream) if isinstance(stream, int) else stream


def run_device(task: Task, stream=None):
    """:func:`run` on device memory, for callers whose data already lives on the GPU.

    ``task.rhs``, ``task.x0`` (required: the start, overwritten with the last iterate) and, for
    an adjoint task, ``task.D`` are device arrays in the sense of :func:`device_array`, used in
    place; ``task.op`` is a square :class:`contraction.Conv2d` (its kernel is copied to the
    device) or a device (n, n) matrix ``A``, and for the splittings ``task.resolvent`` is the
    device matrix ``((1 + α) I − α A)⁻ᵀ``. The forward product reads ``Aᵀ`` and the adjoint
    ``A``, one row of it per step of a thread's inner loop: loads are coalesced when that matrix
    is row-major, i.e. when ``A`` is given column-major for a forward task (a CUDA tensor
    ``A.t().contiguous().t()``) and row-major for an adjoint one. The kernel runs on ``stream``
    (see :func:`_stream`), after the work already queued there. No history (``task.record``).

    Returns
    -------
    iterations, residual, codes : device arrays, shape (batch,)
        As :func:`run` returns them, left on the device (reading them synchronises).
    """
    require_gpu()
    if task.x0 is None or task.record:
        raise ValueError("run_device needs task.x0 (the start, overwritten with the solution) and no record")
    s = _stream(stream)
    dX = device_array(task.x0, "x0")
    batch, n = dX.shape
    if isinstance(task.op, Conv2d):
        op = _conv_op(task, batch, s)
    else:
        A = device_array(task.op, "A")
        MinvT = device_array(task.resolvent, "resolvent") if task.resolvent is not None else \
            cuda.to_device(np.zeros((1, 1), dX.dtype), stream=s)
        op = DenseOp(A.T if task.kind == "forward" else A, MinvT)
    dD = cuda.device_array((0, n), dX.dtype, stream=s) if task.kind == "forward" else device_array(task.D, "D")
    iters, res, codes, _ = _launch(task, op, device_array(task.rhs, "rhs"), dD, dX, s)
    return iters, res, codes


@cuda.jit
def _derivative_kernel(code, slope, Z, out):
    s = cuda.blockIdx.x
    for i in range(cuda.threadIdx.x, Z.shape[1], cuda.blockDim.x):
        out[s, i] = act_derivative(code, slope, Z[s, i])


def derivative_device(activation, Z, out, stream=None):
    """``out = σ'(Z)`` on the device (the adjoint's ``D``), with the conventions of
    :meth:`solvers.Activation.derivative` at kinks; ``Z`` and ``out`` (batch, n) device arrays in the
    sense of :func:`device_array`, one block per row, on ``stream``."""
    require_gpu()
    dZ = device_array(Z, "Z")
    with _simulator_pace():
        _derivative_kernel[dZ.shape[0], threads_per_block(dZ.shape[1]), _stream(stream)](
            int(activation.code), float(activation.slope), dZ, device_array(out, "out"))
