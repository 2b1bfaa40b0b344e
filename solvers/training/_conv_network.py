"""A convolutional implicit layer: ``x = σ(A ⋆ x + B ⋆ u + b)``, an average pool, a readout.

The state is ``channels`` images of the input's size, flattened row-major (channel, row,
column); ``A`` (channels, channels, k, k) and ``B`` (channels, C_in, k, k) are stride-1 "same"
convolutions with the layer's padding (:class:`contraction.Conv2d`), ``b`` one bias per channel.
The equilibrium is averaged into ``pool × pool`` blocks and read out by ``C x_pooled + c``, or
through one hidden ReLU layer, ``C relu(D x_pooled + d) + c``.
Well-posedness, step sizes and the Lipschitz bound come from the kernel exactly
(``contraction.mu_inf(Conv2d(A, …))``), as for a dense layer from its matrix.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import contraction
from contraction import Conv2d

from solvers import solve
from solvers.engine import blas_threads, correlate, correlate_grad

from ._network import ForwardPass, ImplicitNetwork, check_count

__all__ = ["ConvImplicitNetwork"]


class ConvImplicitNetwork(ImplicitNetwork):
    """Implicit network with one convolutional implicit layer.

    Parameters
    ----------
    in_shape : (C_in, H, W)
        Input images, given to every method flattened row-major as (batch, C_in·H·W).
    channels : int
        Channels of the hidden state (its size is ``channels·(H/stride)·(W/stride)``).
    kernel_size : int
        Odd ``k`` of the implicit layer's convolution ``A`` (and of ``B`` unless
        ``input_kernel`` is given); the state's images are at least ``k × k``.
    n_out : int
    pool : int
        Average pool of ``pool × pool`` blocks before the readout; divides the state's images.
    padding : {"circular", "zeros"}
    stride : int
        Stride of the input convolution ``B`` (1 by default; 2 downsamples 28×28 inputs to a
        14×14 state, four times cheaper to iterate); divides ``H`` and ``W``.
    input_kernel : int, optional
        Odd size of the input convolution ``B`` (default ``kernel_size``), for example 5 at
        stride 2 beside a 3 × 3 ``A``: ``B`` runs once per forward pass, not once per iteration,
        so a wider one costs little; ``H, W ≥`` it.
    readout_hidden : int
        0 (default): the linear readout ``Y = C pool(x) + c``. ``h > 0``: a hidden ReLU layer
        of ``h`` units, ``Y = C relu(D pool(x) + d) + c`` (``D`` (h, features), ``d`` (h,),
        ``C`` (n_out, h)); interval bounds pass through it exactly as through any ReLU layer,
        and the Lipschitz bound gains the factor ``‖D‖∞``.
    activation, seed, dtype, solver
        As for :class:`ImplicitNetwork` (``dtype`` float32 by default).

    Notes
    -----
    Forward: ``W = B ⋆ U + b``, ``X = solve(Conv2d(A), W)``, ``Y = pool(X) Cᵀ + c``. Backward:
    ``G = pool*(dY C)`` (each pooled gradient spread over its block, divided by ``pool²``),
    ``λ = G + (λ ⊙ σ'(Z)) A`` (the adjoint solve on the same operator), ``V = λ ⊙ σ'(Z)``;
    ``∂L/∂A[c, c', di, dj] = Σ V[c, i, j] x[c', i + di − p, j + dj − p]`` (summed over the batch and
    the pixels, with the layer's padding), ``∂L/∂B`` likewise with ``u``, ``∂L/∂b[c] = Σ V[c]``.
    With a hidden readout layer, ``P = D pool(x) + d``, ``Y = C relu(P) + c``, and
    ``G = pool*(((dY C) ⊙ [P > 0]) D)``.
    """

    FUSABLE = True
    DENSE = False

    def __init__(self, in_shape, channels, kernel_size, n_out, pool, padding="circular", activation="relu", seed=0,
                 dtype=np.float32, solver=None, stride=1, input_kernel=None, readout_hidden=0):
        try:
            C_in, H, W = (check_count(v, name) for name, v in zip(("C_in", "H", "W"), in_shape))
            assert len(in_shape) == 3
        except (TypeError, AssertionError, ValueError):
            raise ValueError(f"in_shape must be three positive integers (C_in, H, W), got {in_shape!r}") from None
        channels = check_count(channels, "channels")
        k = check_count(kernel_size, "kernel_size")
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {k}")
        kb = k if input_kernel is None else check_count(input_kernel, "input_kernel")
        if kb % 2 == 0:
            raise ValueError(f"input_kernel must be odd, got {kb}")
        stride = check_count(stride, "stride")
        hidden = check_count(readout_hidden, "readout_hidden", 0)
        if H % stride or W % stride:
            raise ValueError(f"stride must divide the image size {H}x{W}, got {stride}")
        Hs, Ws = H // stride, W // stride
        pool = check_count(pool, "pool")
        if Hs % pool or Ws % pool:
            raise ValueError(f"pool must divide the state's image size {Hs}x{Ws}, got {pool}")
        if padding not in contraction.PADDINGS:
            raise ValueError(f"padding must be one of {contraction.PADDINGS}, got {padding!r}")
        features = channels * (Hs // pool) * (Ws // pool)
        super().__init__(C_in * H * W, channels, n_out, activation=activation, seed=seed, dtype=dtype, solver=solver)
        self.in_shape, self.channels, self.kernel_size, self.pool, self.padding = (C_in, H, W), channels, k, pool, padding
        self.stride, self.state_shape, self.input_kernel, self.readout_hidden = stride, (Hs, Ws), kb, hidden
        Conv2d(np.zeros((1, 1, k, k)), (Hs, Ws), padding)  # refuses images smaller than the kernels
        if kb > min(H, W):
            raise ValueError(f"input_kernel {kb} is larger than the {H}x{W} input images")
        rng = np.random.default_rng(self.seed)
        f = self.dtype
        self.A = (0.1 * rng.standard_normal((channels, channels, k, k)) / np.sqrt(channels * k * k)).astype(f)
        self.B = (rng.standard_normal((channels, C_in, kb, kb)) / np.sqrt(C_in * kb * kb)).astype(f)
        self.b = np.zeros(channels, f)
        if hidden:
            # Small weights (the variance of a uniform ±1/√fan_in, torch.nn.Linear's): interval
            # bounds grow with ‖C‖‖D‖, and He's larger D and C trained worse in a short check
            # of interval training (2 epochs on 1,000 images: validation 0.19 against 0.48).
            self.D = (rng.standard_normal((hidden, features)) / np.sqrt(3.0 * features)).astype(f)
            self.d = np.zeros(hidden, f)
            self.PARAMS = ("A", "B", "b", "D", "d", "C", "c")
        fan_in = 3 * hidden if hidden else features
        self.C = (rng.standard_normal((self.n_out, hidden or features)) / np.sqrt(fan_in)).astype(f)
        self.c = np.zeros(self.n_out, f)

    # -- shapes and operators -------------------------------------------------------------
    @property
    def n_in(self) -> int:
        C_in, H, W = self.in_shape
        return C_in * H * W

    @property
    def n_hidden(self) -> int:
        return self.channels * self._pixels()

    @property
    def n_out(self) -> int:
        return self.C.shape[0]

    def architecture(self) -> dict:
        return {"kind": "conv", "in_shape": list(self.in_shape), "channels": self.channels,
                "kernel_size": self.kernel_size, "n_out": self.n_out, "pool": self.pool, "padding": self.padding,
                "stride": self.stride, "input_kernel": self.input_kernel, "readout_hidden": self.readout_hidden}

    def step_blas_threads(self):
        """One BLAS thread around a training step's gradients: its solves are the engine's own
        convolutions on its thread blocks, and the readout's products between them, at a
        training batch, gain less from a second BLAS thread than that thread's idle spinning
        costs those blocks. (Evaluation and certificates, on batches ten times larger, keep the
        fully connected rule: there the products gain more.)"""
        return blas_threads(1)

    def state_operator(self) -> Conv2d:
        """``A`` as the :class:`contraction.Conv2d` it defines on the hidden state."""
        return Conv2d(self.A, self.state_shape, self.padding)

    def input_operator(self) -> Conv2d:
        """``B`` as a :class:`contraction.Conv2d` from the input channels to the hidden ones."""
        return Conv2d(self.B, self.in_shape[1:], self.padding, self.stride)

    def _correlate(self, K, X, channels_out: int, dtype, shape=None) -> np.ndarray:
        """``K ⋆ x`` (stride 1) for every row of ``X`` with the layer's padding (compiled), in
        ``dtype``, on images of ``shape`` (default the state's)."""
        H, W = self.state_shape if shape is None else shape
        X = np.ascontiguousarray(X, dtype=dtype)
        out = np.empty((X.shape[0], channels_out * H * W), dtype)
        correlate(np.ascontiguousarray(K, dtype=dtype), H, W, self.padding == "circular", X, out)
        return out

    def _input_conv(self, K, U, dtype) -> np.ndarray:
        """``K ⋆ u`` at the layer's stride for every input row: onto the state's grid."""
        out = self._correlate(K, U, self.channels, dtype, self.in_shape[1:])
        s = self.stride
        if s == 1:
            return out
        _, H, W = self.in_shape
        return np.ascontiguousarray(out.reshape(len(U), self.channels, H, W)[:, :, ::s, ::s]).reshape(len(U), -1)

    def _upsample(self, V) -> np.ndarray:
        """State-grid gradients spread onto the input grid (zeros between strided pixels): the
        adjoint of the stride."""
        s = self.stride
        if s == 1:
            return V
        _, H, W = self.in_shape
        up = np.zeros((len(V), self.channels, H, W), V.dtype)
        up[:, :, ::s, ::s] = V.reshape(len(V), self.channels, *self.state_shape)
        return up.reshape(len(V), -1)

    def _pixels(self) -> int:
        return self.state_shape[0] * self.state_shape[1]

    def _pool(self, X, dtype=None) -> np.ndarray:
        """The ``pool × pool`` block means of each channel, flattened (batch, features), summed
        and returned in ``dtype`` (default ``X``'s)."""
        H, W = self.state_shape
        p = self.pool
        blocks = X.reshape(X.shape[0], self.channels, H // p, p, W // p, p)
        return blocks.mean(axis=(3, 5), dtype=dtype).reshape(X.shape[0], -1)

    def _unpool(self, G) -> np.ndarray:
        """The adjoint of :meth:`_pool`: each feature's value over its block, divided by ``pool²``."""
        H, W = self.state_shape
        p = self.pool
        g = G.reshape(G.shape[0], self.channels, H // p, 1, W // p, 1) / (p * p)
        return np.broadcast_to(g, (G.shape[0], self.channels, H // p, p, W // p, p)).reshape(G.shape[0], -1)

    # -- forward ------------------------------------------------------------------------------
    def injected(self, U) -> np.ndarray:
        """``W = B ⋆ u + b`` for every row of ``U``, in the network's dtype."""
        W = self._input_conv(self.B, U, self.dtype)
        W.reshape(len(W), self.channels, -1)[...] += self.b[:, None]
        return W

    def _equilibrium(self, U, solver):
        """``(U, W, solve result)`` of inputs ``U`` (checked here)."""
        U = self.as_inputs(U)
        Wb = self.injected(U)
        s = self.solver if solver is None else solver
        res = solve(self.state_operator(), Wb, method=s.method, alpha=s.step(s.method), atol=s.atol,
                    max_iter=s.max_iter, activation=self.activation, engine=s.engine, check=False)
        return U, Wb, res

    def _hidden(self, F):
        """The readout's hidden pre-activations ``D F + d`` of float64 features (float64)."""
        return F @ self.D.T.astype(np.float64) + self.d

    def _head(self, X) -> tuple:
        """``(Y, F, P)``: outputs, pooled features and hidden pre-activations (``None``
        without a hidden layer) of states ``X``; products in float64, ``Y`` in the network's dtype."""
        F = self._pool(X, np.float64)
        P = None
        h = F
        if self.readout_hidden:
            P = self._hidden(F)
            h = np.maximum(P, 0.0)
        return (h @ self.C.T.astype(np.float64) + self.c).astype(self.dtype), F, P

    def _readout(self, X) -> np.ndarray:
        """``Y = C pool(x) + c``, or ``C relu(D pool(x) + d) + c`` (in float64, returned in the
        network's dtype)."""
        return self._head(X)[0]

    def forward_pass(self, U, solver=None) -> ForwardPass:
        U, Wb, res = self._equilibrium(U, solver)
        X = res.x
        Z = self._correlate(self.A, X, self.channels, self.dtype) + Wb
        Y, F, P = self._head(X)
        return ForwardPass(U, X, Z, Y, res.iterations, res.converged, F if self.readout_hidden else None, P)

    def forward(self, U, solver=None) -> np.ndarray:
        """The outputs (as :meth:`ImplicitNetwork.forward`), without the pre-activations that
        only a backward pass needs."""
        return self._readout(self._equilibrium(U, solver)[2].x)

    # -- backward -------------------------------------------------------------------------------
    def _state_gradient(self, dY, fp: ForwardPass) -> np.ndarray:
        dF = dY @ self.C.astype(np.float64)
        if self.readout_hidden:  # through the ReLU layer, in the network's dtype
            dF = ((fp.hidden > 0) * dF).astype(self.dtype) @ self.D
        return self._unpool(dF).astype(self.dtype)

    def _kernel_gradient(self, V, X, channels_in: int, channels_out: int | None = None, shape=None,
                         k: int | None = None) -> np.ndarray:
        """``Σ_{batch, i, j} V[c, i, j] · x[c', i + di − p, j + dj − p]`` (the layer's padding),
        compiled (:func:`solvers.engine.correlate_grad`), in float64; ``channels_out`` those of
        ``V`` (default: the layer's), images of ``shape`` (default: the state's), kernel size
        ``k`` (default: ``A``'s)."""
        H, W = self.state_shape if shape is None else shape
        c_out = self.channels if channels_out is None else channels_out
        k = self.kernel_size if k is None else k
        g = np.empty((c_out, channels_in, k, k))
        correlate_grad(np.ascontiguousarray(V, dtype=np.float64), np.ascontiguousarray(X, dtype=np.float64),
                       k, H, W, self.padding == "circular", g)
        return g

    def _parameter_gradients(self, fp: ForwardPass, V, dYt) -> dict:
        f = self.dtype
        dY = dYt.astype(np.float64)
        head = {}
        if self.readout_hidden:
            P = fp.hidden
            dP = ((P > 0) * (dY @ self.C.astype(np.float64))).astype(f)
            head = {"D": dP.T @ fp.features.astype(f), "d": dP.sum(axis=0, dtype=np.float64).astype(f)}
            h = np.maximum(P, 0.0)
        else:
            h = self._pool(fp.X, np.float64)
        return {
            "A": self._kernel_gradient(V, fp.X, self.channels).astype(f),
            "B": self._input_kernel_gradient(V, fp.U).astype(f),
            "b": V.astype(np.float64).reshape(V.shape[0], self.channels, -1).sum(axis=(0, 2)).astype(f),
            **head,
            "C": (dY.T @ h).astype(f),
            "c": dY.sum(axis=0).astype(f),
        }

    def _input_kernel_gradient(self, V, U) -> np.ndarray:
        """``∂/∂B`` of ``Σ ⟨V, B ⋆ u⟩`` (the stride's adjoint spreads ``V`` onto the input grid)."""
        return self._kernel_gradient(self._upsample(V), U, self.in_shape[0], shape=self.in_shape[1:],
                                     k=self.input_kernel)

    def _input_product_T(self, V) -> np.ndarray:
        flipped = self.B.astype(np.float64)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # the transpose's kernel
        return self._correlate(flipped, self._upsample(np.asarray(V, dtype=np.float64)), self.in_shape[0], np.float64,
                               self.in_shape[1:])

    # -- certificates -----------------------------------------------------------------------------
    def features(self, X) -> np.ndarray:
        """The pooled features (:meth:`_pool`), the readout's input."""
        return self._pool(X)

    def features_T(self, G) -> np.ndarray:
        return self._unpool(G)

    def hidden_bounds(self, F_lo, F_hi, dtype=np.float64, Z=None) -> tuple:
        """Through the hidden ReLU layer when there is one: ``D f + d`` over the box is
        ``D f_c + d ± |D| f_r`` (centre and radius of the feature box), then the ReLU; rows
        with an unbounded feature (no certificate) get ``[0, inf)``. Products in ``dtype``
        (training passes the network's; certificates keep float64), bounds in float64. ``Z``:
        the pre-activation bounds if already computed (:meth:`preactivation_bounds`)."""
        if not self.readout_hidden:
            return F_lo, F_hi
        F_lo, F_hi = np.asarray(F_lo, dtype), np.asarray(F_hi, dtype)
        bad = ~(np.isfinite(F_lo).all(axis=1) & np.isfinite(F_hi).all(axis=1))
        if bad.any():
            F_lo, F_hi = np.where(bad[:, None], 0, F_lo), np.where(bad[:, None], 0, F_hi)
            Z = None
        Z_lo, Z_hi = self.preactivation_bounds(F_lo, F_hi, dtype) if Z is None else Z
        H_lo = np.maximum(Z_lo, 0).astype(np.float64)
        H_hi = np.maximum(Z_hi, 0).astype(np.float64)
        H_lo[bad], H_hi[bad] = 0.0, np.inf
        return H_lo, H_hi

    def preactivation_bounds(self, F_lo, F_hi, dtype=np.float64):
        """Exact bounds of the hidden layer's ``D f + d`` over a finite feature box: ``D f_c + d
        ± |D| f_r`` (centre and radius), products in ``dtype``; ``None`` without a hidden layer."""
        if not self.readout_hidden:
            return None
        F_lo, F_hi = np.asarray(F_lo, dtype), np.asarray(F_hi, dtype)
        D = self.D.astype(dtype, copy=False)
        mid = ((F_hi + F_lo) * 0.5) @ D.T + self.d.astype(dtype, copy=False)
        rad = ((F_hi - F_lo) * 0.5) @ np.abs(D).T
        return mid - rad, mid + rad

    def hidden_bounds_T(self, F_lo, F_hi, H_lo, H_hi, gH_lo, gH_hi, dtype=np.float64, gZ=None) -> tuple:
        if not self.readout_hidden:
            return gH_lo, gH_hi, {}
        D = self.D.astype(dtype, copy=False)
        # The ReLU's derivative from the bounds themselves: a bound is active where it is > 0.
        g_hi, g_lo = (gH_hi * (H_hi > 0)).astype(dtype), (gH_lo * (H_lo > 0)).astype(dtype)
        if gZ is not None:  # the pre-activation bounds' own gradients (the relaxation's)
            g_lo, g_hi = g_lo + gZ[0].astype(dtype), g_hi + gZ[1].astype(dtype)
        g_mid, g_rad = g_hi + g_lo, g_hi - g_lo
        F_lo, F_hi = np.asarray(F_lo, dtype), np.asarray(F_hi, dtype)
        F_c, F_r = (F_hi + F_lo) * 0.5, (F_hi - F_lo) * 0.5
        g_c, g_r = g_mid @ D, g_rad @ np.abs(D)
        grads = {"D": g_mid.T @ F_c + np.sign(D) * (g_rad.T @ F_r), "d": g_mid.sum(axis=0, dtype=np.float64)}
        return (0.5 * (g_c - g_r)).astype(np.float64), (0.5 * (g_c + g_r)).astype(np.float64), grads

    def relaxed_margins(self, F_lo, F_hi, labels, chunk: int = 64):
        """:meth:`ImplicitNetwork.relaxed_margins` through the hidden ReLU layer: the largest
        minimum over the feature box (``g f_c − |g| f_r + e``) of the lines of
        :meth:`margin_lines`, exact in the dependence the interval bound drops (every unit
        reads the same features). Rows with an unbounded feature get ``−inf``."""
        if not self.readout_hidden:
            return None
        labels = np.asarray(labels)
        q = self.n_out
        out = np.full((len(labels), q), -np.inf)
        for s in range(0, len(labels), chunk):
            f_lo, f_hi = np.asarray(F_lo[s : s + chunk], np.float64), np.asarray(F_hi[s : s + chunk], np.float64)
            ok = np.flatnonzero(np.isfinite(f_lo).all(axis=1) & np.isfinite(f_hi).all(axis=1))
            f_lo, f_hi = f_lo[ok], f_hi[ok]
            F_c, F_r = (f_hi + f_lo) * 0.5, (f_hi - f_lo) * 0.5
            # Every (sample, class) pair of the finite rows; the boxes stay one per sample.
            sample = np.repeat(np.arange(len(ok)), q)
            low = np.full((len(ok), q), -np.inf)
            for g, e in self.margin_lines(f_lo, f_hi, labels[s + ok][sample], np.tile(np.arange(q), len(ok)), sample):
                g = g.reshape(len(ok), q, -1)
                bound = np.einsum("bqf,bf->bq", g, F_c) - np.einsum("bqf,bf->bq", np.abs(g), F_r)
                low = np.maximum(low, bound + e.reshape(len(ok), q))
            out[s + ok] = low
        return out

    def relaxed_margin_bounds(self, F_lo, F_hi, y, cls, dtype=np.float64, Z=None):
        """:meth:`ImplicitNetwork.relaxed_margin_bounds`: the line of :meth:`margin_lines`
        whose crossing units lie below on ``z`` where ``u ≥ −l`` and on 0 otherwise, minimised
        over the feature box, products in ``dtype``."""
        if not self.readout_hidden:
            return None
        batch, K = cls.shape
        rows = np.repeat(np.arange(batch), K)
        k, j = np.asarray(y)[rows], cls.reshape(-1)
        D, d = self.D.astype(dtype, copy=False), self.d.astype(dtype, copy=False)
        C, c = self.C.astype(dtype, copy=False), self.c.astype(dtype, copy=False)
        F_lo, F_hi = np.asarray(F_lo, dtype), np.asarray(F_hi, dtype)
        lo, hi = self.preactivation_bounds(F_lo, F_hi, dtype) if Z is None else Z
        l, u = lo[rows], hi[rows]
        M = C[k] - C[j]
        r = _Relaxation(l, u, M)
        slope = r.slopes(u >= -l).astype(dtype)
        a = M * slope
        g = a @ D
        F_c, F_r = ((F_hi + F_lo) * 0.5)[rows], ((F_hi - F_lo) * 0.5)[rows]
        bound = (g * F_c).sum(axis=1) - (np.abs(g) * F_r).sum(axis=1) + a @ d + r.shift + c[k] - c[j]
        context = SimpleNamespace(shape=(batch, K), k=k, j=j, l=l, u=u, M=M, s=r.chord, gap=r.gap, above=r.above,
                                  slope=slope, a=a, g=g, F_c=F_c, F_r=F_r, dtype=dtype)
        return bound.astype(np.float64).reshape(batch, K), context

    def relaxed_margin_bounds_T(self, context, w) -> tuple:
        ctx = context
        batch, K = ctx.shape
        D, d = self.D.astype(ctx.dtype, copy=False), self.d.astype(ctx.dtype, copy=False)
        w = np.asarray(w, ctx.dtype).reshape(-1, 1)
        g, a, above, M, s, l, u, gap = ctx.g, ctx.a, ctx.above, ctx.M, ctx.s, ctx.l, ctx.u, ctx.gap
        phi = ctx.F_c - np.sign(g) * ctx.F_r  # the bound's derivative in g (a.e.)
        wa = w * a
        grads = {"D": wa.T @ phi, "d": wa.sum(axis=0, dtype=np.float64)}
        gF_c = (w * g).reshape(batch, K, -1).sum(axis=1)
        gF_r = -(w * np.abs(g)).reshape(batch, K, -1).sum(axis=1)
        psi = phi @ D.T + d  # the bound's derivative in a
        gM = w * (ctx.slope * psi - np.where(above, s * l, 0))
        classes = np.arange(self.C.shape[0])
        sides = (classes == ctx.k[:, None]).astype(ctx.dtype) - (classes == ctx.j[:, None])  # +1 at k, −1 at j
        grads["C"], grads["c"] = sides.T @ gM, sides.T @ w[:, 0]
        # The chord's slope s = u / (u − l) and its shift −M s l, on the units above.
        gs = np.where(above, w * M * (psi - l), 0)
        gl = gs * u / gap**2 - np.where(above, w * M * s, 0)
        gu = -gs * l / gap**2
        gZ_lo, gZ_hi = gl.reshape(batch, K, -1).sum(axis=1), gu.reshape(batch, K, -1).sum(axis=1)
        return (0.5 * (gF_c - gF_r)).astype(np.float64), (0.5 * (gF_c + gF_r)).astype(np.float64), gZ_lo, gZ_hi, grads

    def margin_lines(self, F_lo, F_hi, k, j, sample=None) -> list:
        """:meth:`ImplicitNetwork.margin_lines` through the hidden ReLU layer. Its
        pre-activations ``z = D f + d`` have exact bounds ``[l, u]`` over the (finite) feature
        box. For the margin ``m relu(z) + c_k − c_j``, ``m = C_k − C_j``, each unit's ReLU is
        replaced by a line below it (where ``m_i ≥ 0``) or above it (``m_i < 0``) on
        ``[l_i, u_i]``: ``z`` where ``l ≥ 0``, ``0`` where ``u ≤ 0``, and on the units that
        change sign the chord ``s (z − l)``, ``s = u / (u − l)``, above and ``λ z`` below,
        ``0 ≤ λ ≤ 1``: one candidate for each of ``λ = 0``, ``λ = s`` and ``λ = [u ≥ −l]``."""
        if not self.readout_hidden:
            return super().margin_lines(F_lo, F_hi, k, j, sample)
        D, d = self.D.astype(np.float64), self.d.astype(np.float64)
        C, c = self.C.astype(np.float64), self.c.astype(np.float64)
        lo, hi = self.preactivation_bounds(np.asarray(F_lo, np.float64), np.asarray(F_hi, np.float64), np.float64)
        if sample is not None:  # once per box, then one row per margin
            lo, hi = lo[sample], hi[sample]
        M = C[k] - C[j]  # (rows, h)
        r = _Relaxation(lo, hi, M)
        shift = r.shift + c[k] - c[j]
        lines = []
        for lower in (0.0, r.chord, hi >= -lo):
            a = M * r.slopes(lower)
            lines.append((a @ D, a @ d + shift))
        return lines

    def state_product_T(self, V) -> np.ndarray:
        """``Aᵀ v``: the correlation with the transposed, flipped kernel (the layer's padding)."""
        flipped = self.A.astype(np.float64)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        return self._correlate(flipped, np.asarray(V, dtype=np.float64), self.channels, np.float64)

    def bias_vector(self) -> np.ndarray:
        return np.repeat(self.b.astype(np.float64), self._pixels())

    def state_diagonal(self) -> np.ndarray:
        """Each channel's centre tap on its own channel, per pixel."""
        p, C = self.kernel_size // 2, self.channels
        return np.repeat(self.A[np.arange(C), np.arange(C), p, p].astype(np.float64), self._pixels())

    def margin_readout(self, eta=None) -> tuple:
        """:meth:`ImplicitNetwork.margin_readout`; with a hidden layer ``M = C`` and
        ``κ = ‖D diag(η_f)‖∞`` (ReLU is 1-Lipschitz; a pooled feature of channel ``c`` moves
        at most as far as that channel's states, in units of ``η_c``)."""
        if not self.readout_hidden:
            return super().margin_readout(eta)
        w = 1.0 if eta is None else np.repeat(np.asarray(eta, dtype=np.float64), self.D.shape[1] // self.channels)
        return self.C.astype(np.float64), float((np.abs(self.D.astype(np.float64)) * w).sum(axis=1).max())

    def state_weights(self, eta) -> np.ndarray:
        return np.repeat(np.asarray(eta, dtype=np.float64), self._pixels())

    def state_product(self, op, X) -> np.ndarray:
        """``op ⋆ x`` for every row of ``X`` (``op`` a :class:`contraction.Conv2d` on this
        layer's images), in ``X``'s dtype."""
        return self._correlate(op.kernel, X, op.kernel.shape[0], X.dtype)

    def embedded_product(self, op, X2) -> np.ndarray:
        """``op ⋆ [x_hi, x_lo]`` for the embedded operator of :meth:`embedded_system` (kernel
        ``[[M, N], [N, M]]``), in ``X2``'s dtype, as two ``channels``-channel correlations:
        ``(M + N) ⋆ x_c ± (M − N) ⋆ x_r`` with ``x_c, x_r`` the centre and radius of the pair, half
        the multiply-adds of one ``2·channels`` pass (as the solver's split product)."""
        C, n = self.channels, self.n_hidden
        K = op.kernel
        X2 = np.asarray(X2)
        hi, lo = X2[:, :n], X2[:, n:]
        S = self._correlate(K[:C, :C] + K[:C, C:], (hi + lo) * 0.5, C, X2.dtype)
        D = self._correlate(K[:C, :C] - K[:C, C:], (hi - lo) * 0.5, C, X2.dtype)
        return np.hstack([S + D, S - D])

    def _negative_taps(self) -> np.ndarray:
        """Where ``A`` has a negative tap other than a channel's own centre tap (``K_N``)."""
        C, p = self.channels, self.kernel_size // 2
        centre = np.zeros(self.A.shape, dtype=bool)
        centre[np.arange(C), np.arange(C), p, p] = True
        return ~centre & (self.A < 0)

    def _embedded_kernel_gradient(self, V, X2) -> tuple:
        """``(∂K_M, ∂K_N)`` of ``Σ ⟨V, 𝒜 ⋆ X2⟩`` (the embedded kernel ``[[K_M, K_N], [K_N, K_M]]``),
        float64, as two ``channels``-channel gradients on sums and differences rather than one
        of ``2·channels``: the gradient ``g(V, X)`` is bilinear, so ``g(V_hi + V_lo, x_hi + x_lo)
        = ∂K_M + ∂K_N`` and ``g(V_hi − V_lo, x_hi − x_lo) = ∂K_M − ∂K_N``."""
        n, C = self.n_hidden, self.channels
        V64, X64 = np.asarray(V, np.float64), np.asarray(X2, np.float64)
        g_sum = self._kernel_gradient(V64[:, :n] + V64[:, n:], X64[:, :n] + X64[:, n:], C)
        g_diff = self._kernel_gradient(V64[:, :n] - V64[:, n:], X64[:, :n] - X64[:, n:], C)
        return 0.5 * (g_sum + g_diff), 0.5 * (g_sum - g_diff)

    def embedded_gradients(self, V, X2, U_c, U_r) -> dict:
        """:meth:`ImplicitNetwork.embedded_gradients` per tap: the embedded kernel's gradient
        as ``K_M``'s and ``K_N``'s (:meth:`_embedded_kernel_gradient`), and the input kernel's
        through ``B ⋆ u_c + |B| ⋆ u_r``."""
        C = self.channels
        gM, gN = self._embedded_kernel_gradient(V, X2)
        n = self.n_hidden
        gW_hi, gW_lo = V[:, :n], V[:, n:]
        gB = (self._input_kernel_gradient(gW_hi + gW_lo, U_c)
              + np.sign(self.B) * self._input_kernel_gradient(gW_hi - gW_lo, U_r))
        gb = (gW_hi.astype(np.float64) + gW_lo).reshape(V.shape[0], C, -1).sum(axis=(0, 2))
        return {"A": np.where(self._negative_taps(), gN, gM), "B": gB, "b": gb}

    def embedded_system(self, U_lo, U_hi):
        """:meth:`ImplicitNetwork.embedded_system` of the convolution, split per tap: the
        embedded state is ``2·channels`` images ``[x_hi, x_lo]``, and ``𝒜`` the convolution of
        the kernel ``[[K_M, K_N], [K_N, K_M]]`` (``K_N`` the negative taps other than each
        channel's own centre tap), which has the same μ∞ as ``A``."""
        K = self.A
        k, C = self.kernel_size, self.channels
        K_N = np.where(self._negative_taps(), K, 0)
        K_M = K - K_N
        KK = np.zeros((2 * C, 2 * C, k, k))
        KK[:C, :C] = KK[C:, C:] = K_M
        KK[:C, C:] = KK[C:, :C] = K_N
        U_c = ((U_hi + U_lo) * 0.5).astype(self.dtype)
        U_r = ((U_hi - U_lo) * 0.5).astype(self.dtype)
        bias = np.repeat(self.b, self._pixels())
        center = self._input_conv(self.B, U_c, self.dtype) + bias
        spread = self._input_conv(np.abs(self.B), U_r, self.dtype)
        op = Conv2d(KK, self.state_shape, self.padding)
        return op, np.hstack([center + spread, center - spread]), U_c, U_r

    def readout_matrix(self) -> np.ndarray:
        """``C`` composed with the average pool, (n_out, n_hidden) in float64: the readout as a
        matrix on the hidden state (its ℓ∞ norm is ``C``'s: every feature is spread over its
        block with weight ``1/pool²``). A readout with a hidden layer is not a matrix: a
        ``ValueError``; see :meth:`margin_readout`."""
        if self.readout_hidden:
            raise ValueError(f"the readout has a hidden layer of {self.readout_hidden} units, not one matrix; "
                             "margin_readout() gives its Lipschitz margins")
        return self._unpool(self.C.astype(np.float64))

    def lipschitz(self, form: str = "tight", eta=None) -> float:
        """ℓ∞ input-to-output Lipschitz bound from the kernels (``inf`` without a μ∞ certificate);
        ``eta`` one weight per channel. With a hidden readout layer: ``L_x ‖C‖∞ ‖D diag(η_f)‖∞``."""
        if not self.readout_hidden:
            return contraction.lipschitz_bound(self.state_operator(), self.input_operator(), self.readout_matrix(),
                                               eta=eta, form=form)
        L_x = contraction.lipschitz_bound(self.state_operator(), self.input_operator(), eta=eta, form=form)
        if not np.isfinite(L_x):
            return L_x
        M, kappa = self.margin_readout(eta)
        return float(L_x * kappa * np.abs(M).sum(axis=1).max())

    def __repr__(self) -> str:
        C_in, H, W = self.in_shape
        return (f"ConvImplicitNetwork(in_shape=({C_in}, {H}, {W}), channels={self.channels}, "
                f"kernel_size={self.kernel_size}, n_out={self.n_out}, pool={self.pool}, padding={self.padding!r}, "
                + (f"stride={self.stride}, " if self.stride > 1 else "")
                + (f"input_kernel={self.input_kernel}, " if self.input_kernel != self.kernel_size else "")
                + (f"readout_hidden={self.readout_hidden}, " if self.readout_hidden else "")
                + f"activation={self.activation.name!r}, dtype={self.dtype.name})")


class _Relaxation:
    """The lines that replace ``M_i relu(z_i)`` on ``[l_i, u_i]`` below it (:meth:`margin_lines`):
    ``z`` where ``l ≥ 0``, 0 where ``u ≤ 0``; where the sign changes (``crossing``), the chord
    ``s (z − l)``, ``s = u / (u − l)`` (``chord``; ``gap = u − l``, 1 elsewhere), which lies
    above the ReLU, for a negative ``M_i`` (``above``), and a line ``λ z`` below it otherwise;
    ``shift = −Σ_above M s l``, the chords' constant."""

    def __init__(self, lo, hi, M):
        self.lo = lo
        self.crossing = (lo < 0) & (hi > 0)
        self.gap = np.where(self.crossing, hi - lo, 1)
        self.chord = np.where(self.crossing, hi / self.gap, 0)
        self.above = self.crossing & (M < 0)
        self.shift = -np.where(self.above, M * self.chord * lo, 0).sum(axis=1)

    def slopes(self, lower):
        """Each unit's slope ``a_i / M_i`` with the lower line ``λ = lower`` (a number or one per unit)."""
        return np.where(self.above, self.chord, np.where(self.crossing, lower, self.lo >= 0))
