"""``reproduce`` through the run machinery (issue 15): every model's settings chosen on
validation over seeds, only the chosen ones scored on the test set, mean ± std over seeds,
every finished run recorded at once so Ctrl-C loses at most the run under way and a rerun
does only the rest.

Runs are tiny and in this process (``workers=0``): the digits data set, one epoch, 40 test
samples, one radius. The Dask path is tested in tests/test_sweep.py and test_readme.py.
"""

from __future__ import annotations

import csv
import json
import signal

import numpy as np
import pytest

import solvers.training._reproduce as rp
from solvers.training import ReproduceInterrupted, load_training, reproduce

PLAIN, INTERVAL = "implicit mu_inf", "feed-forward ReLU + interval"
TINY = dict(quick=True, dataset="digits", epochs=1, eval_samples=40, eps=(0.05,), pgd_steps=2, engine="numba",
            workers=0)


def records(path):
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


@pytest.fixture
def trainings(monkeypatch):
    """The configs of the networks ``reproduce`` trains, in order (``train`` still runs)."""
    configs, real_train = [], rp.train

    def counting_train(net, X, y, config, **kwargs):
        configs.append(config)
        return real_train(net, X, y, config, **kwargs)

    monkeypatch.setattr(rp, "train", counting_train)
    return configs


def test_settings_are_chosen_on_validation_and_only_the_chosen_are_tested(tmp_path, trainings):
    rows, figures = reproduce(models=[PLAIN, INTERVAL], seeds=2, out_dir=tmp_path, **TINY)
    # Every candidate of every model, every seed: lr for the plain model, the interval weight
    # for the interval-trained one.
    assert sorted((c.lr, c.seed) for c in trainings if c.interval_eps == 0) == [
        (lr, s) for lr in rp.LR_GRID for s in (0, 1)]
    assert sorted((c.interval_weight, c.seed) for c in trainings if c.interval_eps > 0) == [
        (w, s) for w in rp.INTERVAL_WEIGHT_GRID for s in (0, 1)]
    runs = records(tmp_path)
    train = [r for r in runs if r["phase"] == "train"]
    test = [r for r in runs if r["phase"] == "test"]
    assert len(train) == len(trainings) == 10 and len(test) == 4
    assert all("accuracy" not in r["metrics"] for r in train)  # no test score decides anything
    for row in rows:
        spec = next(s for s in rp.model_specs() if s.name == row["model"])
        mine = [r for r in train if r["model"] == row["model"]]
        means = {}
        for r in mine:
            means.setdefault(json.dumps(r["params"], sort_keys=True), []).append(r["metrics"][spec.select])
        best = max(np.mean(v) for v in means.values())
        assert np.mean(means[json.dumps(row["chosen"], sort_keys=True)]) == best
        assert [c["params"] for c in row["candidates"]] == spec.candidates()
        # The test runs are those of the chosen setting's checkpoints, one per seed.
        chosen = {r["checkpoint"] for r in mine if r["params"] == row["chosen"]}
        assert {r["checkpoint"] for r in test if r["model"] == row["model"]} == chosen == set(row["checkpoints"])
        assert row["seeds"] == [0, 1]
        values = [r["metrics"]["accuracy"] for r in test if r["model"] == row["model"]]
        assert row["stats"]["accuracy"][0] == pytest.approx(np.mean(values))
        assert row["stats"]["accuracy"][1] == pytest.approx(np.std(values, ddof=1))
        for seed, path in zip(row["seeds"], row["checkpoints"]):
            _, history, metrics = load_training(path)
            assert history.config.seed == seed and metrics["reproduce"]["params"] == row["chosen"]
    assert rows[1]["chosen"]["interval_weight"] in rp.INTERVAL_WEIGHT_GRID
    with open(tmp_path / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["model"] for r in table] == [PLAIN, INTERVAL]
    assert float(table[0]["accuracy_mean"]) == rows[0]["stats"]["accuracy"][0]
    assert float(table[1]["pgd@0.05_std"]) == rows[1]["stats"]["pgd@0.05"][1]
    for r in test:  # sound certificates
        assert r["metrics"]["cert@0.05"] <= r["metrics"]["pgd@0.05"] <= r["metrics"]["accuracy"]
    assert [p.name for p in figures] == ["robustness.png", "iterations.png"]
    table_text = rp.format_reproduce_table(rows)
    assert "±" in table_text and "lr=" in table_text and "interval_weight=" in table_text


