"""``nemon check KERNEL.npy --image HxW``: a convolution kernel explained exactly from its taps
(issue 14), every printed number against ``contraction`` and, on small images, against the
dense matrix; bad kernels and options are one line naming them, exit 2."""

from __future__ import annotations

import re

import numpy as np
import pytest

import contraction
from contraction import Conv2d
from _cli_helpers import run, one_clean_line






def value(out: str, pattern: str) -> float:
    match = re.search(pattern, out, flags=re.MULTILINE)
    assert match, f"{pattern!r} not in:\n{out}"
    return float(match.group(1))


def method_row(out: str, method: str):
    """``(alpha, factor, iterations)`` of a method's row (``None`` for a '-')."""
    match = re.search(rf"^{method}\s+(\S+)\s+(\S+)\s+(\S+)$", out, flags=re.MULTILINE)
    assert match, f"no row for {method} in:\n{out}"
    return tuple(None if g == "-" else float(g) for g in match.groups())


def random_kernel(rng, C=3, k=3, centre=-0.4, scale=0.1):
    K = scale * rng.standard_normal((C, C, k, k))
    for c in range(C):
        K[c, c, k // 2, k // 2] = centre
    return K


@pytest.fixture
def rng():
    return np.random.default_rng(14)


def save(tmp_path, K, name="kernel.npy"):
    path = tmp_path / name
    np.save(path, K)
    return path


@pytest.mark.parametrize("padding", ["circular", "zeros"])
def test_a_well_posed_kernel_is_explained_exactly(tmp_path, rng, padding):
    op = contraction.project_mu_inf(Conv2d(random_kernel(rng, C=3, scale=0.3), (6, 5), padding), 0.8)
    code, out, err = run("check", save(tmp_path, op.kernel), "--image", "6x5", "--padding", padding)
    assert code == 0, err
    assert err == ""
    assert "kernel 3x3x3x3" in out and "6x5 images" in out and f"{padding} padding" in out
    assert "n = C*H*W = 90" in out
    mu = value(out, r"^mu_inf\(A\) = (\S+): well-posed \(< 1\): yes")
    assert mu == pytest.approx(contraction.mu_inf(op), abs=5e-6)
    assert mu == pytest.approx(0.8, abs=5e-6)
    assert value(out, r"^\|\|A\|\|_inf = (\S+) ") == pytest.approx(op.norm_inf(), rel=1e-5)
    dense = value(out, r"^dense cross-check: mu_inf of the 90x90 matrix = (\S+), agrees")
    assert dense == pytest.approx(contraction.mu_inf(op.to_dense()), abs=5e-6)
    for method in contraction.METHODS:
        if method == "anderson":
            continue
        alpha, factor, iters = method_row(out, method)
        assert alpha == pytest.approx(contraction.optimal_alpha(op, method), rel=1e-3)
        want = contraction.contraction_factor(op, None, method)
        assert factor == pytest.approx(want, rel=1e-3)
        assert iters == contraction.iteration_bound(want, 1.0, 1e-8)


def test_the_worst_channel_and_the_per_channel_rows(tmp_path, rng):
    K = random_kernel(rng, C=4, scale=0.05)
    K[2, 0] += 0.3  # channel 2 carries the most off-diagonal mass
    op = Conv2d(K, (5, 5))
    diag, off = op.row_data()
    code, out, _ = run("check", save(tmp_path, K), "--image", "5x5")
    assert code == (0 if contraction.mu_inf(op) < 1 else 1)
    assert value(out, r"worst channel c = 2: K\[2,2,1,1\] = (\S+),") == pytest.approx(diag[2], rel=1e-5)
    assert value(out, r"worst channel c = 2: .* other taps' mass (\S+),") == pytest.approx(off[2], rel=1e-5)
    for c in range(4):
        row = re.search(rf"^\s+{c}\s+(\S+)\s+(\S+)\s+(\S+)$", out, flags=re.MULTILINE)
        assert row, out
        assert [float(v) for v in row.groups()] == pytest.approx([diag[c], off[c], diag[c] + off[c]], rel=1e-5)


def test_an_ill_posed_kernel_exits_1(tmp_path, rng):
    K = random_kernel(rng, C=2, centre=0.5, scale=0.3)
    op = Conv2d(K, (4, 4))
    assert contraction.mu_inf(op) > 1
    code, out, err = run("check", save(tmp_path, K), "--image", "4x4", "--padding", "zeros")
    assert code == 1, err
    mu = value(out, r"^mu_inf\(A\) = (\S+): well-posed \(< 1\): no")
    assert mu == pytest.approx(contraction.mu_inf(op), rel=1e-5)
    assert "agrees" in out  # zero padding: the interior rows attain the kernel formula


def test_the_seed_authors_shift_is_reported_ill_posed(tmp_path, rng):
    """Their conv model: K / ||K||_F, centre taps shifted by m - C max|K| (m = 0.05), circular."""
    C, k = 8, 5
    K = rng.standard_normal((C, C, k, k))
    K /= np.linalg.norm(K)
    shift = 0.05 - C * np.abs(K).max()
    for c in range(C):
        K[c, c, k // 2, k // 2] += shift
    code, out, _ = run("check", save(tmp_path, K), "--image", "6x6")
    assert code == 1
    assert value(out, r"^mu_inf\(A\) = (\S+):") > 1.5
    assert "agrees" in out  # n = 288: the dense cross-check runs


def test_large_images_skip_the_dense_check_and_the_splittings(tmp_path, rng):
    K = contraction.project_mu_inf(Conv2d(random_kernel(rng, C=8), (28, 28)), 0.9).kernel
    code, out, err = run("check", save(tmp_path, K), "--image", "28x28")
    assert code == 0, err
    assert "n = C*H*W = 6272" in out
    assert "dense cross-check: skipped (n = 6272 > 2000)" in out
    for method in ("average", "forward_backward"):
        alpha, factor, iters = method_row(out, method)
        assert factor == pytest.approx(contraction.contraction_factor(Conv2d(K, (28, 28)), None, method), rel=1e-3)
        assert np.isfinite(iters)
    for method in ("peaceman_rachford", "douglas_rachford"):  # circular: per frequency, any size
        alpha, factor, iters = method_row(out, method)
        assert factor == pytest.approx(contraction.contraction_factor(Conv2d(K, (28, 28)), alpha, method), rel=1e-3)
    code, out, err = run("check", save(tmp_path, K), "--image", "28x28", "--padding", "zeros")
    assert code == 0, err
    for method in ("peaceman_rachford", "douglas_rachford"):  # zeros: the dense resolvent, too large here
        alpha, factor, iters = method_row(out, method)
        assert alpha is not None and factor is None and iters is None
    assert re.search(r"^-: .*resolvent", out, flags=re.MULTILINE)


def test_an_input_kernel_gives_the_lipschitz_bound(tmp_path, rng):
    op = contraction.project_mu_inf(Conv2d(random_kernel(rng, C=2), (5, 5)), 0.5)
    B = 0.2 * rng.standard_normal((2, 1, 3, 3))
    code, out, err = run("check", save(tmp_path, op.kernel), "--image", "5x5", "--B", save(tmp_path, B, "B.npy"))
    assert code == 0, err
    tight = value(out, r"Lipschitz bound: (\S+) \(tight")
    assert tight == pytest.approx(contraction.lipschitz_bound(op, Conv2d(B, (5, 5))), rel=1e-5)
    assert tight == pytest.approx(contraction.lipschitz_bound(op.to_dense(), Conv2d(B, (5, 5)).to_dense()), rel=1e-5)


def test_matrices_are_checked_as_before(tmp_path):
    A = np.array([[-2.0, 0.5], [0.1, 0.2]])
    code, out, err = run("check", save(tmp_path, A, "A.npy"), "--no-lben")
    assert code == 0, err
    assert out.startswith("Matrix: file") and "Convolution" not in out
    code, _, err = run("solve", save(tmp_path, np.zeros((2, 2, 3, 3))))
    one_clean_line(err, "must be 2-dimensional", "(2, 2, 3, 3)", "nemon check")
    assert code == 2


@pytest.mark.parametrize("kernel_shape, options, needles", [
    ((2, 2, 3, 3), [], ["kernel.npy", "4-D convolution kernel", "--image HxW"]),
    ((2, 2, 3, 3), ["--image", "28"], ["--image", "HxW", "'28'"]),
    ((2, 2, 3, 3), ["--image", "0x5"], ["--image", "'0x5'"]),
    ((2, 2, 3, 3), ["--image", "5xfive"], ["--image", "'5xfive'"]),
    ((2, 2, 3, 3), ["--image", "2x9"], ["--image 2x9", "smaller than the 3x3 kernel", "kernel.npy"]),
    ((2, 2, 5, 5), ["--image", "9x4"], ["--image 9x4", "5x5 kernel"]),
    ((3, 2, 3, 3), ["--image", "5x5"], ["kernel.npy", "2 input channels to 3 output", "C_out = C_in"]),
    ((2, 2, 2, 2), ["--image", "5x5"], ["kernel.npy", "k odd"]),
    ((2, 2, 3, 5), ["--image", "5x5"], ["kernel.npy", "(2, 2, 3, 5)"]),
    ((2, 2, 3, 3), ["--image", "5x5", "--padding", "reflect"], ["--padding", "'reflect'"]),
    ((2, 2, 3), ["--image", "5x5"], ["kernel.npy", "2-dimensional (a matrix) or 4-dimensional", "(2, 2, 3)"]),
    ((4, 4), ["--image", "5x5"], ["--image", "kernel.npy is a matrix", "(4, 4)"]),
    ((4, 4), ["--padding", "zeros"], ["--padding", "convolution kernel"]),
    ((2, 2, 3, 3), ["--image", "5x5", "--B", "B.npy"], ["B in", "B.npy", "(2, C_in, k, k)"]),
])
def test_bad_kernels_and_options_are_one_line_exit_2(tmp_path, kernel_shape, options, needles):
    path = save(tmp_path, np.zeros(kernel_shape))
    np.save(tmp_path / "B.npy", np.zeros((3, 1, 3, 3)))  # 3 output channels: matches no 2-channel kernel
    code, out, err = run("check", path, *[tmp_path / o if o == "B.npy" else o for o in options])
    assert code == 2
    assert out == ""
    one_clean_line(err, *needles)


def test_image_with_an_example_is_refused(tmp_path):
    code, out, err = run("check", "--example", "paper-2x2", "--image", "5x5")
    assert code == 2 and out == ""
    one_clean_line(err, "--image", "--example paper-2x2", "matrix")
