"""``nemon train --model conv`` and the commands that read its checkpoint (issue 14, item 3)."""

from __future__ import annotations


import numpy as np

import contraction
from _cli_helpers import one_clean_line, run
from solvers.training import ConvImplicitNetwork, load_training




def _attack_never_beats_a_certificate(ckpt, tmp_path):
    """``nemon attack`` on the checkpoint: at each radius, certified <= PGD <= clean."""
    code, out, err = run("attack", ckpt, "--samples", 40, "--steps", 3, "--eps", "0.01,0.1", "--out", tmp_path / "a.png")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in ("0.01", "0.1")]
    assert len(rows) == 2
    for eps, clean, interval, lip, lip_paper, fgsm, pgd in rows:
        assert max(float(interval), float(lip)) <= float(pgd) <= float(clean)  # a certificate never exceeds an attack


def test_conv_model_trains_certifies_and_resumes(tmp_path):
    ckpt = tmp_path / "conv.npz"
    code, out, err = run("train", "--model", "conv", "--dataset", "digits", "--channels", 3, "--pool", 2, "--epochs", 1,
                         "--out", ckpt, "--no-progress")
    assert code == 0, err
    assert "ConvImplicitNetwork(in_shape=(1, 8, 8), channels=3, kernel_size=3" in out
    net, history, _ = load_training(ckpt)
    assert isinstance(net, ConvImplicitNetwork) and net.pool == 2 and net.padding == "circular"
    assert contraction.mu_inf(net.state_operator()) <= 0.9 + 1e-6
    _attack_never_beats_a_certificate(ckpt, tmp_path)
    code, _, err = run("train", "--resume", ckpt, "--channels", 5, "--epochs", 2)
    assert code == 2 and "--channels 5 (the checkpoint's: 3)" in err
    code, _, err = run("train", "--resume", ckpt, "--epochs", 2, "--no-progress")
    assert code == 0, err
    assert [r["epoch"] for r in load_training(ckpt)[1].epochs] == [1, 2]


def test_conv_model_needs_square_images_and_a_dividing_pool(tmp_path):
    code, _, err = run("train", "--model", "conv", "--dataset", "function", "--out", tmp_path / "f.npz")
    assert code == 2 and "square one-channel images" in err
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--pool", 3, "--out", tmp_path / "p.npz")
    assert code == 2 and "--pool 3 must divide the 8x8 images of the state" in err
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--stride", 2, "--pool", 3,
                       "--out", tmp_path / "s.npz")
    assert code == 2 and "--pool 3 must divide the 4x4 images of the state (digits's 8x8 at stride 2)" in err
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--stride", 3, "--out", tmp_path / "s.npz")
    assert code == 2 and "--stride 3 must divide the 8x8 images" in err
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--input-kernel", 4, "--out", tmp_path / "s.npz")
    assert code == 2 and "--input-kernel must be odd, got 4" in err
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--input-kernel", 9, "--out", tmp_path / "s.npz")
    assert code == 2 and "--input-kernel 9 is larger than the 8x8 images of digits" in err
    assert not (tmp_path / "s.npz").exists()
    assert not np.any([p.exists() for p in (tmp_path / "f.npz", tmp_path / "p.npz")])
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--constraint", "mon", "--out", tmp_path / "m.npz")
    assert code == 2 and "--constraint mon is defined on matrices" in one_clean_line(err)
    assert not (tmp_path / "m.npz").exists()


