"""``nemon train`` and ``nemon evaluate`` end to end on the built-in digits data set:
tables and reports, checkpoints and figures, resuming (after finishing, and after Ctrl-C),
and the user-facing errors (exit status 2, one clear line, no traceback)."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest

from _cli_helpers import one_clean_line, run
from solvers.training import ImplicitNetwork, load_training, save

EPOCH_COLUMNS = ("epoch", "loss", "train_acc", "val_acc", "mu_inf", "alpha_star", "fwd_iters", "adj_iters",
                 "local_rate", "lipschitz", "seconds")
REPORT_LINES = ("test accuracy", "mu_inf(A)", "Lipschitz bound (tight)", "Lipschitz bound (paper)",
                "forward iterations", "local rate")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"



def train_args(tmp, name, epochs=2, *extra):
    return ("train", "--dataset", "digits", "--epochs", epochs, "--hidden", 16, "--no-progress",
            "--out", tmp / f"{name}.npz", "--figure", tmp / f"{name}.png", *extra)


def printed_accuracy(out: str) -> float:
    match = re.search(r"^test accuracy\s+(\S+)\s", out, flags=re.MULTILINE)
    assert match, f"no test accuracy line in:\n{out}"
    return float(match.group(1))


def epoch_rows(out: str) -> list[list[str]]:
    """The rows of the per-epoch table (lines of 11 numbers starting with an integer)."""
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == len(EPOCH_COLUMNS) and fields[0].isdigit():
            rows.append(fields)
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch ``nemon train`` run, shared by the tests that only read its outputs."""
    tmp = tmp_path_factory.mktemp("cli_train")
    code, out, err = run(*train_args(tmp, "m"))
    return tmp, code, out, err


# -- train ------------------------------------------------------------------------------------
def test_train_exits_zero_and_prints_table_and_report(trained):
    tmp, code, out, err = trained
    assert code == 0, err
    assert "Traceback" not in out + err
    header = [line for line in out.splitlines() if line.split()[:1] == ["epoch"]]
    assert len(header) == 1 and header[0].split() == list(EPOCH_COLUMNS)
    rows = epoch_rows(out)
    assert [int(r[0]) for r in rows] == [1, 2]
    for r in rows:
        assert all(np.isfinite(float(x)) for x in r)
        assert float(r[4]) <= 0.9 + 1e-3  # mu_inf within the default gamma
        assert 0 <= float(r[8]) < 1  # the local rate, below the averaged step's factor
    for line in REPORT_LINES:
        assert re.search(rf"^{re.escape(line)}\s", out, flags=re.MULTILINE), f"{line!r} missing from:\n{out}"
    assert 0.0 <= printed_accuracy(out) <= 1.0
    assert "digits" in out and "constraint mu_inf" in out


def test_train_writes_checkpoint_and_png(trained):
    tmp, code, out, _ = trained
    assert code == 0
    path = tmp / "m.npz"
    assert f"checkpoint: {path}" in out
    net, history, metrics = load_training(path)
    assert (net.n_in, net.n_hidden, net.n_out) == (64, 16, 10)
    assert net.dtype == np.float32
    assert len(history.epochs) == 2 and history.state.epoch == 2 and not history.interrupted
    assert history.config.epochs == 2
    assert metrics["accuracy"] == pytest.approx(printed_accuracy(out), abs=5e-5)
    figure = tmp / "m.png"
    assert f"figure: {figure}" in out
    assert figure.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith("m.")) == ["m.npz", "m.png"]


def test_printed_table_matches_the_saved_history(trained):
    tmp, _, out, _ = trained
    _, history, _ = load_training(tmp / "m.npz")
    for row, record in zip(epoch_rows(out), history.epochs):
        assert float(row[1]) == pytest.approx(record["loss"], abs=5e-5)
        assert float(row[3]) == pytest.approx(record["val_acc"], abs=5e-5)
        assert float(row[4]) == pytest.approx(record["mu_inf"], abs=5e-4)


