"""Linear operators the compiled engines iterate over, given by their primitives.

An engine never sees "a matrix": it calls three primitives on a block of rows,

- :func:`apply`       ``out = X Aᵀ``       (the forward product, row-major batch),
- :func:`apply_T`     ``out = X A``        (the adjoint's product),
- :func:`resolvent`   ``out = X M⁻ᵀ``      with ``M = (1 + α) I − α A`` (the splittings),

each an ``@overload`` that numba resolves at compile time from the operator's type. A new
operator (a convolution, a sparse or low-rank matrix) is one more namedtuple type and one
more branch in each overload, plus its theory in :mod:`contraction`; the loop driver, the
methods and the stopping rule do not change.
"""

from __future__ import annotations

import collections

import numpy as np
from numba import njit
from numba.extending import overload

from .kernels import compiled_only

__all__ = ["Dense", "dense", "Conv", "conv", "correlate", "correlate_grad", "apply", "apply_T", "resolvent"]

#: A dense matrix ``A``: ``AT = Aᵀ`` (C-contiguous, for the forward product), ``A`` (for the
#: adjoint) and ``MinvT = ((1 + α) I − α A)⁻ᵀ`` (the splittings). A field a solve does not
#: use holds a (0, 0) array.
Dense = collections.namedtuple("Dense", ["A", "AT", "MinvT"])


def dense(A: np.ndarray, *, forward: bool = True, adjoint: bool = False, MinvT=None) -> Dense:
    """The :class:`Dense` operator of ``A`` (C-contiguous, in the solve's dtype) with the fields
    a solve needs: ``forward`` (``Aᵀ``), ``adjoint`` (``A``), ``MinvT`` (the splittings)."""
    none = np.zeros((0, 0), A.dtype)
    return Dense(
        np.ascontiguousarray(A) if adjoint else none,
        np.ascontiguousarray(A.T) if forward else none,
        none if MinvT is None else MinvT,
    )


def _kind(op):
    return getattr(op, "instance_class", None)


apply = compiled_only("apply", "``out = X Aᵀ``.")
apply_T = compiled_only("apply_T", "``out = X A``.")
resolvent = compiled_only("resolvent", "``out = X M⁻ᵀ``, ``M = (1 + α) I − α A``.")


def _dense_primitive(primitive, field: int) -> None:
    """``primitive(op, X, out)`` for a :class:`Dense` ``op``: ``out = X op[field]`` (one GEMM)."""

    @overload(primitive)
    def _for(op, X, out):
        if _kind(op) is Dense:
            return lambda op, X, out: np.dot(X, op[field], out)


for _primitive, _field in ((apply, Dense._fields.index("AT")), (apply_T, Dense._fields.index("A")),
                           (resolvent, Dense._fields.index("MinvT"))):
    _dense_primitive(_primitive, _field)


#: A convolution (:class:`contraction.Conv2d`, square): ``K`` its kernel (C, C, k, k) and ``KT``
#: the adjoint's (flipped, channels swapped), both in the solve's dtype; ``H``, ``W`` the image
#: size; ``circular`` the padding (else zeros); ``R`` the inverse symbol ``M̂(f)⁻¹`` on the half
#: spectrum (H, W//2 + 1, C, C), complex128, for the splittings (circular padding only; no
#: entries when unused).
Conv = collections.namedtuple("Conv", ["K", "KT", "H", "W", "circular", "R"])


def conv(op, dtype, *, resolvent=None) -> Conv:
    """The :class:`Conv` operator of a square :class:`contraction.Conv2d` ``op`` in ``dtype``,
    with the inverse symbol ``resolvent`` for the splittings."""
    K = op.kernel
    H, W = op.image_shape
    return Conv(
        np.ascontiguousarray(K, dtype=dtype),
        np.ascontiguousarray(K[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), dtype=dtype),
        int(H), int(W), op.padding == "circular",
        np.zeros((0, 0, 0, 0), np.complex128) if resolvent is None else resolvent,
    )


@njit(cache=True, inline="always")
def _pad_into(x, H, W, p, circular, xp):
    """Copy the image ``x`` (C·H·W, row-major) into the padded planes ``xp`` (C, (H + 2p)(W + 2p)):
    the border wraps around (circular) or is left as it is (zeros: never written)."""
    Wp = W + 2 * p
    for c in range(xp.shape[0]):
        xc = xp[c]
        for i in range(H):
            src = (c * H + i) * W
            dst = (i + p) * Wp + p
            for j in range(W):
                xc[dst + j] = x[src + j]
            if circular:  # the columns wrap around
                for j in range(p):
                    xc[dst - p + j] = x[src + W - p + j]
                    xc[dst + W + j] = x[src + j]
        if circular:  # the rows wrap around: padded row i holds image row (i − p) mod H
            for i in range(p):
                for j in range(Wp):
                    xc[i * Wp + j] = xc[(i + H) * Wp + j]
                    xc[(H + p + i) * Wp + j] = xc[(p + i) * Wp + j]


