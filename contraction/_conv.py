"""2-D convolutions as linear operators, with exact ℓ∞ quantities from the kernel alone.

A :class:`Conv2d` of kernel ``K`` (``C_out × C_in × k × k``, ``k`` odd) maps images
``x`` (``C_in × H × W``, flattened row-major: channel, row, column) to

    y[c, i, j] = Σ_{c', di, dj} K[c, c', di, dj] · x[c', i + di − p, j + dj − p],   p = k // 2,

a cross-correlation with stride 1 and "same" output, as ``torch.nn.functional.conv2d``; pixels
outside the image wrap around (``padding="circular"``) or are zero (``padding="zeros"``). With
``stride=s`` (an input convolution that downsamples) the output keeps every ``s``-th row and
column of that, ``(H/s) × (W/s)`` images: ``y[c, i, j]`` at ``(s i, s j)``, as torch's
``conv2d(..., stride=s, padding=p)`` for zero padding.

Row ``(c, i, j)`` of the matrix holds the taps of ``K[c]`` placed around pixel ``(i, j)``; the
diagonal entry is the centre tap of the same channel, ``K[c, c, p, p]``. With circular padding
every row of channel ``c`` holds all ``C_in k²`` taps at distinct columns (distinct as long as
``H, W ≥ k``); with zero padding the rows of interior pixels do, and border rows hold a subset.
So for both paddings

    μ∞(A) = max_c ( K[c, c, p, p] + Σ_{(c', di, dj) ≠ (c, p, p)} |K[c, c', di, dj]| ),
    ‖A‖∞  = max_c Σ |K[c, …]|,

and every row quantity of the dense theory (the contraction factors, α*, the projection onto
``{μ∞ ≤ γ}``) is a per-output-channel quantity of the kernel. Images smaller than the kernel
would alias taps onto one column; they are refused. A strided convolution keeps a subset of
the rows: it is not square (no μ∞), and its ``‖·‖∞`` is at most the formula above (equal for
circular padding).
"""

from __future__ import annotations

import numpy as np

__all__ = ["Conv2d", "PADDINGS"]

PADDINGS = ("circular", "zeros")


def _image_shape(image_shape, k: int) -> tuple:
    try:
        H, W = (int(v) for v in image_shape)
        ok = all(float(v) == int(v) for v in image_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"image_shape must be two integers (H, W), got {image_shape!r}")
    if H < k or W < k:
        raise ValueError(f"image_shape {H}x{W} is smaller than the {k}x{k} kernel: its taps would wrap onto "
                         f"the same pixels (alias); images must be at least {k}x{k}")
    return H, W


