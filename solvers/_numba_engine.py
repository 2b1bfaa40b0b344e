"""The numba engine (CPU, default): one compiled loop driver, methods as integer codes.

Mirrors :mod:`solvers._numpy_engine` step for step (that module is the specification).
The whole iteration runs in compiled code. Samples never interact, so the batch is split
once into one contiguous block of rows per thread and each thread runs the complete
iteration on its block (one parallel region per solve, no synchronisation per step): per
iteration one single-threaded BLAS GEMM on the block's still-active rows (two for the
splittings), then the per-sample pass that evaluates the residual, applies the stopping
rule and takes the step. Finished samples are written out and the block's active rows
compacted, so the batch does not pay for its converged members. With mixed products
(``run(..., mixed=True)``, float64) most passes update ``A x + w`` by a float32 product of
the step and samples stop only on exact float64 products (see :func:`_block`).
"""

from __future__ import annotations

import math
import types

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types as nbtypes
from numba.extending import intrinsic

from contraction._parallel import PRANGE_ONLY

from ._activations import PROX_NEWTON_STEPS, PROX_TOL
from ._numpy_engine import ANDERSON_REG, DIVERGENCE_RATIO
from ._threads import SMALL_GEMM_WORK, blas_threads

__all__ = ["run", "METHOD_CODES", "MIXED_METHODS"]

METHOD_CODES = {
    "picard": 0,
    "average": 1,
    "forward_backward": 2,
    "peaceman_rachford": 3,
    "douglas_rachford": 4,
    "anderson": 5,
}
#: The methods that can take mixed products (``run(..., mixed=True)``, float64): those whose
#: step moves the iterate itself (the splittings iterate on another variable).
MIXED_METHODS = ("picard", "average", "forward_backward")
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