def test_ctrl_c_keeps_the_finished_runs_and_a_rerun_does_only_the_rest(tmp_path, monkeypatch):
    real_train, calls = rp.train, []

    def train(net, X, y, config, **kwargs):  # Ctrl-C in the third training, in its fourth batch
        calls.append(config)
        if len(calls) == 3:
            real_gradients, seen = net.compute_gradients, []

            def compute_gradients(*args, **kw):
                seen.append(None)
                if len(seen) == 4:
                    signal.raise_signal(signal.SIGINT)
                return real_gradients(*args, **kw)

            net.compute_gradients = compute_gradients
        return real_train(net, X, y, config, **kwargs)

    monkeypatch.setattr(rp, "train", train)
    handler = signal.getsignal(signal.SIGINT)  # Python's own, or SIG_IGN when started in the background
    with pytest.raises(ReproduceInterrupted) as info:
        reproduce(models=[PLAIN], seeds=2, out_dir=tmp_path, **TINY)
    assert isinstance(info.value, KeyboardInterrupt) and "\n" not in str(info.value)
    assert str(info.value) == (f"2 finished runs recorded in {tmp_path / 'results.jsonl'}; the same command again "
                               "does the rest")
    assert len(records(tmp_path)) == 2 and not (tmp_path / "results.csv").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # restored

    calls.clear()
    monkeypatch.setattr(rp, "train", real_train)
    rows, _ = reproduce(models=[PLAIN], seeds=2, out_dir=tmp_path, **TINY)
    runs = records(tmp_path)
    assert len(runs) == 4 + 2 and len({r["key"] for r in runs}) == 6  # the two left, then two tests
    # The same table as an uninterrupted run (in-process runs are deterministic).
    fresh, _ = reproduce(models=[PLAIN], seeds=2, out_dir=tmp_path / "fresh", **TINY)
    timings = ("train_s",)
    assert rows[0]["chosen"] == fresh[0]["chosen"]
    assert {k: v for k, v in rows[0]["values"].items() if k not in timings} == {
        k: v for k, v in fresh[0]["values"].items() if k not in timings}


def test_ctrl_c_while_testing_keeps_every_training(tmp_path, monkeypatch, trainings):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rp, "robustness_table", interrupted)
    with pytest.raises(ReproduceInterrupted):
        reproduce(models=[PLAIN], out_dir=tmp_path, **TINY)
    assert [r["phase"] for r in records(tmp_path)] == ["train", "train"]
    monkeypatch.undo()
    trainings.clear()
    rows, _ = reproduce(models=[PLAIN], out_dir=tmp_path, **TINY)
    assert trainings == [] and len(rows) == 1  # nothing trained again


def test_a_failed_run_is_reported_not_recorded_and_its_model_left_out(tmp_path, monkeypatch):
    real_train = rp.train

    def train(net, X, y, config, **kwargs):
        if config.interval_eps > 0:
            raise RuntimeError("collapsed")
        return real_train(net, X, y, config, **kwargs)

    monkeypatch.setattr(rp, "train", train)
    lines = []
    rows, _ = reproduce(models=[PLAIN, INTERVAL], out_dir=tmp_path, log=lines.append, **TINY)
    assert [r["model"] for r in rows] == [PLAIN]
    assert any("failed: RuntimeError: collapsed" in line for line in lines)
    assert any(f"{INTERVAL}: no candidate finished every seed" in line for line in lines)
    assert {r["model"] for r in records(tmp_path)} == {PLAIN}


def test_bad_arguments_and_a_foreign_results_file_are_refused(tmp_path):
    for models in ([PLAIN, "implicit mu_oo"], [PLAIN, PLAIN]):
        with pytest.raises(ValueError, match="models must be distinct names from"):
            reproduce(models=models, out_dir=tmp_path / "a", **TINY)
    for seeds in (0, 1.5, True):
        with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
            reproduce(models=[PLAIN], seeds=seeds, out_dir=tmp_path / "a", **TINY)
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        reproduce(models=[PLAIN], out_dir=tmp_path / "a", **{**TINY, "workers": -1})
    assert not (tmp_path / "a").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text('{"status": "finished", "rows": []}')
    with pytest.raises(ValueError, match="not from a run of this nemon") as info:
        reproduce(models=[PLAIN], out_dir=old, **TINY)
    assert "--out" in str(info.value)
    assert (old / "results.json").read_text() == '{"status": "finished", "rows": []}'


def test_an_infinite_bound_on_every_seed_prints_as_inf_without_a_warning(recwarn):
    """An unconstrained model's Lipschitz bound is infinite on every seed: its mean is inf with
    std 0 (numpy's inf − inf would warn and give NaN), and the table prints it alone."""
    assert rp._mean_std([np.inf, np.inf, np.inf]) == (np.inf, 0.0)
    assert rp._mean_std([0.5, 0.5]) == (0.5, 0.0)
    mean, std = rp._mean_std([0.1, 0.3])
    assert mean == pytest.approx(0.2) and std == pytest.approx(np.sqrt(0.02))
    assert np.isnan(rp._mean_std([1.0, np.inf])[1])
    columns = ["params", "val_accuracy", "accuracy", "mu_inf", "lipschitz_tight", "lipschitz_paper", "cert@0.1",
               "pgd@0.1", "forward_iterations_mean", "epochs", "train_s"]
    stats = {c: rp._mean_std([1.0, 2.0]) for c in columns}
    stats["lipschitz_tight"] = stats["lipschitz_paper"] = rp._mean_std([np.inf] * 2)
    table = rp.format_reproduce_table([{"model": "implicit none", "seeds": [0, 1], "stats": stats,
                                        "chosen": {"lr": 0.001}}])
    assert " inf " in table and "inf±" not in table and "nan" not in table and "1.5000±0.7071" in table
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
