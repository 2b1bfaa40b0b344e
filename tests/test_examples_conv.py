"""``examples/conv_certificate.py`` end to end on its ``--quick`` settings: the seed authors'
convolutional shift leaves μ∞ above 1, the kernel projection certifies μ∞ = γ, and every printed
number is what ``contraction`` and the dense matrices give (issue 14)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import contraction
from contraction import Conv2d

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "conv_certificate.py"
ROW = re.compile(r"^\s*(\d+)\s+(\d+) \|\s+(\S+)\s+(\S+) \|\s+(\S+)\s+(\S+)\s+(\d+)/(\d+)\s+(\S+) \|\s+(\S+) \|"
                 r"\s+(\S+)\s+(\S+)\s+(\S+)$", flags=re.MULTILINE)


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("conv_certificate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # nothing runs at import time
    return module


def their_layer_matrix(K0: np.ndarray, image, m: float) -> np.ndarray:
    """The seed authors' layer as their code applies it, ``z ↦ (m − C max|A|) z + A ⋆ z`` with
    ``A = K0 / ‖K0‖_F`` and circular padding, as a dense matrix."""
    A = K0 / np.sqrt((K0 ** 2).sum())
    conv = Conv2d(A, image, "circular").to_dense()
    return conv + (m - A.shape[0] * np.abs(A).max()) * np.eye(conv.shape[0])


def test_the_seed_layer_is_their_code_and_the_projection_certifies_gamma(script):
    rng = np.random.default_rng(3)
    K0 = rng.standard_normal((3, 3, 3, 3))
    t = script.trial(K0, gamma=0.9, m=0.05)
    small = (6, 5)  # μ∞ does not depend on the image size once H, W >= k
    theirs = their_layer_matrix(K0, small, 0.05)
    assert t["mu_seed"] == pytest.approx(contraction.mu_inf(theirs), abs=1e-12)
    assert t["mu_seed"] > 1.0
    # at scale g their layer is g (A ⋆ · − C max|A| ·) + m ·: certified exactly below g_max
    M = theirs - 0.05 * np.eye(theirs.shape[0])
    for g, certified in ((0.99 * t["g_max"], True), (1.01 * t["g_max"], False)):
        assert (contraction.mu_inf(g * M + 0.05 * np.eye(M.shape[0])) < 1.0) == certified
    assert t["mu_nemon"] == pytest.approx(0.9, abs=1e-12)
    assert t["dK_nemon"] <= t["dK_shift"] + 1e-12  # the projection is the nearest certified kernel


def test_quick_run_prints_the_table_and_writes_the_figure(script, capsys, tmp_path):
    assert capsys.readouterr().out == ""
    out = tmp_path / "figs" / "conv.png"  # the parent is created by the script
    assert script.main(["--quick", "--out", str(out)]) == 0
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    rows = ROW.findall(printed)
    quick = script.QUICK
    assert [(int(r[0]), int(r[1])) for r in rows] == [(k, C) for k in quick["kernels"] for C in quick["channels"]]
    want = script.run(quick["channels"], quick["kernels"], quick["trials"], 0.9, script.SEED_M, 0)
    for r, w in zip(rows, want):
        shift, needed, mu_seed, mu_max = map(float, r[2:6])
        certified, trials = int(r[6]), int(r[7])
        g_max, mu_nemon, dk_seed, dk_shift, dk_nemon = map(float, r[8:])
        assert (shift, needed, mu_seed, mu_max) == pytest.approx(
            (w["shift"], w["needed"], w["mu_seed"], w["mu_seed_max"]), abs=1e-3)
        assert mu_seed > 1.0 and certified == 0 and trials == quick["trials"]
        assert g_max == pytest.approx((1 - script.SEED_M) / (mu_max - script.SEED_M), abs=2e-3)
        assert mu_nemon == pytest.approx(0.9, abs=1e-6)
        assert dk_nemon < dk_shift and dk_seed == pytest.approx(w["dK_seed"], abs=1e-3)
    cross = re.search(r"seed layer mu_inf (\S+) \(kernel formula\) vs (\S+) \(matrix\); "
                      r"nemon projection (\S+) vs (\S+)$", printed, flags=re.MULTILINE)
    assert cross, printed
    seed_formula, seed_dense, nemon_formula, nemon_dense = map(float, cross.groups())
    assert seed_formula == pytest.approx(seed_dense, abs=1e-10) and seed_formula > 1.0
    assert nemon_formula == pytest.approx(nemon_dense, abs=1e-10) == pytest.approx(0.9, abs=1e-10)
    largest = float(re.search(r"largest mu_inf after the projection: (\S+)", printed).group(1))
    assert largest == pytest.approx(0.9, abs=1e-12)
    assert f"seed layers certified (mu_inf < 1): 0 of {len(rows) * quick['trials']}" in printed
    assert str(out) in printed


def test_even_kernel_sizes_are_refused(script, capsys):
    with pytest.raises(SystemExit) as info:
        script.main(["--kernels", "4", "--out", "unused.png"])
    assert info.value.code == 2
    assert "--kernels must be odd" in capsys.readouterr().err