# The per-sample pass. Each helper works on one sample's row (1-D, contiguous, in L1) and the
# activation code is dispatched once per row, outside the element loop, so that every loop
# below compiles to straight-line, vectorisable code for its activation.


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float as the signed integer of its width (a bitcast, no conversion)."""
    width = {nbtypes.float64: nbtypes.int64, nbtypes.float32: nbtypes.int32}.get(x)
    if width is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], context.get_value_type(sig.return_type))

    return width(x), codegen


@intrinsic
def _bits_float(typingctx, b, like):
    """The float of the type of ``like`` whose bits are the integer ``b`` (inverse of
    :func:`_float_bits`; ``b`` may have been widened to int64 by integer arithmetic, and
    is cut back to the width of ``like`` first)."""
    width = {nbtypes.float64: 64, nbtypes.float32: 32}.get(like)
    if width is None or not isinstance(b, nbtypes.Integer):
        return None

    def codegen(context, builder, sig, args):
        value = args[0]
        target = context.get_value_type(sig.return_type)
        if b.bitwidth > width:
            value = builder.trunc(value, ir.IntType(width))
        return builder.bitcast(value, target)

    return like(b, like), codegen


# The ℓ∞ reductions below take the maximum of |d| over the bits: for non-negative floats
# the order of the bits as integers is the order of the values, and |NaN| lies above +inf,
# so an integer maximum (which vectorises, unlike a NaN-aware float maximum) is exactly the
# maximum that lets a NaN through. ``reassoc`` lets the ℓ1 sums vectorise (partial sums in
# any order); there is no finite-math assumption, so NaN and Inf reach the stopping rule.
@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _row_residual(code, slope, norm, z_row, w_row, x_row, t_row):
    """Set ``z = z + w`` and ``t = σ(z)``; return ``(‖t − x‖, ‖x‖)`` in ℓ∞ (norm 0) or ℓ1."""
    if norm == 0:
        rb = _float_bits(x_row[0])
        rb -= rb  # 0 in the integer type of the dtype
        xb = rb
        for i in range(z_row.shape[0]):
            z = z_row[i] + w_row[i]
            z_row[i] = z
            t_row[i] = act_value(code, slope, z)
            rb = max(rb, _float_bits(abs(t_row[i] - x_row[i])))  # in the dtype of the rows
            xb = max(xb, _float_bits(abs(x_row[i])))
        return float(_bits_float(rb, x_row[0])), float(_bits_float(xb, x_row[0]))
    r = 0.0
    xn = 0.0
    for i in range(z_row.shape[0]):
        z = z_row[i] + w_row[i]
        z_row[i] = z
        t = act_value(code, slope, z)
        t_row[i] = t
        r += abs(t - x_row[i])
        xn += abs(x_row[i])
    return r, xn


@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _residual(code, slope, norm, z_row, w_row, x_row, t_row):
    if norm == 0:
        if code == 0:
            return _row_residual(0, slope, 0, z_row, w_row, x_row, t_row)
        if code == 1:
            return _row_residual(1, slope, 0, z_row, w_row, x_row, t_row)
        if code == 2:
            return _row_residual(2, slope, 0, z_row, w_row, x_row, t_row)
        if code == 3:
            return _row_residual(3, slope, 0, z_row, w_row, x_row, t_row)
        if code == 4:
            return _row_residual(4, slope, 0, z_row, w_row, x_row, t_row)
        return _row_residual(5, slope, 0, z_row, w_row, x_row, t_row)
    if code == 5:  # the adjoint (identity activation, ℓ1)
        return _row_residual(5, slope, 1, z_row, w_row, x_row, t_row)
    return _row_residual(code, slope, 1, z_row, w_row, x_row, t_row)


@njit(cache=True)
def _exact_product(Xa, Da, S, Mat, Z, lo, hi, scaled):
    """``Z[lo:hi] = (X ⊙ D)[lo:hi] Mat`` (``D`` only when ``scaled``): one BLAS call, from
    one place (numba expands every ``np.dot`` site into a long stretch of code to compile)."""
    if scaled:
        for s in range(lo, hi):
            for i in range(Xa.shape[1]):
                S[s, i] = Xa[s, i] * Da[s, i]
        np.dot(S[lo:hi], Mat, Z[lo:hi])
    else:
        np.dot(Xa[lo:hi], Mat, Z[lo:hi])


@njit(cache=True)
def _average_step(alpha, x_row, t_row):
    """``x ← x + α (T(x) − x)``."""
    for i in range(x_row.shape[0]):
        x_row[i] += alpha * (t_row[i] - x_row[i])


@njit(cache=True)
def _prox_step(code, slope, alpha, x_row, z_row):
    """``x ← prox_{αf}((1 − α) x + α z)`` (forward–backward); the prox of ReLU, hard tanh
    and the identity is the activation itself (inlined), the others go through ``act_prox``."""
    if code == 0:
        for i in range(x_row.shape[0]):
            x_row[i] = act_value(0, slope, (1.0 - alpha) * x_row[i] + alpha * z_row[i])
    elif code == 2:
        for i in range(x_row.shape[0]):
            x_row[i] = act_value(2, slope, (1.0 - alpha) * x_row[i] + alpha * z_row[i])
    else:
        for i in range(x_row.shape[0]):
            x_row[i] = act_prox(code, slope, alpha, (1.0 - alpha) * x_row[i] + alpha * z_row[i])


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


# ``reassoc`` lets the dot products below vectorise (partial sums in any order); no
# finite-math assumption, so NaN and Inf still propagate to the residual check.
@njit(cache=True, fastmath={"reassoc", "contract"}, inline="always")
def _dot(u, v):
    acc = 0.0
    for i in range(u.shape[0]):
        acc += u[i] * v[i]
    return acc


@njit(cache=True, fastmath={"reassoc", "contract"})
def _anderson_step(s, g, X, T, r, alpha, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, Gm):
    """Safeguarded type-II Anderson update of active row ``s``, sample ``g`` (see
    ``_numpy_engine._Anderson``). The history lives at the sample index ``g``, so compacting
    the active rows never moves it.

    ``Gm[g]`` keeps the Gram matrix of the stored differences ``dF`` up to date one row at a
    time (O(m n) per step instead of O(m² n)). Every loop runs over one contiguous row
    (1-D views), so that it vectorises.
    """
    x = X[s]
    t = T[s]
    gpg = gp[g]
    fpg = fp[g]
    n = x.shape[0]
    if not (forced[g] or r <= accept * rp[g]):
        for i in range(n):
            x[i] = gpg[i]
        forced[g] = True
        cnt[g] = 0
        pos[g] = 0
        return
    dFg = dF[g]
    dGg = dG[g]
    Gmg = Gm[g]
    hbg = hb[g]
    if rp[g] < math.inf:
        p = pos[g]
        dFp = dFg[p]
        dGp = dGg[p]
        for i in range(n):
            xi = x[i]
            gv = xi + alpha * (t[i] - xi)
            fv = gv - xi
            dFp[i] = fv - fpg[i]
            dGp[i] = gv - gpg[i]
            fpg[i] = fv
            gpg[i] = gv
        pos[g] = (p + 1) % m
        cnt[g] = min(cnt[g] + 1, m)
        for a in range(cnt[g]):
            acc = _dot(dFp, dFg[a])
            Gmg[p, a] = acc
            Gmg[a, p] = acc
    else:
        for i in range(n):
            xi = x[i]
            gv = xi + alpha * (t[i] - xi)
            fpg[i] = gv - xi
            gpg[i] = gv
    k = cnt[g]
    if k > 0:
        Hg = H[g]
        tr = 0.0
        for a in range(k):
            for c in range(k):
                Hg[a, c] = Gmg[a, c]
            tr += Gmg[a, a]
            hbg[a] = _dot(dFg[a], fpg)
        reg = ANDERSON_REG * tr / k + _TINY
        for a in range(k):
            Hg[a, a] += reg
        _solve_small(Hg, hbg, k)
    for i in range(n):
        x[i] = gpg[i]
    for a in range(k):  # slot-major, so that the inner loop runs over contiguous i
        c = hbg[a]
        row = dGg[a]
        for i in range(n):
            x[i] -= c * row[i]
    rp[g] = r
    forced[g] = False


@njit(cache=True, inline="always")
def _step_entry(method, code, slope, alpha, x, t, z, d, scaled):
    """One entry of the step: ``(x⁺, (x⁺ − x) d)`` (``d`` only when ``scaled``), ``x⁺``
    averaged (picard: α = 1) or forward–backward. Scalars in and out: an inlined helper
    that indexed the rows itself made the mixed solve 3.5× slower (100 × 100)."""
    if method == 2:
        v = (1.0 - alpha) * x + alpha * z
        xn = act_value(code, slope, v) if code == 0 or code == 2 else act_prox(code, slope, alpha, v)
    else:
        xn = x + alpha * (t - x)
    return xn, ((xn - x) * d if scaled else xn - x)


@njit(cache=True, inline="always", fastmath={"reassoc", "contract"})
def _row_step_mixed(method, code, slope, alpha, norm, x_row, t_row, z_row, d_row, scaled, out32):
    """Take the step of one row (average, picard or forward–backward) and keep it for the
    float32 product: ``out32 = float32((x⁺ − x) ⊙ d)`` (``d`` only when ``scaled``). Returns
    the norm of ``(x⁺ − x) ⊙ d`` (ℓ∞ for norm 0, else ℓ1; NaN or inf when not finite)."""
    if norm == 0:  # the maximum over the bits, as in _row_residual (a NaN wins)
        rb = _float_bits(x_row[0])
        rb -= rb
        for i in range(x_row.shape[0]):
            x_row[i], v = _step_entry(method, code, slope, alpha, x_row[i], t_row[i], z_row[i], d_row[i], scaled)
            out32[i] = v
            rb = max(rb, _float_bits(abs(v)))
        return float(_bits_float(rb, x_row[0]))
    acc = 0.0
    for i in range(x_row.shape[0]):
        x_row[i], v = _step_entry(method, code, slope, alpha, x_row[i], t_row[i], z_row[i], d_row[i], scaled)
        out32[i] = v
        acc += abs(v)
    return acc


@njit(cache=True, fastmath={"reassoc", "contract"})
def _step_mixed(method, code, slope, alpha, norm, x_row, t_row, z_row, d_row, scaled, out32):
    """:func:`_row_step_mixed` with the method and activation dispatched once per row (so
    that each loop compiles for one activation; the adjoint is picard/average only)."""
    if method == 2:
        if code == 0:
            return _row_step_mixed(2, 0, slope, alpha, norm, x_row, t_row, z_row, d_row, scaled, out32)
        if code == 2:
            return _row_step_mixed(2, 2, slope, alpha, norm, x_row, t_row, z_row, d_row, scaled, out32)
        return _row_step_mixed(2, code, slope, alpha, norm, x_row, t_row, z_row, d_row, scaled, out32)
    if norm == 0:
        return _row_step_mixed(1, code, slope, alpha, 0, x_row, t_row, z_row, d_row, scaled, out32)
    return _row_step_mixed(1, code, slope, alpha, 1, x_row, t_row, z_row, d_row, scaled, out32)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _block(k, ne, na, zero, method, Mat, Xa, Wa, Da, Z, T, S, Ua, Y, MinvT, alpha, code, slope, atol, rtol,
           max_iter, norm, idx, r_first, r_cur, flag, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, Gm,
           Mat32, K, P32, D32, err, rprev, exact):
    """One iteration on the active rows ``0:na``: product, residual, stopping rule, step
    (``zero``: the candidates are all 0, so the product is skipped).

    Mixed products (``Mat32`` given, not None; float64 only): rows ``0:ne`` take the exact product
    ``x A`` in float64, rows ``ne:na`` update ``z = A x + w`` by the float32 product of their
    last step ``d = x − x_prev`` (``z ← z + d A``, the step kept in ``D32``). A sample stops
    only on an exact product: an approximate residual that meets the tolerance, grew 1e6-fold
    or is not finite is recomputed exactly on the spot (one GEMV), so the reported residual
    and the stopping rule use the exact ``σ(A x + w)``. After each step the row chooses its
    next pass: exact when its residual is predicted to reach the tolerance
    (``r · min(1, r / r_prev) ≤ 2 tol``), when ``err`` (a bound on the float32 drift of ``z``
    since its last exact product: ``K ‖d‖`` per step, ``K = (n + 3) u₃₂ ‖|A|‖``, the rounding
    bound of any summation order, :func:`_mixed_setup`) exceeds a quarter of the residual,
    before ``max_iter``, and when the step does not fit float32.

    Every row's work reads only its own rows and the shared read-only matrices, so blocks run
    on separate threads; each block's products are single-threaded BLAS calls.
    """
    n = Xa.shape[1]
    scaled = Da.shape[0] > 0
    splitting = method == 3 or method == 4
    if splitting:
        for s in range(na):
            for i in range(n):
                Xa[s, i] = act_prox(code, slope, alpha, Ua[s, i])
    if zero:  # x = 0 (the default start): A x = 0 exactly (A is finite), no product
        Z[:na] = 0.0
        ne = na
    else:
        if ne > 0:
            _exact_product(Xa, Da, S, Mat, Z, 0, ne, scaled)
        if Mat32 is not None:  # (``is None`` tests on Mat32: compiled only where it is given)
            if ne < na:  # d A, which the residual adds to the z = A x + w it has
                np.dot(D32[ne:na], Mat32, P32[ne:na])
    going = 0
    for s in range(na):
        g = idx[s]
        if Mat32 is None:
            r, xn = _residual(code, slope, norm, Z[s], Wa[s], Xa[s], T[s])
            tol = atol + rtol * xn
            approx = False
        else:
            approx = s >= ne
            while True:
                if approx:
                    r, xn = _residual(code, slope, norm, Z[s], P32[s], Xa[s], T[s])
                else:
                    r, xn = _residual(code, slope, norm, Z[s], Wa[s], Xa[s], T[s])
                tol = atol + rtol * xn
                if not approx or (r > tol and r <= DIVERGENCE_RATIO * r_first[g]):
                    break
                # An approximate residual never stops a sample: one that would (met the
                # tolerance, grew too much, not finite) gets its exact product now.
                approx = False
                _exact_product(Xa, Da, S, Mat, Z, s, s + 1, scaled)
        r_cur[s] = r
        if k == 0:
            r_first[g] = r
        if approx:
            flag[s] = -1
        elif not np.isfinite(r):
            flag[s] = 3
        elif r <= tol:
            flag[s] = 0
        elif r > DIVERGENCE_RATIO * r_first[g]:
            flag[s] = 2
        elif k == max_iter:
            flag[s] = 1
        else:
            flag[s] = -1
        if flag[s] >= 0:
            continue
        going += 1
        if method == 5:
            _anderson_step(s, g, Xa, T, r, alpha, accept, m, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, Gm)
        elif Mat32 is not None:
            dn = _step_mixed(method, code, slope, alpha, norm, Xa[s], T[s], Z[s], Da[s] if scaled else T[s], scaled,
                             D32[s])
            e = (err[g] if approx else 0.0) + K * dn
            guess = r * min(1.0, r / rprev[g]) if 0.0 < rprev[g] < math.inf else r
            exact[s] = not (dn <= 1e30) or guess <= 2.0 * tol or e > 0.25 * r or k + 1 >= max_iter
            err[g] = e
            rprev[g] = r
        elif method == 2:
            _prox_step(code, slope, alpha, Xa[s], Z[s])
        elif not splitting:
            _average_step(alpha, Xa[s], T[s])
    if splitting and going > 0:
        # v = 2x − u; y = M⁻¹(v + α w); PR: u = 2y − v; DR: u = u + y − x (rows that go on).
        for s in range(na):
            for i in range(n):
                Z[s, i] = 2.0 * Xa[s, i] - Ua[s, i] + alpha * Wa[s, i]
        np.dot(Z[:na], MinvT, Y[:na])
        for s in range(na):
            if flag[s] >= 0:
                continue
            for i in range(n):
                if method == 3:
                    Ua[s, i] = 2.0 * Y[s, i] - (2.0 * Xa[s, i] - Ua[s, i])
                else:
                    Ua[s, i] = Ua[s, i] + Y[s, i] - Xa[s, i]


@njit(cache=True, inline="always")
def _move_row(M, a, b, swap):
    """Row ``a`` of ``M`` gets row ``b`` (``swap``: they trade places)."""
    for i in range(M.shape[1]):
        v = M[a, i]
        M[a, i] = M[b, i]
        if swap:
            M[b, i] = v


@njit(cache=True)
def _solve_rows(method, Mat, W, D, X0, MinvT, alpha, code, slope, atol, rtol, max_iter, norm, accept, m,
                X, iters, res, codes, hist, record, Zout, Mat32, K):
    """The whole iteration on one block of samples (the rows of ``W``), independent of every
    other block. Returns the last iteration index.

    Every work array, down to the per-sample flags, is the block's own, allocated here: two
    threads writing neighbouring entries of one shared array (the flags of samples 49 and 50
    share a cache line) bounce that line between cores on every write, and that alone made
    two blocks take as long as one (measured: 1.06 ms against 1.14 ms serial for 100 × 100).
    The inputs ``W``, ``D``, ``X0`` are only read (``X0`` without rows: start at 0); ``X``, ``iters``, ``res``, ``codes`` and
    ``hist`` (views of the caller's output at this block's samples) are written once per
    finished sample (``hist`` once per iteration when recording). ``Zout``, when it has rows,
    receives each sample's last ``A x + w`` (of the returned ``x``: the stopping rule's own
    product, so a caller that needs it saves one product). The active samples stay
    packed at the start of the work arrays: finished ones are written out and the rest move
    up, those due for an exact product (mixed products, ``Mat32`` not None: see
    :func:`_block`) ahead of the others.
    """
    rows, n = W.shape
    dt = W.dtype
    splitting = method == 3 or method == 4
    scaled = D.shape[0] > 0
    start = X0.shape[0] > 0  # else x0 = 0, allocated here (on the core that uses it)
    Xa = X0.copy() if start else np.zeros_like(W)
    Wa = W.copy()
    Da = D.copy()
    Z = np.empty_like(Xa)
    T = np.empty_like(Xa)  # σ(Z) of the current pass
    S = np.empty((rows if scaled else 0, n), dt)
    nb = rows if splitting else 0
    Ua = np.empty((nb, n), dt)
    Y = np.empty((nb, n), dt)
    idx = np.arange(rows)
    r_first = np.zeros(rows)
    r_cur = np.zeros(rows)
    flag = np.zeros(rows, np.int8)
    na_ = rows if method == 5 else 0
    mm = m if method == 5 else 0
    gp = np.zeros((na_, n), dt)
    fp = np.zeros((na_, n), dt)
    rp = np.full(na_, np.inf)
    forced = np.ones(na_, np.bool_)
    dF = np.zeros((na_, mm, n), dt)
    dG = np.zeros((na_, mm, n), dt)
    cnt = np.zeros(na_, np.int64)
    pos = np.zeros(na_, np.int64)
    H = np.zeros((na_, mm, mm))
    hb = np.zeros((na_, mm))
    Gm = np.zeros((na_, mm, mm))
    nm = 0  # rows of the mixed products' work arrays
    if Mat32 is not None:
        nm = rows
    P32 = np.empty((nm, n), np.float32)
    D32 = np.zeros((nm, n), np.float32)
    err = np.zeros(nm)
    rprev = np.full(nm, np.inf)
    exact = np.ones(rows, np.bool_)
    zero = True  # does the block start at x0 = 0?
    for s in range(rows if start else 0):
        for i in range(n):
            if Xa[s, i] != 0.0:
                zero = False
                break
        if not zero:
            break
    if splitting:  # u0 = (1 − α) x0 + α (A x0 + w)
        if zero:
            Z[:, :] = 0.0
        else:
            np.dot(Xa, Mat, Z)
        for s in range(rows):
            for i in range(n):
                Ua[s, i] = (1.0 - alpha) * Xa[s, i] + alpha * (Z[s, i] + Wa[s, i])
    na = rows
    ne = rows
    k = 0
    for k in range(max_iter + 1):
        skip = zero and k == 0 and not splitting
        _block(k, ne, na, skip, method, Mat, Xa, Wa, Da, Z, T, S, Ua, Y, MinvT, alpha, code, slope, atol, rtol,
               max_iter, norm, idx, r_first, r_cur, flag, accept, mm, gp, fp, rp, forced, dF, dG, cnt, pos, H, hb, Gm,
               Mat32, K, P32, D32, err, rprev, exact)
        j = 0
        for s in range(na):
            g = idx[s]
            if record:
                hist[k, g] = r_cur[s]
            if flag[s] >= 0:
                for i in range(n):
                    X[g, i] = Xa[s, i]
                if Zout.shape[0] > 0:
                    for i in range(n):
                        Zout[g, i] = Z[s, i]
                res[g] = r_cur[s]
                iters[g] = k
                codes[g] = flag[s]
                continue
            if j != s:
                idx[j] = g
                _move_row(Xa, j, s, False)
                _move_row(Wa, j, s, False)
                if scaled:
                    _move_row(Da, j, s, False)
                if splitting:
                    _move_row(Ua, j, s, False)
                if Mat32 is not None:
                    _move_row(Z, j, s, False)
                    _move_row(D32, j, s, False)
                    exact[j] = exact[s]
            j += 1
        na = j
        if na == 0:
            break
        ne = na
        if Mat32 is not None:  # the rows due for an exact product first
            a = 0
            b = na - 1
            while True:
                while a < na and exact[a]:
                    a += 1
                while b >= 0 and not exact[b]:
                    b -= 1
                if a >= b:
                    break
                idx[a], idx[b] = idx[b], idx[a]
                _move_row(Xa, a, b, True)
                _move_row(Wa, a, b, True)
                if scaled:
                    _move_row(Da, a, b, True)
                _move_row(Z, a, b, True)
                _move_row(D32, a, b, True)
                exact[a] = True
                exact[b] = False
            ne = a
    return k


def _run_impl(method, Mat, W, D, X0, alpha, code, slope, atol, rtol, max_iter, norm, MinvT, memory, accept, record,
              threads, Mat32, K):
    batch = W.shape[0]
    start = X0.shape[0] > 0  # else every sample starts at 0
    X = np.empty_like(W)  # every sample is written when it stops
    iters = np.zeros(batch, np.int64)
    res = np.zeros(batch, np.float64)
    codes = np.full(batch, -1, np.int8)
    hist = np.full((max_iter + 1 if record else 0, batch), np.nan)
    nblocks = max(1, min(threads, batch // MIN_BLOCK_ROWS))
    size = (batch + nblocks - 1) // nblocks
    last = np.zeros(nblocks, np.int64)
    for c in prange(nblocks):
        lo = c * size
        hi = min(batch, lo + size)
        if lo < hi:
            last[c] = _solve_rows(method, Mat, W[lo:hi], D[lo:hi], X0[lo:hi] if start else X0, MinvT, alpha, code, slope, atol, rtol,
                                  max_iter, norm, accept, memory, X[lo:hi], iters[lo:hi], res[lo:hi], codes[lo:hi],
                                  hist[:, lo:hi], record, X[:0], Mat32, K)
    if record:
        hist = hist[: last.max() + 1].copy()
    return X, iters, res, codes, hist


@njit(cache=True, fastmath={"reassoc", "contract"})
def _mixed_setup(Mat, norm):
    """``(Mat in float32, K)`` for mixed products: ``K ‖d‖`` bounds the
    error of the float32 product ``d Mat`` in the residual's norm, for any summation order:
    ``(n + 3) u₃₂`` (the rounding of ``d``, of ``Mat`` and of an n-term dot product) times
    the norm of ``d ↦ d Mat`` (largest column sum of ``|Mat|`` in ℓ∞, largest row sum in ℓ1)."""
    n = Mat.shape[0]
    Mat32 = np.empty((n, n), np.float32)
    sums = np.zeros(n)  # the column sums of |Mat| (norm 0), accumulated row by row
    big = 0.0  # the largest row sum (norm 1)
    for a in range(n):
        acc = 0.0
        for b in range(n):
            v = Mat[a, b]
            Mat32[a, b] = v
            if norm == 0:
                sums[b] += abs(v)
            else:
                acc += abs(v)
        big = max(big, acc)
    if norm == 0:
        big = sums.max()
    return Mat32, (n + 3) * 2.0**-24 * big


#: Fewest samples per thread block: below it a second thread costs more than it saves.
MIN_BLOCK_ROWS = 16



def _renamed(func, name: str):
    """A copy of ``func`` under another name. numba's on-disk cache files its compilations by
    qualified name and signature only, not by options: two dispatchers of one function (serial
    and ``parallel=True``) would load each other's machine code from the cache."""
    code = func.__code__.replace(co_name=name, co_qualname=name)
    clone = types.FunctionType(code, func.__globals__, name, func.__defaults__, func.__closure__)
    clone.__qualname__ = name
    clone.__doc__ = func.__doc__
    return clone