# -- evaluate ---------------------------------------------------------------------------------
def test_evaluate_prints_the_same_accuracy(trained):
    tmp, _, train_out, _ = trained
    code, out, err = run("evaluate", tmp / "m.npz", "--dataset", "digits")
    assert code == 0, err
    for line in REPORT_LINES:
        assert line in out
    assert printed_accuracy(out) == printed_accuracy(train_out)
    mu = re.compile(r"^mu_inf\(A\)\s+(\S+)", flags=re.MULTILINE)
    assert mu.search(out).group(1) == mu.search(train_out).group(1)


def test_evaluate_missing_checkpoint_exits_2(tmp_path):
    code, out, err = run("evaluate", tmp_path / "nothing.npz", "--dataset", "digits")
    assert code == 2
    assert "error" in err and "not found" in err and "nothing.npz" in err
    assert "Traceback" not in err


def test_evaluate_garbage_file_exits_2(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"this is not a checkpoint\n" * 20)
    code, out, err = run("evaluate", path, "--dataset", "digits")
    assert code == 2
    assert "error" in err and "garbage.npz" in err and "checkpoint" in err
    assert "Traceback" not in err


def test_evaluate_foreign_npz_exits_2(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, A=np.eye(3))
    code, _, err = run("evaluate", path, "--dataset", "digits")
    assert code == 2 and "not a nemon checkpoint" in err


def test_evaluate_on_a_data_set_of_another_width_exits_2(trained):
    tmp = trained[0]
    code, _, err = run("evaluate", tmp / "m.npz", "--dataset", "function")
    assert code == 2 and "features" in err


