"""Data augmentation (shifts and flips of the training images): each image is moved exactly by
its own drawn offset and mirrored exactly when drawn, nothing else changes, training with it is
deterministic and resumable, and bad settings are refused with the setting's name."""

from __future__ import annotations

import numpy as np
import pytest

from solvers.training import ConvImplicitNetwork, ImplicitNetwork, TrainConfig, augment_images, train
from solvers.training._augment import image_shape_of


def moved(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` (C, H, W) moved down by dy and right by dx, zeros moved in (pixel by pixel)."""
    C, H, W = image.shape
    out = np.zeros_like(image)
    for i in range(H):
        for j in range(W):
            if 0 <= i - dy < H and 0 <= j - dx < W:
                out[:, i, j] = image[:, i - dy, j - dx]
    return out


@pytest.mark.parametrize("shape", [(1, 6, 6), (2, 5, 7)])
@pytest.mark.parametrize("shift, flip", [(1, False), (2, True), (0, True), (3, False)])
def test_each_image_is_moved_by_its_drawn_offset_and_flipped_when_drawn(shape, shift, flip, rng):
    C, H, W = shape
    X = rng.random((500, C * H * W)).astype(np.float32)
    out = augment_images(X, shape, shift, flip, np.random.default_rng(5))
    draws = np.random.default_rng(5)
    offsets = draws.integers(-shift, shift + 1, size=(len(X), 2)) if shift else np.zeros((len(X), 2), int)
    mirrored = draws.random(len(X)) < 0.5 if flip else np.zeros(len(X), bool)
    assert out.shape == X.shape and out.dtype == X.dtype
    for k in range(len(X)):
        want = moved(X[k].reshape(shape), *offsets[k])
        if mirrored[k]:
            want = want[:, :, ::-1]
        np.testing.assert_array_equal(out[k].reshape(shape), want)
    if shift:  # every offset of the square occurs among 500 draws
        assert len({tuple(o) for o in offsets}) == (2 * shift + 1) ** 2
    if flip:
        assert 0 < mirrored.sum() < len(X)


def test_nothing_asked_gives_an_equal_copy(rng):
    X = rng.random((5, 16))
    out = augment_images(X, (1, 4, 4), 0, False, np.random.default_rng(0))
    np.testing.assert_array_equal(out, X)
    assert not np.shares_memory(out, X)


def test_a_centred_digit_keeps_its_ink(rng):
    """A shift of at most s pixels moves no ink out of an image whose border of width s is empty."""
    X = np.zeros((50, 1, 10, 10))
    X[:, :, 2:8, 2:8] = rng.random((50, 1, 6, 6))
    X = X.reshape(50, 100)
    out = augment_images(X, (1, 10, 10), 2, True, np.random.default_rng(1))
    np.testing.assert_allclose(out.sum(axis=1), X.sum(axis=1))
    assert np.sort(out, axis=1).tolist() == np.sort(X, axis=1).tolist()
    assert (out != X).any(axis=1).mean() > 0.8


def test_bad_arguments_are_named():
    X = np.zeros((3, 16))
    with pytest.raises(ValueError, match=r"shift must be in \[0, 3\] for 4x4 images, got 4"):
        augment_images(X, (1, 4, 4), 4, False, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"X must have shape \(N, 18\)"):
        augment_images(X, (2, 3, 3), 1, False, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shift must be an integer >= 0, got -1"):
        TrainConfig(shift=-1)
    with pytest.raises(ValueError, match="shift must be an integer >= 0, got 1.5"):
        TrainConfig(shift=1.5)
    with pytest.raises(ValueError, match="flip must be True or False, got 'yes'"):
        TrainConfig(flip="yes")


def test_image_shapes_of_networks():
    assert image_shape_of(ImplicitNetwork(64, 4, 3), 64) == (1, 8, 8)
    assert image_shape_of(ConvImplicitNetwork((2, 6, 6), 3, 3, 4, pool=2), 72) == (2, 6, 6)
    for n in (1, 10):
        with pytest.raises(ValueError, match=f"network's {n} input features are not a square one-channel image"):
            image_shape_of(ImplicitNetwork(n, 4, 3), n)


def test_training_refuses_a_shift_as_large_as_the_image(digits):
    X, y = digits[0][:20], digits[1][:20]
    with pytest.raises(ValueError, match="shift must be smaller than the 8x8 images, got 8"):
        train(ImplicitNetwork(64, 4, 10), X, y, epochs=1, shift=8, progress=False)
    with pytest.raises(ValueError, match="not a square one-channel image"):
        train(ImplicitNetwork(10, 4, 10), X[:, :10], y, epochs=1, flip=True, progress=False)


def test_training_sees_moved_images_and_is_deterministic(digits, monkeypatch):
    """The steps of an augmented run read the epoch's augmented copy (drawn from
    ``default_rng([seed, epoch, 1])``), the same one on every run with that seed, and
    the caller's array is left alone."""
    X, y = digits[0][:200].copy(), digits[1][:200]
    X_before = X.copy()
    seen = []
    original = ImplicitNetwork.compute_gradients

    def spy(self, Xs, *args, rows=None, **kwargs):
        seen.append(np.array(Xs[rows]))
        return original(self, Xs, *args, rows=rows, **kwargs)

    monkeypatch.setattr(ImplicitNetwork, "compute_gradients", spy)
    runs = []
    for _ in range(2):
        seen.clear()
        net = ImplicitNetwork(64, 8, 10, seed=3)
        train(net, X, y, epochs=2, batch_size=100, seed=7, shift=1, flip=True, progress=False)
        runs.append((list(seen), net.A.copy(), net.C.copy()))
    np.testing.assert_array_equal(X, X_before)
    (batches, A1, C1), (batches2, A2, C2) = runs
    np.testing.assert_array_equal(A1, A2)
    np.testing.assert_array_equal(C1, C2)
    for epoch in range(2):
        perm = np.random.default_rng([7, epoch]).permutation(200)
        Xe = augment_images(X, (1, 8, 8), 1, True, np.random.default_rng([7, epoch, 1]))
        for b in range(2):
            idx = perm[b * 100 : (b + 1) * 100]
            np.testing.assert_array_equal(batches[2 * epoch + b], Xe[idx])
            assert not np.array_equal(batches[2 * epoch + b], X[idx])
    plain = ImplicitNetwork(64, 8, 10, seed=3)
    train(plain, X, y, epochs=2, batch_size=100, seed=7, progress=False)
    assert not np.array_equal(plain.A, A1)