def test_conv_model_trains_with_intervals_then_certifies(tmp_path):
    """Interval training of a conv layer from the command line; ``certify`` reads it back."""
    ckpt = tmp_path / "robust.npz"
    code, out, err = run("train", "--model", "conv", "--dataset", "digits", "--channels", 3, "--pool", 2, "--epochs", 2,
                         "--stride", 2, "--input-kernel", 5, "--interval-eps", 0.05, "--lipschitz-weight", 1e-4,
                         "--no-progress", "--out", ckpt)
    assert code == 0, err
    _, history, _ = load_training(ckpt)
    assert history.config.interval_eps == 0.05 and history.config.lipschitz_weight == 1e-4
    assert all(r["mu_inf"] <= 0.9 + 1e-6 for r in history.epochs)
    assert 0.0 <= history.epochs[-1]["val_certified"] <= 1.0
    net = load_training(ckpt)[0]
    assert net.stride == 2 and net.state_shape == (4, 4) and net.n_hidden == 3 * 16
    assert net.B.shape == (3, 1, 5, 5) and net.A.shape == (3, 3, 3, 3)
    code, _, err = run("train", "--resume", ckpt, "--input-kernel", 3, "--epochs", 3)
    assert code == 2 and "--input-kernel 3 (the checkpoint's: 5)" in err
    code, out, err = run("certify", ckpt, "--eps", "0.01,0.05", "--samples", 50, "--out", tmp_path / "c.png")
    assert code == 0, err
    assert (tmp_path / "c.png").exists()


def test_conv_model_with_a_hidden_readout_layer_trains_certifies_and_attacks(tmp_path):
    """``--readout-hidden H``: ``C relu(D pool(x) + d) + c``, through training with intervals,
    the checkpoint, ``certify`` and ``attack``; and what it refuses."""
    ckpt = tmp_path / "hidden.npz"
    code, out, err = run("train", "--model", "conv", "--dataset", "digits", "--channels", 3, "--pool", 2, "--epochs", 2,
                         "--readout-hidden", 8, "--interval-eps", 0.05, "--interval-relax", 2, "--no-progress",
                         "--out", ckpt)
    assert code == 0, err
    assert "readout_hidden=8" in out and "||C|| ||D|| ||B||" in out
    assert "the hidden layer relaxed for the 2 closest classes" in out
    net, history, _ = load_training(ckpt)
    assert history.config.interval_relax == 2
    assert net.readout_hidden == 8 and net.D.shape == (8, 3 * 4 * 4) and net.C.shape == (10, 8)
    assert all(r["mu_inf"] <= 0.9 + 1e-6 for r in history.epochs)
    _attack_never_beats_a_certificate(ckpt, tmp_path)
    code, _, err = run("train", "--resume", ckpt, "--readout-hidden", 4, "--epochs", 3)
    assert code == 2 and "--readout-hidden 4 (the checkpoint's: 8)" in err
    code, _, err = run("train", "--resume", ckpt, "--interval-relax", 0, "--epochs", 3)
    assert code == 2 and "--interval-relax 0 (the checkpoint's: 2)" in err
    code, _, err = run("train", "--resume", ckpt, "--epochs", 3, "--no-progress")
    assert code == 0, err
    assert [r["epoch"] for r in load_training(ckpt)[1].epochs] == [1, 2, 3]
    code, _, err = run("train", "--dataset", "digits", "--readout-hidden", 8, "--out", tmp_path / "d.npz")
    assert code == 2 and "--readout-hidden 8 needs --model conv" in err
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--readout-hidden", 8, "--lipschitz-weight",
                       1e-4, "--out", tmp_path / "l.npz")
    assert code == 2 and "--lipschitz-weight penalises a linear readout" in one_clean_line(err)
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--readout-hidden", -1, "--out",
                       tmp_path / "n.npz")
    assert code == 2 and "--readout-hidden" in err
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--interval-eps", 0.05, "--interval-relax",
                       2, "--out", tmp_path / "r.npz")
    assert code == 2 and "--interval-relax 2 relaxes the hidden readout layer" in one_clean_line(err)
    code, _, err = run("train", "--model", "conv", "--dataset", "digits", "--readout-hidden", 8, "--interval-relax", 2,
                       "--out", tmp_path / "e.npz")
    assert code == 2 and "--interval-relax 2 tightens interval training" in one_clean_line(err)
    assert not any((tmp_path / f).exists() for f in ("d.npz", "l.npz", "n.npz", "r.npz", "e.npz"))
