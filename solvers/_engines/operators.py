"""Linear operators the compiled engines iterate over, given by their primitives.

An engine never sees "a matrix": it calls three primitives on a block of rows,

- :func:`apply`       ``out = X Aᵀ``       (the forward product, row-major batch),
- :func:`apply_T`     ``out = X A``        (the adjoint's product),
- :func:`resolvent`   ``out = X M⁻ᵀ``      with ``M = (1 + α) I − α A`` (the splittings),

each with the operator's :func:`workspace` (its scratch, allocated once per thread block), and
asks :func:`by_row` whether the operator is applied to the whole block at once (a dense matrix:
one GEMM) or one row at a time inside the pass over the rows (a convolution: each row's product
is used while it is still in the cache, and the iterate needs no packed copy). Each is an
``@overload`` that numba resolves at compile time from the operator's type. A new operator (a
convolution, a sparse or low-rank matrix) is one more namedtuple type and one more branch in
each overload, plus its theory in :mod:`contraction`; the loop driver, the methods and the
stopping rule do not change.
"""

from __future__ import annotations

import collections

import numpy as np
from numba import config, njit
from numba.core.codegen import get_host_cpu_features
from numba.extending import overload

from .kernels import compiled_only

__all__ = ["Dense", "dense", "Conv", "conv", "embedded_half", "Taps", "taps", "correlate", "correlate_grad", "apply",
           "apply_T", "resolvent", "workspace", "by_row", "rowwise", "ConvRows", "conv_rows", "conv_geometry",
           "pack_padded", "wrap_padded", "pack_output", "unpack_output", "unpack_padded", "padded_product"]

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


apply = compiled_only("apply", "``out = X Aᵀ`` (``ws``: the operator's :func:`workspace`).")
apply_T = compiled_only("apply_T", "``out = X A`` (``ws``: the operator's :func:`workspace`).")
resolvent = compiled_only("resolvent", "``out = X M⁻ᵀ``, ``M = (1 + α) I − α A`` (``ws``: the operator's :func:`workspace`).")
workspace = compiled_only("workspace", "The operator's scratch for its primitives, one per thread block.")
by_row = compiled_only("by_row", "Whether the engine applies the operator one row at a time (compile-time constant).")


def _dense_primitive(primitive, field: int) -> None:
    """``primitive(op, X, out, ws)`` for a :class:`Dense` ``op``: ``out = X op[field]`` (one GEMM)."""

    @overload(primitive)
    def _for(op, X, out, ws):
        if _kind(op) is Dense:
            return lambda op, X, out, ws: np.dot(X, op[field], out)


for _primitive, _field in ((apply, Dense._fields.index("AT")), (apply_T, Dense._fields.index("A")),
                           (resolvent, Dense._fields.index("MinvT"))):
    _dense_primitive(_primitive, _field)


@overload(workspace)
def _workspace(op):
    if _kind(op) is Dense:
        return lambda op: ()  # BLAS keeps its own
    if _kind(op) is Conv:
        return lambda op: _scratch(_taps_of(op, op.K4, op.K1), op.K.dtype, 2 * op.split * op.H * op.W)


def rowwise(op) -> bool:
    """:func:`by_row` of the operator type ``op`` (numba's), for overloads resolved at compile
    time: a GEMM wants the whole block; a convolution gains nothing from it."""
    return _kind(op) is Conv


@overload(by_row)
def _by_row(op):
    value = rowwise(op)
    return lambda op: value


#: A convolution (:class:`contraction.Conv2d`, square): ``K`` its kernel (C, C, k, k) and ``KT``
#: the adjoint's (flipped, channels swapped), both in the solve's dtype; ``H``, ``W`` the image
#: size; ``circular`` the padding (else zeros); ``R`` the inverse symbol ``M̂(f)⁻¹`` on the half
#: spectrum (H, W//2 + 1, C, C), complex128, for the splittings (circular padding only; no
#: entries when unused); ``K4``, ``K1`` and ``KT4``, ``KT1`` the weights of ``K`` and ``KT`` laid
#: out as in :class:`Taps`, ``offs`` their taps' offsets. Flat (arrays and scalars only), so that
#: numba's ``prange`` can hand it to its threads.
#:
#: ``split`` is ``C`` when ``K`` has the embedded network's structure ``[[M, N], [N, M]]`` (2C
#: channels, :meth:`ConvImplicitNetwork.embedded_system`) and the solve asked for the split
#: product (:func:`conv`), else 0. Then ``K4``, ``K1`` (``KT4``, ``KT1``) hold the taps of the
#: C-channel kernel ``(M + N)/2`` (of its adjoint) and ``D4``, ``D1`` (``DT4``, ``DT1``) those of
#: ``(M − N)/2``: with ``s = x_hi + x_lo`` and ``d = x_hi − x_lo``, the product is
#: ``[(M + N)/2 ⋆ s + (M − N)/2 ⋆ d, (M + N)/2 ⋆ s − (M − N)/2 ⋆ d]``, two C-channel passes
#: instead of one 2C-channel pass: half the multiply-adds (:func:`_split_rows`). The adjoint has
#: the same structure (``Mᵀ``, ``Nᵀ``). Otherwise the ``D`` fields hold empty arrays.
Conv = collections.namedtuple("Conv", ["K", "KT", "H", "W", "circular", "R", "K4", "K1", "KT4", "KT1", "offs",
                                       "split", "D4", "D1", "DT4", "DT1"])