class Conv2d:
    """A "same" 2-D convolution (stride 1, or ``stride`` for an input convolution that downsamples) (cross-correlation, as ``torch.nn.functional.conv2d``)
    as a linear operator on flattened images.

    Parameters
    ----------
    kernel : array_like, shape (C_out, C_in, k, k)
        Real and finite; ``k`` odd.
    image_shape : (H, W)
        Image size, at least ``k × k``.
    padding : {"circular", "zeros"}
    stride : int
        Keep every ``stride``-th output row and column (it must divide ``H`` and ``W``); 1 by
        default. Only stride-1 convolutions with ``C_out = C_in`` are square.

    Attributes
    ----------
    kernel : ndarray (float64, read-only)
    image_shape : (H, W)
        The input images.
    out_shape : (H/stride, W/stride)
    padding : str
    stride : int
    n_in, n_out : int
        ``C_in·H·W`` and ``C_out·(H/stride)·(W/stride)``; ``n`` (square operators only) is their
        common value.
    """

    def __init__(self, kernel, image_shape, padding: str = "circular", stride: int = 1):
        try:
            K = np.array(kernel, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"kernel must be a real numeric array, got {type(kernel).__name__}") from None
        if K.ndim != 4 or K.shape[2] != K.shape[3] or K.shape[2] % 2 == 0 or 0 in K.shape:
            raise ValueError(f"kernel must have shape (C_out, C_in, k, k) with k odd, got {K.shape}")
        if not np.all(np.isfinite(K)):
            raise ValueError("kernel must be finite")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        K.setflags(write=False)
        self.kernel = K
        self.padding = padding
        self.image_shape = _image_shape(image_shape, K.shape[2])
        H, W = self.image_shape
        if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1 or H % stride \
                or W % stride:
            raise ValueError(f"stride must be a positive integer dividing the image size {H}x{W}, got {stride!r}")
        self.stride = int(stride)
        self.out_shape = (H // self.stride, W // self.stride)

    # -- geometry ----------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.kernel.shape[0]

    @property
    def in_channels(self) -> int:
        return self.kernel.shape[1]

    @property
    def kernel_size(self) -> int:
        return self.kernel.shape[2]

    @property
    def pixels(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    @property
    def n_in(self) -> int:
        return self.in_channels * self.pixels

    @property
    def out_pixels(self) -> int:
        return self.out_shape[0] * self.out_shape[1]

    @property
    def n_out(self) -> int:
        return self.out_channels * self.out_pixels

    @property
    def shape(self) -> tuple:
        return (self.n_out, self.n_in)

    @property
    def square(self) -> bool:
        return self.out_channels == self.in_channels and self.stride == 1

    @property
    def n(self) -> int:
        self._require_square("n")
        return self.n_out

    def _require_square(self, what: str) -> None:
        if not self.square:
            raise ValueError(f"{what} needs a square operator (C_out = C_in, stride 1), got a kernel of shape "
                             f"{self.kernel.shape}" + (f" with stride {self.stride}" if self.stride > 1 else ""))

    def with_kernel(self, kernel) -> "Conv2d":
        """The same geometry with another kernel."""
        return Conv2d(kernel, self.image_shape, self.padding, self.stride)

    def __repr__(self) -> str:
        C_out, C_in, k, _ = self.kernel.shape
        H, W = self.image_shape
        stride = f", stride={self.stride}" if self.stride > 1 else ""
        return f"Conv2d({C_out}x{C_in}x{k}x{k} kernel, {H}x{W} images, padding={self.padding!r}{stride})"

    # -- per-channel row data ------------------------------------------------------------------
    def centre(self) -> np.ndarray:
        """``K[:, :, p, p]`` (C_out × C_in): the taps on each pixel's own position."""
        p = self.kernel_size // 2
        return self.kernel[:, :, p, p]

    def diagonal(self) -> np.ndarray:
        """The matrix's diagonal per output channel, ``K[c, c, p, p]`` (every pixel of channel
        ``c`` has it)."""
        self._require_square("the diagonal")
        return np.diagonal(self.centre()).copy()

    def row_data(self, eta=None) -> tuple:
        """``(diag, off)`` per output channel: the diagonal entry and the largest weighted
        off-diagonal ℓ1 mass of a row, ``Σ_{(c', di, dj) ≠ (c, p, p)} |K[c, c', di, dj]| η_{c'}/η_c``
        (attained by every row for circular padding, by interior rows for zero padding).

        ``eta`` (C,): positive weights per channel (the state norm's weights are constant over
        each channel's pixels); default all ones."""
        self._require_square("row data")
        C = self.out_channels
        eta = _channel_weights(eta, C)
        mass = np.abs(self.kernel).sum(axis=(2, 3))  # (C, C): ℓ1 mass of each channel pair
        diag = self.diagonal()
        if eta is not None:
            mass = mass * eta[None, :] / eta[:, None]
        off = mass.sum(axis=1) - np.abs(diag)
        return diag, off

    def channel_majorant(self) -> np.ndarray:
        """The C × C Metzler matrix whose weighted ℓ∞ log-norm equals the operator's for weights
        constant over each channel: diagonal ``K[c,c,p,p] + Σ_{(di,dj) ≠ (p,p)} |K[c,c,di,dj]|``,
        off-diagonal ``Σ |K[c,c',…]|``. Its Perron weights are the operator's optimal channel
        weights (:func:`contraction.optimal_weights`)."""
        self._require_square("the channel majorant")
        M = np.abs(self.kernel).sum(axis=(2, 3))
        d = np.arange(self.out_channels)
        M[d, d] += self.diagonal() - np.abs(self.diagonal())
        return M

    def norm_inf(self) -> float:
        """``‖A‖∞ = max_c Σ |K[c, …]|`` (exact for both paddings at stride 1, as ``H, W ≥ k``;
        with a stride, exact for circular padding and an upper bound for zeros)."""
        return float(np.abs(self.kernel).sum(axis=(1, 2, 3)).max())

    # -- the operator -----------------------------------------------------------------------------
    def _images(self, X, channels: int, name: str, shape) -> np.ndarray:
        X = np.asarray(X)
        n = channels * shape[0] * shape[1]
        if X.ndim != 2 or X.shape[1] != n:
            raise ValueError(f"{name} must have shape (batch, {n}) for {self!r}, got {X.shape}")
        return X.reshape(X.shape[0], channels, *shape)

    def apply(self, X) -> np.ndarray:
        """``X Aᵀ``: each row of ``X`` (batch, n_in) convolved, (batch, n_out)."""
        x = self._images(X, self.in_channels, "X", self.image_shape)
        s = self.stride
        return _correlate(x, self.kernel, self.padding)[:, :, ::s, ::s].reshape(x.shape[0], self.n_out)

    def apply_T(self, Y) -> np.ndarray:
        """``Y A``: the adjoint (transpose) applied to each row of ``Y`` (batch, n_out): spread
        onto the input grid (zeros between the strided pixels), then the correlation with the
        flipped kernel, channels swapped, and the same padding."""
        y = self._images(Y, self.out_channels, "Y", self.out_shape)
        s = self.stride
        if s > 1:
            up = np.zeros((y.shape[0], y.shape[1], *self.image_shape), dtype=y.dtype)
            up[:, :, ::s, ::s] = y
            y = up
        flipped = self.kernel[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        return _correlate(y, flipped, self.padding).reshape(y.shape[0], self.n_in)

    def to_dense(self) -> np.ndarray:
        """The (n_out, n_in) matrix (for small images: tests and cross-checks)."""
        return self.apply(np.eye(self.n_in)).T.copy()


def _channel_weights(eta, C: int):
    if eta is None:
        return None
    w = np.asarray(eta, dtype=np.float64)
    if w.shape != (C,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"eta for a convolution must hold {C} positive finite weights, one per channel, "
                         f"got shape {w.shape}")
    return w


def _correlate(x: np.ndarray, K: np.ndarray, padding: str) -> np.ndarray:
    """``y[b, c, i, j] = Σ K[c, c', di, dj] x[b, c', i + di − p, j + dj − p]`` (the
    specification: one shifted copy per tap)."""
    k = K.shape[2]
    p = k // 2
    H, W = x.shape[2:]
    if padding == "circular":
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="wrap")
    else:
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((x.shape[0], K.shape[0], H, W), dtype=np.result_type(x.dtype, np.float64))
    for di in range(k):
        for dj in range(k):
            out += np.einsum("oc,bchw->bohw", K[:, :, di, dj], xp[:, :, di : di + H, dj : dj + W])
    return out