# -- data errors ------------------------------------------------------------------------------
def test_train_mnist_without_files_exits_2_and_says_how_to_get_them(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run("train", "--dataset", "mnist", "--data-dir", empty, "--epochs", 1, "--no-progress",
                         "--out", tmp_path / "m.npz", "--figure", tmp_path / "m.png")
    assert code == 2
    assert "--data-dir" in err or "download" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m.npz").exists()


def test_train_with_incompatible_options_exits_2(tmp_path):
    code, _, err = run(*train_args(tmp_path, "x", 1, "--constraint", "none", "--lipschitz-weight", "0.1"))
    assert code == 2 and "lipschitz_weight" in err
    assert not (tmp_path / "x.npz").exists()


def test_train_diag_min_is_applied_recorded_and_resumed(tmp_path):
    code, out, err = run(*train_args(tmp_path, "d", 1, "--diag-min", "-0.2", "--lr", "0.05"))
    assert code == 0, err
    assert "diag_min -0.2" in out
    net, history, _ = load_training(tmp_path / "d.npz")
    assert history.config.diag_min == -0.2 and np.diagonal(net.A).min() >= -0.2 - 1e-6
    code, out, err = run(*train_args(tmp_path, "d2", 2, "--resume", tmp_path / "d.npz"))
    assert code == 0, err
    assert load_training(tmp_path / "d2.npz")[1].config.diag_min == -0.2
    code, _, err = run(*train_args(tmp_path, "bad", 1, "--constraint", "norm_inf", "--diag-min", "-1"))
    assert code == 2 and "diag_min" in err


def test_train_augments_records_and_resumes_shift_and_flip(tmp_path):
    code, out, err = run(*train_args(tmp_path, "a", 1, "--shift", 1, "--flip"))
    assert code == 0, err
    assert "augmented by shifts up to 1 px and left-right flips" in out
    _, history, _ = load_training(tmp_path / "a.npz")
    assert (history.config.shift, history.config.flip) == (1, True)
    code, out, err = run(*train_args(tmp_path, "a2", 2, "--resume", tmp_path / "a.npz"))
    assert code == 0, err
    assert "augmented by shifts up to 1 px and left-right flips" in out
    config = load_training(tmp_path / "a2.npz")[1].config
    assert (config.shift, config.flip) == (1, True)
    code, _, err = run(*train_args(tmp_path, "a3", 3, "--resume", tmp_path / "a2.npz", "--shift", 2))
    assert code == 2
    one_clean_line(err, "--shift 2 (the checkpoint's: 1)")
    code, _, err = run(*train_args(tmp_path, "big", 1, "--shift", 8))
    assert code == 2
    one_clean_line(err, "shift must be smaller than the 8x8 images, got 8")
    assert not (tmp_path / "big.npz").exists()
    code, _, err = run(*train_args(tmp_path, "neg", 1, "--shift", -1))
    assert code == 2 and "--shift" in err and "Traceback" not in err


def test_train_per_unit_steps_are_recorded_and_resumed(tmp_path):
    code, out, err = run(*train_args(tmp_path, "p", 1, "--per-unit-steps", "--diag-min", "-1"))
    assert code == 0, err
    assert any(line.startswith("Training") and line.endswith(", per-unit steps") for line in out.splitlines())
    net, history, _ = load_training(tmp_path / "p.npz")
    assert history.config.per_unit_steps and history.solver.alpha == "per_unit"
    assert net.solver.alpha == "per_unit"  # evaluate and certify solve as trained
    code, out, err = run(*train_args(tmp_path, "p2", 2, "--resume", tmp_path / "p.npz"))
    assert code == 0, err
    assert load_training(tmp_path / "p2.npz")[1].config.per_unit_steps
    code, _, err = run(*train_args(tmp_path, "p3", 2, "--resume", tmp_path / "p.npz", "--per-unit-steps"))
    assert code == 0, err  # the same value as the checkpoint's: no conflict
    code, _, err = run(*train_args(tmp_path, "mon", 1, "--per-unit-steps", "--constraint", "mon"))
    assert code == 2
    one_clean_line(err, "per_unit_steps needs the averaged or Anderson forward solve")
    code, out, err = run(*train_args(tmp_path, "a", 1, "--per-unit-steps", "--forward-method", "anderson"))
    assert code == 0, err  # Anderson's forward solves, the adjoints averaged with per-unit steps
    assert any(line.startswith("Training") and line.endswith(", anderson forward solves, per-unit steps")
               for line in out.splitlines())
    history = load_training(tmp_path / "a.npz")[1]
    assert history.solver.method == "anderson" and history.solver.alpha == "per_unit"


def test_train_time_budget_ends_the_run_and_a_resumed_run_keeps_it(tmp_path):
    """A thousand epochs cannot fit half a second of training steps: the run ends on its budget,
    mid-epoch, says so, and a resume neither trains nor changes the budget."""
    code, out, err = run(*train_args(tmp_path, "b", 1000, "--time-budget", "0.5"))
    assert code == 0, err
    assert any(line.startswith("Training") and line.endswith(", time budget 0.5 s") for line in out.splitlines())
    match = re.search(r"^time budget\s+0.5 s, spent in epoch (\d+) of 1000 \(after (\d+) batches of it\)$", out,
                      flags=re.MULTILINE)
    assert match, out
    _, history, _ = load_training(tmp_path / "b.npz")
    assert history.config.time_budget == 0.5 and not history.interrupted
    assert len(history) == int(match.group(1)) < 1000
    assert history.epochs[-1]["batches"] == int(match.group(2))
    assert sum(r["seconds"] for r in history.epochs) >= 0.5 > sum(r["seconds"] for r in history.epochs[:-1])
    before = (tmp_path / "b.npz").read_bytes()
    code, out, err = run(*train_args(tmp_path, "b", 1000, "--resume", tmp_path / "b.npz"))
    assert code == 0, err
    assert "has spent its time budget of 0.5 s" in out
    assert (tmp_path / "b.npz").read_bytes() == before
    code, _, err = run(*train_args(tmp_path, "b2", 1000, "--resume", tmp_path / "b.npz", "--time-budget", "1m"))
    assert code == 2
    one_clean_line(err, "--time-budget 60.0 (the checkpoint's: 0.5)")


@pytest.mark.parametrize("value", ["0", "-3", "5x", "inf", "m"])
def test_train_bad_time_budget_exits_2(tmp_path, value):
    code, _, err = run(*train_args(tmp_path, "t", 1, "--time-budget", value))
    assert code == 2
    one_clean_line(err, "--time-budget", "expected a duration > 0 such as 3600, 90m or 1.5h")


def test_durations_read_seconds_minutes_and_hours():
    from solvers.cli import duration

    assert [duration(t) for t in ("90", "90s", "1.5m", "2H", "0.25h")] == [90.0, 90.0, 90.0, 7200.0, 900.0]


# -- resume -----------------------------------------------------------------------------------
def test_resume_a_finished_checkpoint_with_more_epochs(trained, tmp_path):
    tmp = trained[0]
    code, out, err = run(*train_args(tmp_path, "m3", 3, "--resume", tmp / "m.npz"))
    assert code == 0, err
    assert "Resuming" in out
    assert [int(r[0]) for r in epoch_rows(out)] == [3]  # only the new epoch is trained
    _, history, _ = load_training(tmp_path / "m3.npz")
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3]
    assert history.state.epoch == 3 and history.config.epochs == 3
    old_net, old_history, _ = load_training(tmp / "m.npz")
    assert history.epochs[:2] == old_history.epochs
    assert (tmp_path / "m3.png").read_bytes()[:8] == PNG_MAGIC


