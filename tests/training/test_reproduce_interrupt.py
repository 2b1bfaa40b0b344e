"""``reproduce`` under Ctrl-C: the whole run stops, the finished models' table and every
checkpoint are on disk, the interrupted model is never a finished row, and the results of a
previous run are never overwritten silently.

Ctrl-C is a real SIGINT raised inside a training batch (the trainer's own handler turns it
into ``history.interrupted``), or a ``KeyboardInterrupt`` raised from the evaluation step.
Runs are tiny: the digits data set, one or two epochs, 50 evaluated samples, one radius.
"""

from __future__ import annotations

import csv
import json
import signal

import pytest

import solvers.training._reproduce as rp
from solvers.training import ReproduceInterrupted, load_training, reproduce

FIRST, SECOND, THIRD = "implicit mu_inf", "implicit norm_inf", "feed-forward ReLU"
TINY = dict(quick=True, dataset="digits", eval_samples=50, eps=(0.05,), pgd_steps=2, engine="numba")


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def trained_models(monkeypatch):
    """The configs of the models ``reproduce`` trains, in order (``train`` still runs for real)."""
    configs, real_train = [], rp.train

    def counting_train(net, X, y, config, **kwargs):
        configs.append(config)
        return real_train(net, X, y, config, **kwargs)

    monkeypatch.setattr(rp, "train", counting_train)
    return configs