@njit(cache=True, fastmath={"reassoc", "contract"})
def _correlate_grad(V, X, k, H, W, circular, out):
    """``out[c, c', di, dj] = Σ_s Σ_{i, j} V[s, c, i, j] · x_s[c', i + di − p, j + dj − p]``: the
    gradient of ``Σ_s ⟨V_s, K ⋆ X_s⟩`` with respect to the kernel (same padding as
    :func:`_correlate`), ``out`` (C_out, C_in, k, k) overwritten."""
    C_out, C_in = out.shape[0], out.shape[1]
    p = k // 2
    Wp = W + 2 * p
    xp = np.zeros((C_in, (H + 2 * p) * Wp), X.dtype)
    out[:] = 0.0
    for s in range(X.shape[0]):
        _pad_into(X[s], H, W, p, circular, xp)
        v = V[s]
        for c in range(C_out):
            for c2 in range(C_in):
                xc = xp[c2]
                for di in range(k):
                    for dj in range(k):
                        total = 0.0
                        for i in range(H):
                            vrow = (c * H + i) * W
                            xrow = (i + di) * Wp + dj
                            for j in range(W):
                                total += v[vrow + j] * xc[xrow + j]
                        out[c, c2, di, dj] += total


@njit(cache=True, fastmath={"contract"})
def _correlate(K, H, W, circular, X, out):
    """``out[s] = K ⋆ X[s]`` per row: the "same" cross-correlation of each image
    ``X[s]`` (C_in·H·W, row-major) with ``K`` (C_out, C_in, k, k), circular or zero padding.

    Each image is copied once into a padded buffer of width ``W + 2p``; in it, a tap's
    contribution to the whole output plane is one contiguous multiply-add (the pad columns of
    the output plane take values that are never read), so the inner loop runs over ``H (W + 2p)``
    entries rather than over one row."""
    C_out, C_in, k, _ = K.shape
    p = k // 2
    Hp = H + 2 * p
    Wp = W + 2 * p
    L = (H - 1) * Wp + W  # from output pixel (0, 0) to (H − 1, W − 1) in the padded layout
    xp = np.zeros((C_in, Hp * Wp), X.dtype)  # zero padding: the border is never written
    acc = np.empty(L, X.dtype)
    for s in range(X.shape[0]):
        _pad_into(X[s], H, W, p, circular, xp)
        o = out[s]
        for c in range(C_out):
            acc[:] = 0.0
            for c2 in range(C_in):
                xc = xp[c2]
                for di in range(k):
                    # Three taps of a kernel row per pass: one load and store of ``acc`` per
                    # three multiply-adds.
                    for dj in range(0, k - 2, 3):
                        w0 = K[c, c2, di, dj]
                        w1 = K[c, c2, di, dj + 1]
                        w2 = K[c, c2, di, dj + 2]
                        src = xc[di * Wp + dj: di * Wp + dj + L + 2]
                        for t in range(L):
                            acc[t] += w0 * src[t] + w1 * src[t + 1] + w2 * src[t + 2]
                    for dj in range(k - k % 3, k):
                        w = K[c, c2, di, dj]
                        src = xc[di * Wp + dj: di * Wp + dj + L]
                        for t in range(L):
                            acc[t] += w * src[t]
            for i in range(H):
                base = (c * H + i) * W
                for j in range(W):
                    o[base + j] = acc[i * Wp + j]


@njit(cache=True)
def _twiddles(m, N):
    """``(cos, sin)`` of ``2π a b / N`` for ``a < m``, ``b < N`` (the product reduced mod N
    first, so that large angles lose no accuracy)."""
    cos = np.empty((m, N))
    sin = np.empty((m, N))
    for a in range(m):
        for b in range(N):
            t = 2.0 * np.pi * ((a * b) % N) / N
            cos[a, b] = np.cos(t)
            sin[a, b] = np.sin(t)
    return cos, sin