def test_resume_without_training_state_exits_2(tmp_path):
    path = save(ImplicitNetwork(64, 4, 10), tmp_path / "bare.npz")
    code, _, err = run(*train_args(tmp_path, "r", 2, "--resume", path))
    assert code == 2 and "no training state" in err


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    code, _, err = run(*train_args(tmp_path, "straight"))
    assert code == 0, err

    original = ImplicitNetwork.compute_gradients  # what the trainer calls per batch
    calls = {"n": 0}

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C during the 5th batch of the first epoch
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImplicitNetwork, "compute_gradients", interrupting)
    code, out, err = run(*train_args(tmp_path, "cut"))
    monkeypatch.undo()
    assert code == 130, err
    assert "Interrupted" in out and "--resume" in out
    _, history, _ = load_training(tmp_path / "cut.npz")
    assert history.interrupted and (history.state.epoch, history.state.batch) == (0, 5)

    code, out, err = run(*train_args(tmp_path, "resumed", 2, "--resume", tmp_path / "cut.npz"))
    assert code == 0, err
    assert "Resuming" in out
    net_a, hist_a, metrics_a = load_training(tmp_path / "straight.npz")
    net_b, hist_b, metrics_b = load_training(tmp_path / "resumed.npz")
    for name in ImplicitNetwork.PARAMS:
        np.testing.assert_array_equal(getattr(net_b, name), getattr(net_a, name), err_msg=name)
    assert [r["loss"] for r in hist_b.epochs] == [r["loss"] for r in hist_a.epochs]
    assert metrics_b["accuracy"] == metrics_a["accuracy"]


def test_validation_is_held_out_of_the_training_set_and_the_test_set_scored_once(tmp_path):
    """``--val-fraction`` (default 0.1): the per-epoch val_acc is measured on a stratified,
    seeded part of the training set, never on the test set, which only the final report reads."""
    from solvers.training import load_dataset, split_validation

    ckpt = tmp_path / "v.npz"
    code, out, err = run("train", "--dataset", "digits", "--epochs", 2, "--hidden", 10, "--no-progress",
                         "--out", ckpt)
    assert code == 0, err
    assert "on digits (1295 train / 142 validation / 360 test)" in out
    net, history, metrics = load_training(ckpt)
    assert metrics["val_fraction"] == 0.1
    X, y, Xt, yt = load_dataset("digits", seed=0)
    _, _, Xv, yv = split_validation(X, y, 0.1, seed=0)
    assert history.epochs[-1]["val_acc"] == pytest.approx(net.accuracy(Xv, yv))
    assert metrics["accuracy"] == pytest.approx(net.accuracy(Xt, yt))
    code, out, err = run("train", "--resume", ckpt, "--epochs", 3, "--val-fraction", 0.2)
    assert code == 2 and "--val-fraction 0.2 (the checkpoint's: 0.1)" in err
    code, out, err = run("train", "--resume", ckpt, "--epochs", 3, "--no-progress")
    assert code == 0 and "(1295 train / 142 validation / 360 test)" in out, err
    code, out, err = run("train", "--dataset", "digits", "--epochs", 1, "--hidden", 10, "--val-fraction", 0,
                         "--no-progress", "--out", tmp_path / "none.npz")
    assert code == 0 and "(1437 train / no validation / 360 test)" in out, err
    assert np.isnan(load_training(tmp_path / "none.npz")[1].epochs[0]["val_acc"])
    code, _, err = run("train", "--dataset", "digits", "--val-fraction", 1, "--out", tmp_path / "bad.npz")
    assert code == 2 and "argument --val-fraction: expected a number in [0, 1), got 1" in err