def embedded_half(K) -> int:
    """``C`` when the kernel ``K`` (2C, 2C, k, k) is ``[[M, N], [N, M]]`` (the embedded
    network's), else 0."""
    C = K.shape[0] // 2
    if K.shape[0] != K.shape[1] or K.shape[0] % 2 or C == 0:
        return 0
    same = np.array_equal(K[:C, :C], K[C:, C:]) and np.array_equal(K[:C, C:], K[C:, :C])
    return C if same else 0


def conv(op, dtype, *, resolvent=None, split: bool = False) -> Conv:
    """The :class:`Conv` operator of a square :class:`contraction.Conv2d` ``op`` in ``dtype``,
    with the inverse symbol ``resolvent`` for the splittings; ``split``: use the split product
    when the kernel has the embedded network's structure (:func:`embedded_half`)."""
    K = np.ascontiguousarray(op.kernel, dtype=dtype)
    KT = np.ascontiguousarray(op.kernel[:, :, ::-1, ::-1].transpose(1, 0, 2, 3), dtype=dtype)
    H, W = (int(v) for v in op.image_shape)
    circular = op.padding == "circular"
    R = np.zeros((0, 0, 0, 0), np.complex128) if resolvent is None else resolvent
    C = embedded_half(op.kernel) if split else 0
    if not C:
        fwd, adj = taps(K, H, W, circular), taps(KT, H, W, circular)
        none = np.zeros((0, 0, 0, 0), dtype), np.zeros((0, 0, 0), dtype)
        return Conv(K, KT, H, W, circular, R, fwd.K4, fwd.K1, adj.K4, adj.K1, fwd.offs, 0, *none, *none)
    # The halves in float64, rounded once: M and N of an embedded kernel have disjoint taps,
    # so (M ± N)/2 are exact.
    M, N = np.asarray(op.kernel[:C, :C], np.float64), np.asarray(op.kernel[:C, C:], np.float64)
    halves = []
    for G in (0.5 * (M + N), 0.5 * (M - N)):
        GT = G[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        halves += [taps(np.ascontiguousarray(G, dtype=dtype), H, W, circular),
                   taps(np.ascontiguousarray(GT, dtype=dtype), H, W, circular)]
    s, sT, d, dT = halves
    return Conv(K, KT, H, W, circular, R, s.K4, s.K1, sT.K4, sT.K1, s.offs, C, d.K4, d.K1, dT.K4, dT.K1)


@njit(cache=True, inline="always")
def _taps_of(op, K4, K1):
    """The :class:`Taps` of weights ``K4``, ``K1`` of a :class:`Conv` (``op.K4``, ``op.KT4``, and
    when split ``op.D4``, ``op.DT4``), whose input channels are ``K``'s, or ``C`` when split."""
    return Taps(K4, K1, op.offs, op.K.shape[2], op.K.shape[1] - op.split, op.H, op.W, op.circular)


#: Output channels and taps per pass of the convolution kernels (:func:`_taps4`, :func:`_dots4`):
#: each input value loaded feeds four output channels, each output value is loaded and stored
#: once per four taps, and the sixteen weights (or sums) stay in vector registers.
_BLOCK = 4
#: The span of output positions a pass runs over is rounded up to a multiple of this, so that
#: the vector loops (up to sixteen float32 lanes) end without a scalar remainder.
_VECTOR = 16


def _wide_registers() -> bool:
    """Whether numba compiles for 32 vector registers (AVX-512: the target's features, which
    ``NUMBA_CPU_FEATURES`` overrides as it does for numba's own code generation)."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return "+avx512f" in features.split(",")


#: Whether :func:`_correlate_rows` takes eight output channels per pass (:func:`_taps8`, two
#: blocks of weights) instead of four: with 32 vector registers most of a pass's 32 weights stay
#: in registers beside its eight accumulators and four inputs, and each input value loaded feeds
#: eight channels; with 16 (AVX2) most weights spill and the four-channel pass is the faster
#: one. Fixed per target, as numba's cache is.
_PAIRED = _wide_registers()


@njit(cache=True, inline="always")
def _layout(H, W, p, circular):
    """``(Wp, P, L)`` of the padded layout of an H × W image with a border of ``p``: the row
    stride ``Wp``, the plane size ``P`` and the span ``L`` of the output positions (from pixel
    (0, 0) at 0 to (H − 1, W − 1) at ``(H − 1) Wp + W − 1``, rounded up to :data:`_VECTOR`).

    Output pixel (i, j) sits at ``i Wp + j`` and tap (di, dj) reads ``di Wp + dj`` further, so a
    tap's contribution to a whole plane is one contiguous multiply-add; the positions ``j ≥ W``
    of each row are computed and never read. Circular padding needs ``Wp = W + 2p`` (the wrapped
    columns differ on the two sides); zero padding needs only ``Wp = W + p``, each row's ``p``
    leading zeros padding the previous row's right edge."""
    Wp = W + 2 * p if circular else W + p
    P = (H + 2 * p) * Wp
    L = -(-((H - 1) * Wp + W) // _VECTOR) * _VECTOR
    return Wp, P, L


@njit(cache=True, inline="always")
def _pad_into(x, H, W, p, Wp, circular, xp):
    """Copy the image ``x`` (C·H·W, row-major) into the padded planes ``xp`` (C, P) of
    :func:`_layout`, image row i at ``(i + p) Wp + p``: the border wraps around (circular,
    :func:`_wrap`) or is left as it is (zeros: never written). Rows are copied through slices,
    whose indices numba knows are non-negative (an index it cannot prove non-negative is
    wrapped around per element and the copy is not vectorised)."""
    for c in range(xp.shape[0]):
        xc = xp[c]
        for i in range(H):
            src = (c * H + i) * W
            dst = (i + p) * Wp
            row = x[src:src + W]
            image = xc[dst + p:dst + p + W]
            for j in range(W):
                image[j] = row[j]
        if circular:
            _wrap(xc, H, W, p, Wp)


@njit(cache=True, inline="always")
def _wrap(xc, H, W, p, Wp):
    """Fill the circular border of one padded plane ``xc`` from its image: the columns wrap
    around, then padded row i holds image row (i − p) mod H, corners included."""
    for i in range(H):
        dst = (i + p) * Wp
        for j in range(p):
            xc[dst + j] = xc[dst + W + j]
            xc[dst + p + W + j] = xc[dst + p + j]
    for i in range(p):
        top = xc[i * Wp:(i + 1) * Wp]
        top_src = xc[(i + H) * Wp:(i + H + 1) * Wp]
        bottom = xc[(H + p + i) * Wp:(H + p + i + 1) * Wp]
        bottom_src = xc[(p + i) * Wp:(p + i + 1) * Wp]
        for j in range(Wp):
            top[j] = top_src[j]
            bottom[j] = bottom_src[j]


@njit(cache=True, inline="always")
def _plane_into(v, H, W, Wp, vp):
    """Copy the planes of ``v`` (C·H·W, row-major) into ``vp`` (C, ≥ H Wp) at the output
    positions of :func:`_layout` (row i at ``i Wp``); the other entries are left as they are."""
    for c in range(vp.shape[0]):
        for i in range(H):
            row = v[(c * H + i) * W:(c * H + i + 1) * W]
            dst = vp[c, i * Wp:i * Wp + W]
            for j in range(W):
                dst[j] = row[j]


@njit(cache=True, inline="always")
def _plane_from(a, H, W, Wp, o, c):
    """Channel ``c`` of the image ``o`` (C·H·W, row-major) from the output positions of ``a``."""
    for i in range(H):
        row = o[(c * H + i) * W:(c * H + i + 1) * W]
        src = a[i * Wp:i * Wp + W]
        for j in range(W):
            row[j] = src[j]


@njit(cache=True, inline="always")
def _tap_offsets(C_in, k, Wp, P, groups):
    """The offset of each tap (c', di, dj), in row-major order, in the flat padded planes:
    ``c' P + di Wp + dj``; the ``_BLOCK · groups − C_in k²`` taps that fill the last group read
    the zeros past the planes (offset ``C_in P``)."""
    offs = np.full(_BLOCK * groups, C_in * P, np.int64)
    tap = 0
    for c2 in range(C_in):
        for di in range(k):
            for dj in range(k):
                offs[tap] = c2 * P + di * Wp + dj
                tap += 1
    return offs


@njit(cache=True, inline="always")
def _inputs(xp, offs):
    """The spans of the padded planes ``xp`` that four taps read: ``xp[offs[e]:]``."""
    return xp[offs[0]:], xp[offs[1]:], xp[offs[2]:], xp[offs[3]:]


@njit(cache=True, inline="always")
def _weights(w):
    """The sixteen weights of a block ``w[b, e]`` (four output channels, four taps), row by row,
    as scalars that the pass keeps in vector registers."""
    return (w[0, 0], w[0, 1], w[0, 2], w[0, 3], w[1, 0], w[1, 1], w[1, 2], w[1, 3],
            w[2, 0], w[2, 1], w[2, 2], w[2, 3], w[3, 0], w[3, 1], w[3, 2], w[3, 3])


@njit(cache=True, fastmath={"contract"}, inline="always")
def _taps4(acc, xp, offs, w, L):
    """``acc[b, t] += Σ_e w[b, e] · xp[offs[e] + t]`` for four output channels ``b`` and four
    taps ``e``, ``t < L``: four loads of ``xp`` and one load and store of each ``acc[b]`` per
    sixteen multiply-adds."""
    x0, x1, x2, x3 = _inputs(xp, offs)
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    w00, w01, w02, w03, w10, w11, w12, w13, w20, w21, w22, w23, w30, w31, w32, w33 = _weights(w)
    for t in range(L):
        y0 = x0[t]
        y1 = x1[t]
        y2 = x2[t]
        y3 = x3[t]
        a0[t] = a0[t] + w00 * y0 + w01 * y1 + w02 * y2 + w03 * y3
        a1[t] = a1[t] + w10 * y0 + w11 * y1 + w12 * y2 + w13 * y3
        a2[t] = a2[t] + w20 * y0 + w21 * y1 + w22 * y2 + w23 * y3
        a3[t] = a3[t] + w30 * y0 + w31 * y1 + w32 * y2 + w33 * y3


@njit(cache=True, fastmath={"contract"}, inline="always")
def _taps8(acc, xp, offs, w, v, L):
    """:func:`_taps4` for eight output channels: ``w`` the weights of channels 0-3 of ``acc``,
    ``v`` those of channels 4-7 (two blocks of :class:`Taps`' ``K4``): each input value loaded
    feeds eight channels."""
    x0, x1, x2, x3 = _inputs(xp, offs)
    a0, a1, a2, a3, a4, a5, a6, a7 = acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]
    w00, w01, w02, w03, w10, w11, w12, w13, w20, w21, w22, w23, w30, w31, w32, w33 = _weights(w)
    v00, v01, v02, v03, v10, v11, v12, v13, v20, v21, v22, v23, v30, v31, v32, v33 = _weights(v)
    for t in range(L):
        y0 = x0[t]
        y1 = x1[t]
        y2 = x2[t]
        y3 = x3[t]
        a0[t] = a0[t] + w00 * y0 + w01 * y1 + w02 * y2 + w03 * y3
        a1[t] = a1[t] + w10 * y0 + w11 * y1 + w12 * y2 + w13 * y3
        a2[t] = a2[t] + w20 * y0 + w21 * y1 + w22 * y2 + w23 * y3
        a3[t] = a3[t] + w30 * y0 + w31 * y1 + w32 * y2 + w33 * y3
        a4[t] = a4[t] + v00 * y0 + v01 * y1 + v02 * y2 + v03 * y3
        a5[t] = a5[t] + v10 * y0 + v11 * y1 + v12 * y2 + v13 * y3
        a6[t] = a6[t] + v20 * y0 + v21 * y1 + v22 * y2 + v23 * y3
        a7[t] = a7[t] + v30 * y0 + v31 * y1 + v32 * y2 + v33 * y3


@njit(cache=True, fastmath={"contract"}, inline="always")
def _taps1(a, xp, offs, w, L):
    """:func:`_taps4` for one output channel."""
    x0, x1, x2, x3 = _inputs(xp, offs)
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    for t in range(L):
        a[t] = a[t] + w0 * x0[t] + w1 * x1[t] + w2 * x2[t] + w3 * x3[t]


@njit(cache=True, fastmath={"reassoc", "contract"}, inline="always")
def _dots4(v, xp, offs, L, out):
    """``out[b, e] += Σ_{t < L} v[b, t] · xp[offs[e] + t]`` for four rows ``b`` of ``v`` and
    four taps ``e``: sixteen sums, each a vector of partial sums in a register (``reassoc``),
    over four loads of ``v`` and four of ``xp``."""
    x0, x1, x2, x3 = _inputs(xp, offs)
    v0 = v[0]
    v1 = v[1]
    v2 = v[2]
    v3 = v[3]
    zero = xp.dtype.type(0)  # sums in the dtype of the data (a float64 literal would promote them)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
    for t in range(L):
        y0 = x0[t]
        y1 = x1[t]
        y2 = x2[t]
        y3 = x3[t]
        u = v0[t]
        s00 += u * y0
        s01 += u * y1
        s02 += u * y2
        s03 += u * y3
        u = v1[t]
        s10 += u * y0
        s11 += u * y1
        s12 += u * y2
        s13 += u * y3
        u = v2[t]
        s20 += u * y0
        s21 += u * y1
        s22 += u * y2
        s23 += u * y3
        u = v3[t]
        s30 += u * y0
        s31 += u * y1
        s32 += u * y2
        s33 += u * y3
    out[0, 0] += s00
    out[0, 1] += s01
    out[0, 2] += s02
    out[0, 3] += s03
    out[1, 0] += s10
    out[1, 1] += s11
    out[1, 2] += s12
    out[1, 3] += s13
    out[2, 0] += s20
    out[2, 1] += s21
    out[2, 2] += s22
    out[2, 3] += s23
    out[3, 0] += s30
    out[3, 1] += s31
    out[3, 2] += s32
    out[3, 3] += s33


@njit(cache=True, fastmath={"reassoc", "contract"}, inline="always")
def _dots1(v, xp, offs, L, out):
    """:func:`_dots4` for one row ``v``."""
    x0, x1, x2, x3 = _inputs(xp, offs)
    zero = xp.dtype.type(0)
    s0 = s1 = s2 = s3 = zero
    for t in range(L):
        u = v[t]
        s0 += u * x0[t]
        s1 += u * x1[t]
        s2 += u * x2[t]
        s3 += u * x3[t]
    out[0] += s0
    out[1] += s1
    out[2] += s2
    out[3] += s3


@njit(cache=True, fastmath={"reassoc", "contract"})
def _correlate_grad(V, X, k, H, W, circular, out):
    """``out[c, c', di, dj] = Σ_s Σ_{i, j} V[s, c, i, j] · x_s[c', i + di − p, j + dj − p]``: the
    gradient of ``Σ_s ⟨V_s, K ⋆ X_s⟩`` with respect to the kernel (same padding as
    :func:`_correlate`), ``out`` (C_out, C_in, k, k) overwritten.

    Each ``X[s]`` is copied into the padded layout of :func:`_layout` and each ``V[s]`` into
    its output positions (zeros elsewhere), so that an entry is one dot product over ``L``
    contiguous positions; they are taken four output channels by four taps at a time
    (:func:`_dots4`) in the dtype of ``out`` (the copies convert ``V`` and ``X`` to it) and
    summed over the batch in float64."""
    C_out, C_in = out.shape[0], out.shape[1]
    p = k // 2
    Wp, P, L = _layout(H, W, p, circular)
    groups = -(-C_in * k * k // _BLOCK)
    offs = _tap_offsets(C_in, k, Wp, P, groups)
    blocks = C_out // _BLOCK
    # The planes, then L zeros: read by the taps that fill the last group, and by the last plane's
    # taps past its end (the span is rounded up).
    xp = np.zeros(C_in * P + L, out.dtype)
    planes = xp[: C_in * P].reshape(C_in, P)
    vp = np.zeros((C_out, L), out.dtype)  # zero but at the output positions
    g = np.zeros((C_out, _BLOCK * groups))  # g[c, tap]
    for s in range(X.shape[0]):
        _pad_into(X[s], H, W, p, Wp, circular, planes)
        _plane_into(V[s], H, W, Wp, vp)
        for b in range(blocks):
            c = _BLOCK * b
            for q in range(groups):
                e = _BLOCK * q
                _dots4(vp[c:c + _BLOCK], xp, offs[e:e + _BLOCK], L, g[c:c + _BLOCK, e:e + _BLOCK])
        for c in range(_BLOCK * blocks, C_out):
            for q in range(groups):
                e = _BLOCK * q
                _dots1(vp[c], xp, offs[e:e + _BLOCK], L, g[c, e:e + _BLOCK])
    for c in range(C_out):
        tap = 0
        for c2 in range(C_in):
            for di in range(k):
                for dj in range(k):
                    out[c, c2, di, dj] = g[c, tap]
                    tap += 1


#: A kernel (C_out, C_in, k, k) laid out for the convolution passes on H × W images
#: (:func:`taps`): ``K4[b, q, i, e]`` the weight of output channel ``4b + i`` and tap ``4q + e``,
#: ``K1[c, q, e]`` that of a left-over channel ``c`` (``C_out mod 4`` of them, the last ones; the
#: other rows are unused), ``offs`` each tap's offset in the padded planes (:func:`_tap_offsets`),
#: ``k`` and ``c_in`` the kernel's size and input channels, ``H``, ``W`` and ``circular`` the
#: images and the padding. Taps (c', di, dj) in row-major order, padded with zero weights to a
#: multiple of four.
Taps = collections.namedtuple("Taps", ["K4", "K1", "offs", "k", "c_in", "H", "W", "circular"])


@njit(cache=True)
def taps(K, H, W, circular):
    """The :class:`Taps` of the kernel ``K`` (C_out, C_in, k, k) on H × W images, in ``K``'s
    dtype: laid out once per operator, not once per product."""
    C_out, C_in, k, _ = K.shape
    Wp, P, L = _layout(H, W, k // 2, circular)
    groups = -(-C_in * k * k // _BLOCK)
    blocks = C_out // _BLOCK
    K4 = np.zeros((blocks, groups, _BLOCK, _BLOCK), K.dtype)
    K1 = np.zeros((C_out, groups, _BLOCK), K.dtype)
    for c in range(C_out):
        tap = 0
        for c2 in range(C_in):
            for di in range(k):
                for dj in range(k):
                    if c < _BLOCK * blocks:
                        K4[c // _BLOCK, tap // _BLOCK, c % _BLOCK, tap % _BLOCK] = K[c, c2, di, dj]
                    else:
                        K1[c, tap // _BLOCK, tap % _BLOCK] = K[c, c2, di, dj]
                    tap += 1
    return Taps(K4, K1, _tap_offsets(C_in, k, Wp, P, groups), k, C_in, H, W, circular)


#: The scratch of the convolution passes: ``xp`` the padded planes of one input image, then
#: ``L`` zeros (read by the taps that fill the last group, and by the last plane's taps past its
#: end: the span is rounded up); ``acc`` one output plane per output channel (:func:`_passes`);
#: ``sd`` the sum and difference images of a split product and their two products (4 rows; no
#: entries otherwise).
ConvScratch = collections.namedtuple("ConvScratch", ["xp", "acc", "sd"])


@njit(cache=True)
def _scratch(t, dtype, n=0):
    """The :class:`ConvScratch` of the :class:`Taps` ``t``, for split products of length ``n``
    (0: none). Zero padding keeps the border of ``xp`` at zero (it is never written), so the
    scratch serves any number of products."""
    Wp, P, L = _layout(t.H, t.W, t.k // 2, t.circular)
    return ConvScratch(np.zeros(t.c_in * P + L, dtype), np.empty((t.K1.shape[0], L), dtype),
                       np.empty((4 if n else 0, n // 2), dtype))


@njit(cache=True, fastmath={"contract"})
def _passes(t, xp, acc, paired):
    """``acc[c, :L] = Σ_taps K[c, tap] · xp[offs[tap] + t]``: every output channel ``c`` of the
    :class:`Taps` ``t`` over the span ``L`` of :func:`_layout`, from the padded planes ``xp``
    (followed by ``L`` zeros); output pixel (i, j) at ``i Wp + j``.

    The output channels are taken four at a time (:func:`_taps4`), or eight (two blocks of
    weights, :func:`_taps8`) when ``paired``, and the taps four at a time; the channels left
    over (``C_out mod 4``) one at a time (:func:`_taps1`)."""
    L = acc.shape[1]
    C_out = t.K1.shape[0]
    blocks, groups = t.K4.shape[0], t.K4.shape[1]
    offs = t.offs
    b = 0
    while b < blocks:
        if paired and b + 1 < blocks:
            eight = acc[_BLOCK * b:_BLOCK * b + 2 * _BLOCK]
            eight[:] = 0.0
            for q in range(groups):
                e = _BLOCK * q
                _taps8(eight, xp, offs[e:e + _BLOCK], t.K4[b, q], t.K4[b + 1, q], L)
            b += 2
            continue
        four = acc[_BLOCK * b:_BLOCK * b + _BLOCK]
        four[:] = 0.0
        for q in range(groups):
            _taps4(four, xp, offs[_BLOCK * q:_BLOCK * q + _BLOCK], t.K4[b, q], L)
        b += 1
    for c in range(_BLOCK * blocks, C_out):
        a = acc[c]
        a[:] = 0.0
        for q in range(groups):
            _taps1(a, xp, offs[_BLOCK * q:_BLOCK * q + _BLOCK], t.K1[c, q], L)


@njit(cache=True)
def _correlate_rows(t, X, out, ws, paired=_PAIRED):
    """``out[s] = K ⋆ X[s]`` per row: the "same" cross-correlation of each image ``X[s]``
    (C_in·H·W, row-major) with the kernel of the :class:`Taps` ``t``, circular or zero padding,
    in the scratch ``ws`` (:func:`_scratch`).

    Each image is copied once into the padded layout of :func:`_layout`, where a tap's
    contribution to a whole output plane is one contiguous multiply-add over ``L`` positions
    (:func:`_passes`, eight output channels per pass when ``paired``, by default where the
    target has the registers for it, :data:`_PAIRED`). Each output plane is copied out without
    its padding columns."""
    H, W, circular = t.H, t.W, t.circular
    p = t.k // 2
    Wp, P, L = _layout(H, W, p, circular)
    xp, acc = ws.xp, ws.acc
    planes = xp[: t.c_in * P].reshape(t.c_in, P)
    for s in range(X.shape[0]):
        _pad_into(X[s], H, W, p, Wp, circular, planes)
        _passes(t, xp, acc, paired)
        o = out[s]
        for c in range(acc.shape[0]):
            _plane_from(acc[c], H, W, Wp, o, c)


@njit(cache=True, fastmath={"contract"})
def _split_rows(t, d, X, out, ws):
    """``out[s] = [[M, N], [N, M]] ⋆ X[s]`` per row in two C-channel passes (:class:`Conv`'s
    ``split``): ``t`` the taps of ``(M + N)/2``, ``d`` those of ``(M − N)/2``, ``X[s] = [x_hi,
    x_lo]``."""
    m = X.shape[1] // 2
    sd = ws.sd
    for s in range(X.shape[0]):
        hi, lo = X[s, :m], X[s, m:]
        total, diff = sd[0], sd[1]
        for i in range(m):
            total[i] = hi[i] + lo[i]
            diff[i] = hi[i] - lo[i]
        _correlate_rows(t, sd[0:1], sd[2:3], ws)
        _correlate_rows(d, sd[1:2], sd[3:4], ws)
        a, b = sd[2], sd[3]
        o_hi, o_lo = out[s, :m], out[s, m:]
        for i in range(m):
            o_hi[i] = a[i] + b[i]
            o_lo[i] = a[i] - b[i]


@njit(cache=True)
def _correlate(K, H, W, circular, X, out):
    """``out[s] = K ⋆ X[s]`` for every row of ``X``: :func:`_correlate_rows` with the kernel
    laid out and the scratch allocated for this call."""
    t = taps(K, H, W, circular)
    _correlate_rows(t, X, out, _scratch(t, X.dtype))


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


@njit(cache=True)
def _half_spectrum_weights(W):
    """The real inverse DFT's weight of each column frequency ``v = 0 … W//2`` of a half
    spectrum: ``2/W``, as every ``v`` but 0 (and ``W/2`` for even ``W``) stands for ``±v``."""
    Wh = W // 2 + 1
    weight = np.full(Wh, 2.0 / W)
    weight[0] = 1.0 / W
    if W % 2 == 0:
        weight[Wh - 1] = 1.0 / W
    return weight


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
    weight = _half_spectrum_weights(W)
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


@njit(cache=True, inline="always")
def _conv_product(op, t, d, X, out, ws):
    """``out[s] = K ⋆ X[s]`` with the taps ``t`` (and, for a split :class:`Conv`, ``d`` those of
    ``(M − N)/2``)."""
    if op.split:
        _split_rows(t, d, X, out, ws)
    else:
        _correlate_rows(t, X, out, ws)


@overload(apply)
def _conv_apply(op, X, out, ws):
    if _kind(op) is Conv:
        return lambda op, X, out, ws: _conv_product(op, _taps_of(op, op.K4, op.K1), _taps_of(op, op.D4, op.D1),
                                                    X, out, ws)


@overload(apply_T)
def _conv_apply_T(op, X, out, ws):
    if _kind(op) is Conv:
        return lambda op, X, out, ws: _conv_product(op, _taps_of(op, op.KT4, op.KT1), _taps_of(op, op.DT4, op.DT1),
                                                    X, out, ws)


@overload(resolvent)
def _conv_resolvent(op, X, out, ws):
    if _kind(op) is Conv:
        return lambda op, X, out, ws: _inverse_symbol_apply(op.R, op.H, op.W, X, out)


# -- a convolution's iteration in its padded layout (the averaged steps, one sample at a time) --

#: The scratch of :mod:`.numba_engine`'s averaged steps on a :class:`Conv`, which keep one
#: sample's iteration in the layout of the passes (:func:`_layout`) from its first product to
#: its last instead of copying each iterate in and each product out: ``X`` two buffers (the
#: current iterate and the next) of the padded planes the product reads (the forward iterate
#: ``x``, or the adjoint's ``λ ⊙ d``), each followed by ``L`` zeros; ``Lam`` the adjoint's two
#: ``λ``, ``acc`` the product (then ``z``), ``Wo`` the right-hand side, ``Do`` the adjoint's
#: scales and ``Ao`` the per-unit steps, all at the output positions of :func:`_layout` (C, L),
#: every position that is not a pixel held at 0; ``valid`` 1 at the pixels and 0 elsewhere
#: (L,), in the dtype; ``sd`` the padded sum and difference planes of a split product (no
#: entries otherwise); ``cur`` the index of the current buffer.
ConvRows = collections.namedtuple("ConvRows", ["X", "Lam", "acc", "Wo", "Do", "Ao", "valid", "sd", "cur"])


@njit(cache=True)
def conv_rows(op):
    """The :class:`ConvRows` of the :class:`Conv` ``op``, zeroed (zero padding's borders and the
    positions that are not pixels stay 0)."""
    H, W, p = op.H, op.W, op.K.shape[2] // 2
    Wp, P, L = _layout(H, W, p, op.circular)
    C, dt = op.K.shape[0], op.K.dtype
    Cs = op.split
    valid = np.zeros(L, dt)
    for i in range(H):
        valid[i * Wp:i * Wp + W] = 1.0
    return ConvRows(np.zeros((2, C * P + L), dt), np.zeros((2, C, L), dt), np.zeros((C, L), dt),
                    np.zeros((C, L), dt), np.zeros((C, L), dt), np.zeros((C, L), dt), valid,
                    np.zeros((2 if Cs else 0, Cs * P + L), dt), np.zeros(1, np.int64))


@njit(cache=True)
def conv_geometry(op):
    """``(Wp, P, L, o)`` of a :class:`Conv`'s padded layout (:func:`_layout`); ``o`` the offset
    of output position 0 (pixel (0, 0)) in a padded plane."""
    p = op.K.shape[2] // 2
    Wp, P, L = _layout(op.H, op.W, p, op.circular)
    return Wp, P, L, p * Wp + p


@njit(cache=True)
def pack_padded(op, x, xin):
    """The padded planes ``xin`` of the image ``x`` (C·H·W) with its border (:func:`_pad_into`)."""
    Wp, P, L, o = conv_geometry(op)
    C = op.K.shape[1]
    _pad_into(x, op.H, op.W, o // Wp, Wp, op.circular, xin[:C * P].reshape(C, P))


@njit(cache=True)
def wrap_padded(op, xin):
    """Refill the circular border of every plane of ``xin`` from its image (nothing for zeros)."""
    if op.circular:
        Wp, P, L, o = conv_geometry(op)
        for c in range(op.K.shape[1]):
            _wrap(xin[c * P:(c + 1) * P], op.H, op.W, o // Wp, Wp)


@njit(cache=True)
def pack_output(op, v, dst):
    """``dst`` (C, L) at the output positions ← the image ``v`` (C·H·W)."""
    Wp, P, L, o = conv_geometry(op)
    _plane_into(v, op.H, op.W, Wp, dst)


@njit(cache=True)
def unpack_output(op, src, row):
    """The image ``row`` (C·H·W) ← the output positions of ``src`` (C, L)."""
    Wp, P, L, o = conv_geometry(op)
    for c in range(src.shape[0]):
        _plane_from(src[c], op.H, op.W, Wp, row, c)


@njit(cache=True)
def unpack_padded(op, xin, row):
    """The image ``row`` (C·H·W) ← the padded planes ``xin``."""
    Wp, P, L, o = conv_geometry(op)
    for c in range(op.K.shape[1]):
        _plane_from(xin[c * P + o:], op.H, op.W, Wp, row, c)


@njit(cache=True)
def padded_product(op, adjoint, xin, acc, rs):
    """``acc`` (C, L) ← the product of the padded planes ``xin`` (``K``, or ``Kᵀ`` when
    ``adjoint``), as :func:`_conv_product` computes it: a split operator's passes run on the
    padded sum and difference planes (``rs.sd``), whose borders are the sums and differences
    of the borders."""
    t = _taps_of(op, op.KT4, op.KT1) if adjoint else _taps_of(op, op.K4, op.K1)
    if not op.split:
        _passes(t, xin, acc, _PAIRED)
        return
    d = _taps_of(op, op.DT4, op.DT1) if adjoint else _taps_of(op, op.D4, op.D1)
    Wp, P, L, o = conv_geometry(op)
    m = op.split * P
    total, diff = rs.sd[0], rs.sd[1]
    for i in range(m):
        total[i] = xin[i] + xin[m + i]
        diff[i] = xin[i] - xin[m + i]
    a, b = acc[:op.split], acc[op.split:]
    _passes(t, total, a, _PAIRED)
    _passes(d, diff, b, _PAIRED)
    for c in range(op.split):
        for i in range(L):
            u, v = a[c, i], b[c, i]
            a[c, i] = u + v
            b[c, i] = u - v
