"""Issue 13, a user's first hour, through the command line: no dead networks (1), no lost work
(2), outputs checked before any work (3), Ctrl-C in ``reproduce`` (4), clear errors for bad
files (6) and options (7)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from _cli_helpers import run, one_clean_line
from solvers.training import TrainConfig, load_training




def train(tmp, name, *extra, epochs=1):
    return run("train", "--dataset", "digits", "--epochs", epochs, "--hidden", 8, "--no-progress",
               "--out", tmp / f"{name}.npz", *extra)




# -- (1) dead networks ------------------------------------------------------------------------
def test_interval_training_ramps_eps_by_default():
    assert TrainConfig(interval_eps=0.1, epochs=6).resolved().interval_ramp == 2
    assert TrainConfig(interval_eps=0.1, epochs=2).resolved().interval_ramp == 1
    assert TrainConfig(interval_eps=0.1, epochs=6, interval_ramp=0).resolved().interval_ramp == 0
    assert TrainConfig(epochs=6).resolved().interval_ramp == 0


def test_a_collapsed_network_stops_with_exit_1_and_the_likely_cause(tmp_path):
    args = ("train", "--dataset", "mnist5k", "--epochs", 3, "--hidden", 20, "--train-samples", 2000,
            "--interval-eps", 0.1, "--diag-min", -1, "--no-progress")
    code, out, err = run(*args, "--interval-ramp", 0, "--out", tmp_path / "dead.npz")
    assert code == 1
    line = one_clean_line(err, "collapsed in epoch 1", "log 10", "chance", "--interval-ramp")
    assert "nothing was saved" in line
    assert not (tmp_path / "dead.npz").exists()
    code, out, err = run(*args, "--out", tmp_path / "ramped.npz")  # the default ramp: it trains
    assert code == 0, err
    _, history, _ = load_training(tmp_path / "ramped.npz")
    assert history.config.interval_ramp == 1 and history.epochs[-1]["val_acc"] > 0.3  # chance is 0.1
    # The epoch table shows each epoch's radius and certified validation accuracy, as recorded.
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.split()[:1] == ["epoch"]))
    assert lines[header - 1] == "val_cert: certified accuracy at the epoch's eps on the first 400 validation images"
    assert lines[header - 2].startswith("local_rate: the averaged solve's local rate, median over the first 100 ")
    assert lines[header].split()[:6] == ["epoch", "loss", "train_acc", "val_acc", "eps", "val_cert"]
    for line, record in zip(lines[header + 1 : header + 4], history.epochs):
        cells = [float(c) for c in line.split()]
        assert cells[0] == record["epoch"] and cells[4] == pytest.approx(record["eps"], abs=5e-4)
        assert cells[5] == pytest.approx(record["val_certified"], abs=5e-5)
    assert [r["eps"] for r in history.epochs] == [0.1, 0.1, 0.1]  # one ramp epoch: full after epoch 1


# -- (2) finished work is never overwritten ---------------------------------------------------
def test_epochs_zero_is_an_error(tmp_path):
    code, _, err = train(tmp_path, "z", epochs=0)
    assert code == 2 and "--epochs" in err and "positive integer" in err
    assert not (tmp_path / "z.npz").exists()


def test_an_existing_checkpoint_is_kept_unless_forced(tmp_path):
    assert train(tmp_path, "m")[0] == 0
    before = (tmp_path / "m.npz").read_bytes()
    code, out, err = train(tmp_path, "m", "--seed", 1)
    assert code == 2
    one_clean_line(err, str(tmp_path / "m.npz"), "exists", "--force", "--resume")
    assert "Training" not in out  # refused before any work
    assert (tmp_path / "m.npz").read_bytes() == before
    code, _, err = train(tmp_path, "m", "--seed", 1, "--force")
    assert code == 0, err
    assert (tmp_path / "m.npz").read_bytes() != before


def test_resume_writes_back_to_its_checkpoint_and_refuses_contradicting_options(tmp_path):
    assert train(tmp_path, "r")[0] == 0
    before = (tmp_path / "r.npz").read_bytes()
    code, _, err = run("train", "--resume", tmp_path / "r.npz", "--lr", 0.5, "--hidden", 10, "--constraint", "none",
                       "--epochs", 2, "--no-progress")
    assert code == 2
    one_clean_line(err, "--lr 0.5", "--hidden 10", "--constraint none", "--epochs")
    assert (tmp_path / "r.npz").read_bytes() == before
    code, _, err = run("train", "--resume", tmp_path / "r.npz", "--epochs", 2, "--hidden", 8, "--no-progress")
    assert code == 0, err  # the same value as the checkpoint's is no contradiction
    _, history, _ = load_training(tmp_path / "r.npz")  # written back where it came from
    assert [r["epoch"] for r in history.epochs] == [1, 2]
    code, out, err = run("train", "--resume", tmp_path / "r.npz", "--no-progress")
    assert code == 0 and "trained all of its 2 epochs" in out
    code, _, err = run("train", "--resume", tmp_path / "r.npz", "--epochs", 1, "--no-progress")
    assert code == 2 and "fewer than the 2 epochs" in err


# -- (3) outputs are checked before any work --------------------------------------------------
@pytest.mark.parametrize("command", ["train", "solve", "compare", "certify", "reproduce"])
def test_an_unwritable_output_fails_at_once_naming_the_path(tmp_path, command):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder should be")
    target = blocker / "sub" / "result"
    argv = {
        "train": ("train", "--dataset", "digits", "--epochs", 1, "--hidden", 8, "--out", target),
        "solve": ("solve", "--example", "random-nemon", "--n", 5, "--out", target),
        "compare": ("compare", "--n", 10, "--batch", 5, "--repeats", 1, "--out", target),
        "certify": ("certify", tmp_path / "missing.npz", "--out", target),
        "reproduce": ("reproduce", "--quick", "--out", target),
    }[command]
    code, out, err = run(*argv)
    assert code == 2
    one_clean_line(err, str(blocker / "sub"), "cannot write", f"{blocker} is a file, not a folder")
    assert out == ""  # nothing ran


def test_solve_out_creates_its_folder_and_reports_the_file_it_wrote(tmp_path):
    code, out, err = run("solve", "--example", "random-nemon", "--n", 5, "--out", tmp_path / "new" / "x")
    assert code == 0, err
    assert f"wrote {tmp_path / 'new' / 'x.npy'}" in out
    assert np.load(tmp_path / "new" / "x.npy").shape == (10, 5)
    code, _, err = run("solve", "--example", "random-nemon", "--n", 5, "--out", tmp_path / "new" / "x.npy")
    assert code == 2 and "--force" in err
    assert run("solve", "--example", "random-nemon", "--n", 5, "--out", tmp_path / "new" / "x.npy", "--force")[0] == 0


def test_a_figure_path_needs_a_known_image_format(tmp_path):
    code, _, err = run("compare", "--n", 10, "--batch", 5, "--repeats", 1, "--out", tmp_path / "f.xyz")
    assert code == 2
    one_clean_line(err, "f.xyz", "unknown image format", ".png")


# -- (4) Ctrl-C in reproduce ------------------------------------------------------------------
def test_ctrl_c_in_reproduce_exits_130_with_a_one_line_summary(tmp_path, monkeypatch):
    from solvers.training import _reproduce

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_reproduce, "robustness_table", interrupted)
    code, _, err = run("reproduce", "--dataset", "digits", "--models", "implicit mu_inf,implicit norm_inf",
                       "--epochs", 1, "--seeds", 1, "--samples", 50, "--out", tmp_path, "--workers", 0, "--no-progress")
    assert code == 130
    one_clean_line(err, "interrupted", "4 finished runs recorded in", "the same command again does the rest")
    assert len(list((tmp_path / "models").glob("*.npz"))) == 4  # every trained model is kept


# -- (5) slow work talks ----------------------------------------------------------------------
def test_check_gives_up_lben_after_its_time_limit_and_says_how_to_get_it(tmp_path):
    code, out, err = run("check", "--example", "random-nemon", "--n", 70, "--lben-time-limit", 1)
    assert code in (0, 1), err  # the exit status is the nemon conditions' verdict, as always
    assert "solving the LBEN semidefinite program for n=70 (up to 1 s)" in err
    row = next(line for line in out.splitlines() if line.startswith("lben"))
    assert "skip" in row
    assert "--lben-time-limit" in out and "--no-lben" in out


# -- (6) bad files ----------------------------------------------------------------------------
def _bad_files(tmp):
    np.save(tmp / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp / "complex.npy", np.eye(2) * (1 + 1j))
    (tmp / "empty.csv").write_text("")
    (tmp / "random.npy").write_bytes(os.urandom(256))
    np.savez(tmp / "archive.npz", A=np.eye(2))
    os.replace(tmp / "archive.npz", tmp / "renamed.npy")
    np.save(tmp / "binary.npy", np.eye(2))
    os.replace(tmp / "binary.npy", tmp / "binary.csv")
    return {"strings.npy": "holds text; expected real numbers", "complex.npy": "complex numbers",
            "empty.csv": "is empty", "random.npy": "expected a NumPy array saved with numpy.save, but it is not a .npy",
            "renamed.npy": "several arrays", "binary.csv": "expected comma-separated numbers"}


@pytest.mark.parametrize("name", ["strings.npy", "complex.npy", "empty.csv", "random.npy", "renamed.npy",
                                  "binary.csv"])
def test_bad_matrix_files_get_the_projects_own_message(tmp_path, name):
    expected = _bad_files(tmp_path)[name]
    code, _, err = run("check", tmp_path / name, "--no-lben")
    assert code == 2
    line = one_clean_line(err, str(tmp_path / name), expected)
    assert "allow_pickle" not in line and "Warning" not in line


# -- (7) options ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (("solve", "--example", "random-nemon", "--n", 5, "--max-iter", 0), "--max-iter"),
    (("solve", "--example", "random-nemon", "--n", 5, "--atol", 0), "--atol and --rtol"),
    (("compare", "--atol", 0), "--atol must be > 0"),
    (("train", "--interval-eps", 2), "--interval-eps"),
    (("train", "--lr", -1), "--lr"),
    (("train", "--batch-size", 0), "--batch-size"),
    (("attack", "m.npz", "--steps", 0), "--steps"),
])
def test_out_of_range_options_are_errors_naming_the_option(argv, needle):
    code, out, err = run(*argv)
    assert code == 2 and needle in err


def test_eps_above_one_is_an_error(tmp_path):
    assert train(tmp_path, "e")[0] == 0
    code, _, err = run("certify", tmp_path / "e.npz", "--eps", "0.1,2")
    assert code == 2
    one_clean_line(err, "--eps", "[0, 1]")


def test_help_shows_defaults_and_each_command_only_its_own_options():
    def help_of(*argv):
        code, out, _ = run(*argv, "--help")
        assert code == 0
        return out

    text = " ".join(help_of("train").split())
    for shown in ("(default: 0.003)", "(default: 100)", "(default: mu_inf)", "(default: 0.9)", "(default: cosine)"):
        assert shown in text
    assert "--steps" not in help_of("certify") and "--restarts" not in help_of("certify")
    assert "--steps" in help_of("attack") and "--restarts" in help_of("attack")


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path):
    code, _, err = run("train", "--dataset", "digits", "--epochs", 1, "--hidden", 8, "--out", tmp_path / "p.npz")
    assert code == 0, err
    assert "\r" not in err and "batch/s" not in err and "it/s" not in err


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert train(tmp_path, "u")[0] == 0
        assert run("solve", "--example", "random-nemon", "--n", 5, "--out", tmp_path / "x.npy")[0] == 0
    finally:
        os.umask(old)
    for name in ("u.npz", "x.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