# Two compilations of one driver: ``prange`` over the thread blocks is a plain loop in the
# serial one (one thread, or too few rows for two blocks).
_run_serial = njit(cache=True)(_renamed(_run_impl, "_run_serial_impl"))
_run_parallel = njit(cache=True, parallel=PRANGE_ONLY)(_renamed(_run_impl, "_run_parallel_impl"))


def _thread_count() -> int:
    """Thread blocks per iteration: numba's current thread count (``numba.set_num_threads``)."""
    return numba.get_num_threads()


def run(method, Mat, W, D, X0, alpha, code, slope, atol, rtol, max_iter, norm, MinvT, memory, accept, record,
        mixed=False):
    """Same contract as :func:`solvers._numpy_engine.run`.

    The batch is split into one block per numba thread (``numba.set_num_threads``, at least
    :data:`MIN_BLOCK_ROWS` samples each); each thread iterates its block to the end with
    single-threaded BLAS products, so the BLAS pool is held at one thread meanwhile.
    ``mixed``: float32 products of the steps between exact ones (:func:`_block`); taken for
    float64 solves of :data:`MIXED_METHODS` without ``record``, ignored otherwise.
    """
    dtype = W.dtype
    mixed = bool(mixed) and method in MIXED_METHODS and dtype == np.float64 and not record
    D = np.zeros((0, W.shape[1]), dtype) if D is None else D
    X0 = np.zeros((0, W.shape[1]), dtype) if X0 is None else X0  # no rows: start at 0
    if MinvT.shape[0] == 0:
        MinvT = np.zeros((1, 1), dtype)
    threads = _thread_count()
    batch, n = W.shape
    parallel = threads > 1 and batch >= 2 * MIN_BLOCK_ROWS
    kernel = _run_parallel if parallel else _run_serial
    # Without mixed products Mat32 is None: the kernels are then compiled without that code.
    Mat32, K = _mixed_setup(Mat, int(norm)) if mixed else (None, 0.0)
    args = (METHOD_CODES[method], Mat, W, D, X0, float(alpha), int(code), float(slope), float(atol),
            float(rtol), int(max_iter), int(norm), MinvT, int(memory), float(accept), bool(record), threads,
            Mat32, K)
    # The blocks' products run on one BLAS thread each; a serial solve keeps BLAS's pool
    # for products big enough to share (SMALL_GEMM_WORK).
    if parallel or batch * n * n < SMALL_GEMM_WORK:
        with blas_threads(1):
            X, iters, res, codes, hist = kernel(*args)
    else:
        X, iters, res, codes, hist = kernel(*args)
    return X, iters, res, codes, (hist if record else None)
