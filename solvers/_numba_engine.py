"""The numba engine (CPU, default): one compiled loop driver, methods as integer codes.

Mirrors :mod:`solvers._numpy_engine` step for step (that module is the specification).
The whole iteration runs in compiled code: per iteration one BLAS GEMM on the compacted
block of still-active samples (two for the splittings), then a parallel pass over samples
that evaluates the residual, applies the stopping rule and takes the step. Finished
samples are written out and swapped out of the active block, so the batch does not pay for
its converged members.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ._activations import PROX_NEWTON_STEPS, PROX_TOL
from ._numpy_engine import ANDERSON_REG, DIVERGENCE_RATIO

__all__ = ["run", "METHOD_CODES"]

METHOD_CODES = {
    "picard": 0,
    "average": 1,
    "forward_backward": 2,
    "peaceman_rachford": 3,
    "douglas_rachford": 4,
    "anderson": 5,
}
_TINY = float(np.finfo(np.float64).tiny)


# The scalar helpers use ``math`` only, so the CUDA engine can call them from device code.


@njit(cache=True, inline="always")
def act_value(code, slope, z):
    if code == 0:
        return z if z > 0.0 else 0.0 * z
    if code == 1:
        return z if z >= 0.0 else slope * z
    if code == 2:
        return min(max(z, -1.0), 1.0)
    if code == 3:
        return math.tanh(z)
    if code == 4:
        return max(z, 0.0) + math.log1p(math.exp(-abs(z)))
    return z


@njit(cache=True, inline="always")
def act_derivative(code, slope, z):
    if code == 0:
        return 1.0 if z >= 0.0 else 0.0
    if code == 1:
        return 1.0 if z >= 0.0 else slope
    if code == 2:
        return 1.0 if abs(z) <= 1.0 else 0.0
    if code == 3:
        t = math.tanh(z)
        return 1.0 - t * t
    if code == 4:
        return 0.5 * (1.0 + math.tanh(0.5 * z))
    return 1.0


@njit(cache=True)
def act_prox(code, slope, alpha, v):
    """``prox_{αf}(v)``; see :mod:`solvers._activations` for the derivation."""
    if alpha == 1.0 or code == 0 or code == 2 or code == 5:
        return act_value(code, slope, v)
    if code == 1:
        s = slope / (slope + alpha * (1.0 - slope))
        return v if v >= 0.0 else s * v
    lo = min(alpha, 1.0)
    s = float(v)
    h = alpha * s + (1.0 - alpha) * act_value(code, slope, s) - v
    a = s - abs(h) / lo
    b = s + abs(h) / lo
    for _ in range(PROX_NEWTON_STEPS):
        h = alpha * s + (1.0 - alpha) * act_value(code, slope, s) - v
        if abs(h) <= PROX_TOL * (1.0 + abs(v)):
            break
        if h < 0.0:
            a = s
        elif h > 0.0:
            b = s
        dh = alpha + (1.0 - alpha) * act_derivative(code, slope, s)
        s_new = s - h / dh
        s = s_new if (s_new > a and s_new < b) else 0.5 * (a + b)
    return act_value(code, slope, s)


@njit(cache=True)
def _solve_small(H, b, k):
    """Solve ``H[:k,:k] γ = b[:k]`` in place by Gaussian elimination with partial pivoting."""
    for c in range(k):
        p = c
        for r in range(c + 1, k):
            if abs(H[r, c]) > abs(H[p, c]):
                p = r
        if p != c:
            for j in range(k):
                H[c, j], H[p, j] = H[p, j], H[c, j]
            b[c], b[p] = b[p], b[c]
        for r in range(c + 1, k):
            f = H[r, c] / H[c, c]
            for j in range(c, k):
                H[r, j] -= f * H[c, j]
            b[r] -= f * b[c]
    for c in range(k - 1, -1, -1):
        acc = b[c]
        for j in range(c + 1, k):
            acc -= H[c, j] * b[j]
        b[c] = acc / H[c, c]


@njit(cache=True)
def _anderson_step(s, X, T, r, alpha, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb):
    """Safeguarded type-II Anderson update of row ``s`` (see ``_numpy_engine._Anderson``)."""
    n = X.shape[1]
    if not (forced[s] or r <= accept * rp[s]):
        for i in range(n):
            X[s, i] = gp[s, i]
        forced[s] = True
        cnt[s] = 0
        return
    has_prev = rp[s] < math.inf
    if has_prev:
        p = pos[s]
        for i in range(n):
            g = X[s, i] + alpha * (T[s, i] - X[s, i])
            f = g - X[s, i]
            dF[s, p, i] = f - fp[s, i]
            dG[s, p, i] = g - gp[s, i]
        pos[s] = (p + 1) % m
        cnt[s] = min(cnt[s] + 1, m)
    for i in range(n):
        g = X[s, i] + alpha * (T[s, i] - X[s, i])
        fp[s, i] = g - X[s, i]
        gp[s, i] = g
    k = cnt[s]
    if k > 0:
        tr = 0.0
        for a in range(k):
            for c in range(k):
                acc = 0.0
                for i in range(n):
                    acc += dF[s, a, i] * dF[s, c, i]
                H[s, a, c] = acc
            tr += H[s, a, a]
            acc = 0.0
            for i in range(n):
                acc += dF[s, a, i] * fp[s, i]
            hb[s, a] = acc
        reg = ANDERSON_REG * tr / k + _TINY
        for a in range(k):
            H[s, a, a] += reg
        _solve_small(H[s], hb[s], k)
    for i in range(n):
        x = gp[s, i]
        for a in range(k):
            x -= hb[s, a] * dG[s, a, i]
        X[s, i] = x
    rp[s] = r
    forced[s] = False


def _run_impl(method, Mat, W, D, X0, alpha, code, slope, atol, rtol, max_iter, norm, MinvT, memory, accept, record):
    batch, n = W.shape
    scaled = D.shape[0] > 0
    splitting = method == 3 or method == 4
    anderson = method == 5
    X = X0.copy()
    iters = np.zeros(batch, np.int64)
    res = np.zeros(batch, np.float64)
    codes = np.full(batch, -1, np.int8)
    hist = np.full((max_iter + 1 if record else 0, batch), np.nan)

    idx = np.arange(batch)
    Xa = X0.copy()
    Wa = W.copy()
    Da = D.copy()
    Z = np.empty_like(Xa)
    S = np.empty_like(Xa) if scaled else np.empty((0, n), Xa.dtype)
    r_first = np.zeros(batch)
    r_cur = np.zeros(batch)
    flag = np.zeros(batch, np.int8)
    nb = batch if splitting else 0
    Ua = np.empty((nb, n), Xa.dtype)
    Y = np.empty((nb, n), Xa.dtype)
    m = memory if anderson else 0
    na_ = batch if anderson else 0
    gp = np.zeros((na_, n), Xa.dtype)
    fp = np.zeros((na_, n), Xa.dtype)
    rp = np.full(na_, np.inf)
    forced = np.ones(na_, np.bool_)
    dF = np.zeros((na_, m, n), Xa.dtype)
    dG = np.zeros((na_, m, n), Xa.dtype)
    cnt = np.zeros(na_, np.int64)
    pos = np.zeros(na_, np.int64)
    H = np.zeros((na_, m, m))
    hb = np.zeros((na_, m))

    if splitting:  # u0 = (1 − α) x0 + α (A x0 + w)
        np.dot(Xa, Mat, Z)
        for s in prange(batch):
            for i in range(n):
                Ua[s, i] = (1.0 - alpha) * Xa[s, i] + alpha * (Z[s, i] + Wa[s, i])

    na = batch
    for k in range(max_iter + 1):
        if splitting:
            for s in prange(na):
                for i in range(n):
                    Xa[s, i] = act_prox(code, slope, alpha, Ua[s, i])
        if scaled:
            for s in prange(na):
                for i in range(n):
                    S[s, i] = Xa[s, i] * Da[s, i]
            np.dot(S[:na], Mat, Z[:na])
        else:
            np.dot(Xa[:na], Mat, Z[:na])
        for s in prange(na):
            r = 0.0
            xn = 0.0
            bad = False
            for i in range(n):
                z = Z[s, i] + Wa[s, i]
                Z[s, i] = z
                d = abs(act_value(code, slope, z) - Xa[s, i])
                ax = abs(Xa[s, i])
                bad = bad or not np.isfinite(d)
                if norm == 0:
                    r = max(r, d)
                    xn = max(xn, ax)
                else:
                    r += d
                    xn += ax
            if bad:
                r = math.inf
            r_cur[s] = r
            if k == 0:
                r_first[idx[s]] = r
            if not np.isfinite(r):
                flag[s] = 3
            elif r <= atol + rtol * xn:
                flag[s] = 0
            elif r > DIVERGENCE_RATIO * r_first[idx[s]]:
                flag[s] = 2
            elif k == max_iter:
                flag[s] = 1
            else:
                flag[s] = -1
            if flag[s] < 0 and not splitting:
                if anderson:
                    for i in range(n):
                        Z[s, i] = act_value(code, slope, Z[s, i])  # Z now holds T(x)
                    _anderson_step(s, Xa, Z, r, alpha, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb)
                elif method == 2:
                    for i in range(n):
                        Xa[s, i] = act_prox(code, slope, alpha, (1.0 - alpha) * Xa[s, i] + alpha * Z[s, i])
                else:
                    for i in range(n):
                        Xa[s, i] += alpha * (act_value(code, slope, Z[s, i]) - Xa[s, i])
        # Write out finished samples and compact the active block (order preserved).
        j = 0
        for s in range(na):
            g = idx[s]
            if record:
                hist[k, g] = r_cur[s]
            if flag[s] >= 0:
                for i in range(n):
                    X[g, i] = Xa[s, i]
                res[g] = r_cur[s]
                iters[g] = k
                codes[g] = flag[s]
                continue
            if j != s:
                idx[j] = g
                for i in range(n):
                    Xa[j, i] = Xa[s, i]
                    Wa[j, i] = Wa[s, i]
                if scaled:
                    for i in range(n):
                        Da[j, i] = Da[s, i]
                if splitting:
                    for i in range(n):
                        Ua[j, i] = Ua[s, i]
                if anderson:
                    for i in range(n):
                        gp[j, i] = gp[s, i]
                        fp[j, i] = fp[s, i]
                    rp[j] = rp[s]
                    forced[j] = forced[s]
                    cnt[j] = cnt[s]
                    pos[j] = pos[s]
                    for a in range(m):
                        for i in range(n):
                            dF[j, a, i] = dF[s, a, i]
                            dG[j, a, i] = dG[s, a, i]
            j += 1
        na = j
        if na == 0:
            break
        if splitting:  # v = 2x − u; y = M⁻¹(v + α w); PR: u = 2y − v; DR: u = u + y − x
            for s in prange(na):
                for i in range(n):
                    Z[s, i] = 2.0 * Xa[s, i] - Ua[s, i] + alpha * Wa[s, i]
            np.dot(Z[:na], MinvT, Y[:na])
            for s in prange(na):
                for i in range(n):
                    if method == 3:
                        Ua[s, i] = 2.0 * Y[s, i] - (2.0 * Xa[s, i] - Ua[s, i])
                    else:
                        Ua[s, i] = Ua[s, i] + Y[s, i] - Xa[s, i]
    if record:
        hist = hist[: k + 1].copy()
    return X, iters, res, codes, hist


# Two compilations of one driver: ``prange`` is a plain range in the serial one. The
# per-sample pass is O(batch·n) against the GEMM's O(batch·n²), so threads only pay for
# large blocks; below that, idle worker threads spinning beside the BLAS threads cost more
# than they save (badly so on a loaded machine).
_run_serial = njit(cache=True)(_run_impl)
_run_parallel = njit(cache=True, parallel=True)(_run_impl)

#: batch·n (times 8 for Anderson and the Newton prox of tanh/softplus) from which the
#: per-sample pass runs in parallel.
PARALLEL_MIN_WORK = 1 << 20


def _parallel_pays(method: str, code: int, batch: int, n: int) -> bool:
    heavy = method == "anderson" or (code in (3, 4) and method in ("forward_backward", "peaceman_rachford", "douglas_rachford"))
    return numba.config.NUMBA_NUM_THREADS > 1 and batch * n * (8 if heavy else 1) >= PARALLEL_MIN_WORK


def run(method, Mat, W, D, X0, alpha, code, slope, atol, rtol, max_iter, norm, MinvT, memory, accept, record):
    """Same contract as :func:`solvers._numpy_engine.run`."""
    dtype = W.dtype
    D = np.zeros((0, W.shape[1]), dtype) if D is None else D
    if MinvT.shape[0] == 0:
        MinvT = np.zeros((1, 1), dtype)
    kernel = _run_parallel if _parallel_pays(method, code, *W.shape) else _run_serial
    X, iters, res, codes, hist = kernel(
        METHOD_CODES[method], Mat, W, D, X0, float(alpha), int(code), float(slope), float(atol),
        float(rtol), int(max_iter), int(norm), MinvT, int(memory), float(accept), bool(record),
    )
    return X, iters, res, codes, (hist if record else None)
