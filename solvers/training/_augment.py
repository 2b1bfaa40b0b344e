"""Data augmentation for image inputs: random translations and horizontal flips.

A small training set (mnist5k: 3,600 training images beside its validation split) is learnt
by heart long before the network stops improving on held-out images; moving every image by a
few pixels each epoch is the standard remedy and costs one copy of the training set per epoch.
The images stay in the inputs' flat row-major layout (channel, row, column), so dense and
convolutional networks take the same augmented arrays.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["augment_images", "image_shape_of"]


def image_shape_of(net, n_in: int) -> tuple[int, int, int]:
    """The (channels, height, width) of ``net``'s inputs: a convolutional network's
    ``in_shape``, else one square channel when ``n_in`` is a square number."""
    shape = getattr(net, "in_shape", None)
    if shape is not None:
        return tuple(int(s) for s in shape)
    side = math.isqrt(n_in)
    if side * side != n_in or side < 2:
        raise ValueError(f"shift and flip move the pixels of images, but the network's {n_in} input features are not "
                         "a square one-channel image; train without them")
    return (1, side, side)


def augment_images(X: np.ndarray, image_shape, shift: int, flip: bool, rng: np.random.Generator) -> np.ndarray:
    """A new array of ``X``'s images, each moved by its own random offset and perhaps mirrored.

    Parameters
    ----------
    X : array (N, C·H·W)
        Images flattened row-major (channel, row, column).
    image_shape : (C, H, W)
    shift : int
        Each image moves by ``(dy, dx)`` drawn uniformly from ``{−shift, …, shift}²``; pixels
        moved in from outside the image are 0 (the background of data in [0, 1]).
    flip : bool
        Each image is mirrored left to right with probability 1/2 (after the move).
    rng : numpy Generator
        The draws, in this order: the offsets ``(N, 2)``, then the flips ``(N,)``.
    """
    C, H, W = image_shape
    N = len(X)
    if X.ndim != 2 or X.shape[1] != C * H * W:
        raise ValueError(f"X must have shape (N, {C * H * W}) for images of shape {tuple(image_shape)}, got {X.shape}")
    if not 0 <= shift < min(H, W):
        raise ValueError(f"shift must be in [0, {min(H, W) - 1}] for {H}x{W} images, got {shift}")
    images = X.reshape(N, C, H, W)
    if shift:
        s = shift
        offsets = rng.integers(-s, s + 1, size=(N, 2))
        padded = np.zeros((N, C, H + 2 * s, W + 2 * s), dtype=X.dtype)
        padded[:, :, s : s + H, s : s + W] = images
        out = np.empty_like(images)
        # One slice per offset (at most (2s+1)² of them), not one per image.
        code = (offsets[:, 0] + s) * (2 * s + 1) + (offsets[:, 1] + s)
        order = np.argsort(code, kind="stable")
        bounds = np.searchsorted(code[order], np.arange((2 * s + 1) ** 2 + 1))
        for c in range((2 * s + 1) ** 2):
            rows = order[bounds[c] : bounds[c + 1]]
            if len(rows) == 0:
                continue
            dy, dx = c // (2 * s + 1) - s, c % (2 * s + 1) - s
            # The image moved by (dy, dx): output pixel (i, j) is input pixel (i − dy, j − dx).
            out[rows] = padded[rows, :, s - dy : s - dy + H, s - dx : s - dx + W]
        images = out
    else:
        images = images.copy()
    if flip:
        mirrored = rng.random(N) < 0.5
        images[mirrored] = images[mirrored, :, :, ::-1]
    return images.reshape(N, C * H * W)