def interrupt_training(monkeypatch, call: int, batch: int, epoch: int):
    """Press Ctrl-C during batch ``batch`` of epoch ``epoch`` (0-based) of the ``call``-th
    training run, through the trainer's own SIGINT handler."""
    real_train, calls = rp.train, []

    def train(net, X, y, config, **kwargs):
        calls.append(config)
        if len(calls) == call:
            real_gradients, seen = net.compute_gradients, []
            n_batches = -(-len(X) // config.batch_size)

            def compute_gradients(*args, **kw):
                seen.append(None)
                if len(seen) == epoch * n_batches + batch + 1:
                    signal.raise_signal(signal.SIGINT)
                return real_gradients(*args, **kw)

            net.compute_gradients = compute_gradients
        return real_train(net, X, y, config, **kwargs)

    monkeypatch.setattr(rp, "train", train)
    return calls


def test_ctrl_c_in_training_stops_the_run_and_keeps_the_finished_table(tmp_path, monkeypatch):
    calls = interrupt_training(monkeypatch, call=2, batch=3, epoch=1)  # the second model, in its epoch 2
    with pytest.raises(ReproduceInterrupted) as info:
        reproduce(models=[FIRST, SECOND, THIRD], epochs=2, out_dir=tmp_path, **TINY)
    exc = info.value
    assert isinstance(exc, KeyboardInterrupt)
    assert len(calls) == 2, "a model after the interrupted one was trained"
    checkpoint = tmp_path / "models" / "implicit-norm_inf.npz"
    assert str(exc) == exc.summary
    assert "\n" not in exc.summary
    assert exc.summary.startswith(f"1 of 3 models finished: table in {tmp_path / 'results.csv'} and .json, "
                                  f"models in {tmp_path / 'models'}/; ")
    # 1,437 digits less the 10% validation split: 13 batches of 100
    assert f"'{SECOND}' interrupted in epoch 2 of 2 (batch 4 of 13), checkpoint {checkpoint}" in exc.summary
    assert exc.model == SECOND and exc.checkpoint == checkpoint and exc.results == tmp_path / "results.json"
    assert [r["model"] for r in exc.rows] == [FIRST]

    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["status"] == "interrupted"
    assert [r["model"] for r in doc["rows"]] == [FIRST]
    assert doc["unfinished"]["model"] == SECOND and doc["unfinished"]["checkpoint"] == str(checkpoint)
    assert (doc["unfinished"]["epoch"], doc["unfinished"]["batch"]) == (1, 4)
    assert [r["model"] for r in read_csv(tmp_path / "results.csv")] == [FIRST]

    net, history, metrics = load_training(checkpoint)  # resumable: the state where it stopped
    assert history.interrupted
    assert (history.state.epoch, history.state.batch, len(history.epochs)) == (1, 4, 1)
    assert metrics["reproduce"]["status"] == "interrupted" and metrics["dataset"] == "digits"
    assert not (tmp_path / "models" / "feed-forward-relu.npz").exists()
    assert not (tmp_path / "robustness.png").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_rows_report_the_epochs_trained(tmp_path, monkeypatch):
    interrupt_training(monkeypatch, call=2, batch=0, epoch=0)
    with pytest.raises(ReproduceInterrupted):
        reproduce(models=[FIRST, SECOND], epochs=2, out_dir=tmp_path, **TINY)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    for row in rows:
        _, history, _ = load_training(row["checkpoint"])
        assert row["epochs"] == len(history.epochs) == history.state.epoch == 2
    assert [int(r["epochs"]) for r in read_csv(tmp_path / "results.csv")] == [2]
    _, history, _ = load_training(tmp_path / "models" / "implicit-norm_inf.npz")
    assert len(history.epochs) == 0 and history.interrupted


def test_ctrl_c_during_evaluation_keeps_the_trained_checkpoint(tmp_path, monkeypatch, trained_models):
    real_table, calls = rp.robustness_table, []

    def robustness_table(*args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_table(*args, **kwargs)

    monkeypatch.setattr(rp, "robustness_table", robustness_table)
    with pytest.raises(ReproduceInterrupted) as info:
        reproduce(models=[FIRST, SECOND, THIRD], epochs=1, out_dir=tmp_path, **TINY)
    checkpoint = tmp_path / "models" / "implicit-norm_inf.npz"
    assert len(trained_models) == 2
    assert info.value.summary.startswith("1 of 3 models finished: table in ")
    assert (f"'{SECOND}' trained (1 epochs) but interrupted while certifying and attacking, checkpoint {checkpoint}"
            in info.value.summary)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in doc["rows"]] == [FIRST] and doc["unfinished"]["model"] == SECOND
    _, history, metrics = load_training(checkpoint)
    assert not history.interrupted and len(history.epochs) == 1
    assert metrics["reproduce"]["status"] == "trained"


def test_ctrl_c_before_any_model_saves_nothing(tmp_path, monkeypatch):
    def load_dataset(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rp, "load_dataset", load_dataset)
    with pytest.raises(ReproduceInterrupted) as info:
        reproduce(models=[FIRST, SECOND], epochs=1, out_dir=tmp_path, **TINY)
    assert str(info.value) == "0 of 2 models finished: nothing saved; interrupted while loading the data set"
    assert info.value.results is None and info.value.checkpoint is None
    assert list(tmp_path.iterdir()) == []


def test_results_are_written_as_each_model_finishes(tmp_path, monkeypatch):
    real_train, seen = rp.train, []

    def train(net, X, y, config, **kwargs):
        results = tmp_path / "results.json"
        seen.append(json.loads(results.read_text()) if results.exists() else None)
        return real_train(net, X, y, config, **kwargs)

    monkeypatch.setattr(rp, "train", train)
    rows, figures = reproduce(models=[FIRST, SECOND], epochs=1, out_dir=tmp_path, **TINY)
    assert seen[0] is None
    assert seen[1]["status"] == "running" and [r["model"] for r in seen[1]["rows"]] == [FIRST]
    assert seen[1]["rows"][0]["checkpoint"] == str(tmp_path / "models" / "implicit-mu_inf.npz")
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["status"] == "finished" and doc["unfinished"] is None
    assert [r["model"] for r in doc["rows"]] == [r["model"] for r in rows] == [FIRST, SECOND]
    assert doc["rows"][0]["accuracy"] == rows[0]["accuracy"]
    table = read_csv(tmp_path / "results.csv")
    assert [r["model"] for r in table] == [FIRST, SECOND]
    assert {"params", "accuracy", "mu_inf", "lipschitz_tight", "cert@0.05", "pgd@0.05", "forward_iterations_mean",
            "epochs", "train_s"} <= set(table[0])
    assert float(table[1]["pgd@0.05"]) == rows[1]["robust"][0]["pgd"]
    for row in rows:
        _, history, metrics = load_training(row["checkpoint"])
        assert metrics["reproduce"]["status"] == "finished" and metrics["accuracy"] == row["accuracy"]
    assert [p.name for p in figures] == ["robustness.png", "iterations.png"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


def test_refuses_to_overwrite_a_previous_run(tmp_path, monkeypatch):
    previous = tmp_path / "results.json"
    previous.write_text('{"status": "finished", "rows": []}')
    with pytest.raises(ValueError, match="results.json exists from a previous run") as info:
        reproduce(models=[FIRST], epochs=1, out_dir=tmp_path, **TINY)
    assert str(previous) in str(info.value) and "--out" in str(info.value) and "force=True" in str(info.value)

    def load_dataset(*args, **kwargs):  # force=True gets past the check: stop right after it
        raise KeyboardInterrupt

    monkeypatch.setattr(rp, "load_dataset", load_dataset)
    with pytest.raises(ReproduceInterrupted):
        reproduce(models=[FIRST], epochs=1, out_dir=tmp_path, force=True, **TINY)
    assert previous.read_text() == '{"status": "finished", "rows": []}'


def test_unknown_or_repeated_model_names_are_refused(tmp_path):
    for models in ([FIRST, "implicit mu_oo"], [FIRST, FIRST]):
        with pytest.raises(ValueError, match="models must be distinct names from"):
            reproduce(models=models, out_dir=tmp_path, **TINY)
    assert list(tmp_path.iterdir()) == []