@njit(cache=True, fastmath={"reassoc", "contract"}, inline="always")
def _dft_rows(cos, sin, sign, scale, Sr, Si, Dr, Di):
    """``D[c, u, v] = scale · Σ_h exp(sign · 2πi u h / H) S[c, h, v]`` (the DFT along the
    rows of each channel; ``sign = −1`` forward, ``+1`` inverse), real and imaginary parts
    apart."""
    C, H, Wh = Sr.shape
    Dr[:] = 0.0
    Di[:] = 0.0
    for c in range(C):
        for u in range(H):
            for h in range(H):
                er = scale * cos[u, h]
                ei = sign * scale * sin[u, h]
                for v in range(Wh):
                    Dr[c, u, v] += er * Sr[c, h, v] - ei * Si[c, h, v]
                    Di[c, u, v] += er * Si[c, h, v] + ei * Sr[c, h, v]


@njit(cache=True, fastmath={"reassoc", "contract"})
def _inverse_symbol_apply(R, H, W, X, out):
    """``out[s] = M⁻¹ X[s]`` per row for a circular convolution whose inverse symbol on the half
    spectrum is ``R`` (H, W//2 + 1, C, C): a real DFT along the columns, a DFT along the rows,
    one ``C × C`` product per frequency, and the inverse transforms, as direct sums in float64
    with the real and imaginary parts in separate arrays (every inner loop runs over
    contiguous entries)."""
    C = R.shape[2]
    Wh = R.shape[1]
    cw, sw = _twiddles(Wh, W)
    ch, sh = _twiddles(H, H)
    # The real inverse along the columns: every v but 0 (and W/2 for even W) stands for ±v.
    weight = np.full(Wh, 2.0 / W)
    weight[0] = 1.0 / W
    if W % 2 == 0:
        weight[Wh - 1] = 1.0 / W
    Ar = np.empty((C, H, Wh))
    Ai = np.empty((C, H, Wh))
    Br = np.empty((C, H, Wh))
    Bi = np.empty((C, H, Wh))
    yr = np.empty(C)
    yi = np.empty(C)
    row = np.empty(W)
    for s in range(X.shape[0]):
        x = X[s]
        for c in range(C):  # x̂ along the columns: Σ_w x e^{−2πi v w / W}
            for h in range(H):
                base = (c * H + h) * W
                for w in range(W):
                    row[w] = x[base + w]
                for v in range(Wh):
                    re = 0.0
                    im = 0.0
                    for w in range(W):
                        re += row[w] * cw[v, w]
                        im -= row[w] * sw[v, w]
                    Ar[c, h, v] = re
                    Ai[c, h, v] = im
        _dft_rows(ch, sh, -1.0, 1.0, Ar, Ai, Br, Bi)
        for u in range(H):  # M̂(f)⁻¹ per frequency
            for v in range(Wh):
                for c in range(C):
                    re = 0.0
                    im = 0.0
                    for d in range(C):
                        rr = R[u, v, c, d].real
                        ri = R[u, v, c, d].imag
                        re += rr * Br[d, u, v] - ri * Bi[d, u, v]
                        im += rr * Bi[d, u, v] + ri * Br[d, u, v]
                    yr[c] = re
                    yi[c] = im
                for c in range(C):
                    Br[c, u, v] = yr[c]
                    Bi[c, u, v] = yi[c]
        _dft_rows(ch, sh, 1.0, 1.0 / H, Br, Bi, Ar, Ai)
        o = out[s]
        for c in range(C):  # real inverse along the columns
            for h in range(H):
                for w in range(W):
                    row[w] = 0.0
                for v in range(Wh):
                    a = weight[v] * Ar[c, h, v]
                    b = weight[v] * Ai[c, h, v]
                    for w in range(W):
                        row[w] += a * cw[v, w] - b * sw[v, w]
                base = (c * H + h) * W
                for w in range(W):
                    o[base + w] = row[w]


#: ``correlate(K, H, W, circular, X, out)``: ``out[s] = K ⋆ X[s]`` for every row of ``X`` (compiled;
#: ``K`` (C_out, C_in, k, k) C-contiguous in ``X``'s dtype), for clients that need a convolution's
#: products outside a solve (the convolutional network's ``B ⋆ u`` and ``A ⋆ x``).
correlate = _correlate
#: ``correlate_grad(V, X, k, H, W, circular, out)``: the kernel gradient of ``Σ ⟨V_s, K ⋆ X_s⟩``.
correlate_grad = _correlate_grad


@overload(apply)
def _conv_apply(op, X, out):
    if _kind(op) is Conv:
        return lambda op, X, out: _correlate(op.K, op.H, op.W, op.circular, X, out)


@overload(apply_T)
def _conv_apply_T(op, X, out):
    if _kind(op) is Conv:
        return lambda op, X, out: _correlate(op.KT, op.H, op.W, op.circular, X, out)


@overload(resolvent)
def _conv_resolvent(op, X, out):
    if _kind(op) is Conv:
        return lambda op, X, out: _inverse_symbol_apply(op.R, op.H, op.W, X, out)
