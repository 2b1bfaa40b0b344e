"""``nemon sweep`` (issue 15): the spec's checks, and sweeps on a real Dask scheduler with two
workers on 127.0.0.1 -- a sweep completes, a rerun recomputes nothing, a killed worker's run is
retried on the other worker and recorded once.

The scheduler is the one ``.ci/run`` starts (``NEMON_DASK_SCHEDULER``) when set, else one this
module starts and stops; the killed-worker test always starts its own (it kills a worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from _cli_helpers import one_clean_line, run
from solvers import sweep as sw

SPEC = """
eps = [0.05]

[base]
dataset = "digits"
epochs = 1
hidden = 12

[grid]
gamma = [0.5, 0.9]
seed = [0, 1]
"""


def write(tmp_path, text, name="spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- the spec -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, needle", [
    ("[base]\nout = 'x'", "[base] out is not a nemon train option (the sweep sets it)"),
    ("[base]\nwidth = 3", "[base] width is not a nemon train option"),
    ("[grid]\ngamma = 0.5", "[grid] gamma must be a non-empty list"),
    ("[grid]\ngamma = []", "[grid] gamma must be a non-empty list"),
    ("[grid]\nseed = [1, 1]", "[grid] seed lists a value twice"),
    ("[base]\nseed = 1\n[grid]\nseed = [2]", "seed is in both [base] and [grid]"),
    ("[grid]\ngamma = [0.5, 'high']", "run gamma=high: argument --gamma: expected"),
    ("[grid]\nepochs = [1, 0]", "run epochs=0: argument --epochs: expected a positive integer, got 0"),
    ("eps = [2]", "eps must be a list of radii in [0, 1]"),
    ("[model]\nx = 1", "unknown top-level keys ['model']"),
    ("[base\n", "not valid TOML"),
    ("[base]\ndataset = 'function'", "dataset 'function' is a regression"),
])
def test_bad_specs_are_refused_naming_the_file_and_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(sw.SweepError) as info:
        sw.load_spec(path)
    assert str(path) in str(info.value) and needle in str(info.value)
    code, _, err = run("sweep", path, "--out", tmp_path / "out")
    assert code == 2 and needle in one_clean_line(err)


def test_the_grid_expands_to_every_combination_with_stable_keys(tmp_path):
    spec = sw.load_spec(write(tmp_path, SPEC))
    runs = sw.expand(spec)
    assert [(r["gamma"], r["seed"]) for r in runs] == [(0.5, 0), (0.5, 1), (0.9, 0), (0.9, 1)]
    assert all(r["dataset"] == "digits" and r["epochs"] == 1 for r in runs)
    configs = [sw.full_config(r) for r in runs]
    assert configs[0]["lr"] == 0.003 and configs[0]["val_fraction"] == 0.1  # nemon train's defaults filled in
    keys = [sw.config_key(c) for c in configs]
    assert len(set(keys)) == 4 and keys == [sw.config_key(sw.full_config(r)) for r in runs]


def test_a_torn_last_line_is_ignored_and_other_damage_named(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a", "config": {}}\n{"key": "b", "con')
    assert list(sw.read_results(path)) == ["a"]
    path.write_text('not json\n{"key": "a"}\n')
    with pytest.raises(sw.SweepError, match="line 1: not a run record"):
        sw.read_results(path)


def test_workers_0_runs_the_sweep_in_this_process(tmp_path):
    spec = write(tmp_path, SPEC.replace("seed = [0, 1]", "seed = [0]"))
    code, stdout, err = run("sweep", spec, "--out", tmp_path / "out", "--workers", 0, "--no-progress")
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {r["worker"] for r in records} == {f"{os.uname().nodename}:{os.getpid()}"}
    assert "chosen on validation accuracy" in stdout
    for r in records:  # each run's epoch table, beside its checkpoint, as nemon train prints it
        lines = Path(r["checkpoint"]).with_suffix(".log").read_text().splitlines()
        assert json.loads(lines[0]) == r["config"] and lines[1].split()[:3] == ["epoch", "loss", "train_acc"]
        assert lines[2].split()[0] == "1" and len(lines) == 4
        assert lines[3].startswith(f"validation accuracy {r['metrics']['val_accuracy']:.4f} (")
    code, _, err = run("sweep", spec, "--out", tmp_path / "out", "--workers", 0, "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and "--workers sizes the local cluster" in err


# -- a real cluster -------------------------------------------------------------------------------
def _start_cluster(workers: int):
    """A scheduler and ``workers`` single-threaded workers (no nanny: a killed worker stays
    dead) on 127.0.0.1; returns (address, processes)."""
    folder = tempfile.mkdtemp(prefix="nemon-dask-")
    file = os.path.join(folder, "scheduler.json")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--dashboard-address", ":0", "--scheduler-file", file],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.time() + 60
    while not os.path.exists(file):
        if time.time() > deadline:
            _stop(procs)
            raise RuntimeError("the Dask scheduler did not start within 60 s")
        time.sleep(0.1)
    time.sleep(0.2)
    address = json.loads(Path(file).read_text())["address"]
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    for _ in range(workers):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                       "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    from dask.distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def _stop(procs):
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def scheduler():
    if os.environ.get("NEMON_DASK_SCHEDULER"):
        yield os.environ["NEMON_DASK_SCHEDULER"]
        return
    address, procs = _start_cluster(2)
    try:
        yield address
    finally:
        _stop(procs)


def test_a_sweep_completes_on_the_cluster_and_a_rerun_recomputes_nothing(tmp_path, scheduler):
    spec = write(tmp_path, SPEC)
    out = tmp_path / "out"
    code, stdout, err = run("sweep", spec, "--out", out, "--scheduler", scheduler, "--no-progress")
    assert code == 0, err
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4
    assert sorted((r["config"]["gamma"], r["config"]["seed"]) for r in records) == [(0.5, 0), (0.5, 1), (0.9, 0),
                                                                                    (0.9, 1)]
    for r in records:
        assert 0.0 <= r["metrics"]["val_accuracy"] <= 1.0 and r["metrics"]["val_samples"] == 142
        assert 0.0 <= r["metrics"]["val_certified@0.05"] <= r["metrics"]["val_pgd@0.05"] + 1e-12
        assert Path(r["checkpoint"]).is_file() and r["seconds"] > 0 and "numpy" in r["versions"]
        assert r["key"] == sw.config_key(r["config"])
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and sum(",yes," in row for row in summary) == 1
    assert "chosen on validation accuracy" in stdout and (out / "summary.png").is_file()
    before = (out / "results.jsonl").read_bytes()
    code, stdout, err = run("sweep", spec, "--out", out, "--scheduler", scheduler, "--no-progress")
    assert code == 0, err
    assert "(4 already in" in stdout and "0 to run" in stdout
    assert (out / "results.jsonl").read_bytes() == before
    # One more seed: only its two runs are new.
    write(tmp_path, SPEC.replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    code, stdout, err = run("sweep", spec, "--out", out, "--scheduler", scheduler, "--no-progress")
    assert code == 0 and "(4 already in" in stdout and "2 to run" in stdout, err
    assert len((out / "results.jsonl").read_text().splitlines()) == 6


def test_reproduce_runs_on_the_cluster_and_a_rerun_recomputes_nothing(tmp_path, scheduler):
    argv = ("reproduce", "--quick", "--dataset", "digits", "--models", "implicit mu_inf", "--epochs", 1, "--samples",
            30, "--eps", 0.05, "--seeds", 2, "--out", tmp_path, "--scheduler", scheduler, "--no-progress")
    code, stdout, err = run(*argv)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["phase"] for r in records) == ["test"] * 2 + ["train"] * 4  # 2 learning rates x 2 seeds
    assert all(r["worker"] != f"{os.uname().nodename}:{os.getpid()}" for r in records)  # on the workers
    assert "implicit mu_inf  " in stdout and "±" in stdout
    before = (tmp_path / "results.jsonl").read_bytes()
    code, stdout, err = run(*argv)
    assert code == 0 and "(4 already in" in stdout, err
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_a_killed_workers_run_is_retried_on_the_other_and_recorded_once(tmp_path):
    from dask.distributed import Client

    spec = write(tmp_path, SPEC.replace("epochs = 1", "epochs = 40").replace("gamma = [0.5, 0.9]", "gamma = [0.5]")
                 .replace("seed = [0, 1]", "seed = [0]"))
    address, procs = _start_cluster(2)
    try:
        with Client(address) as client:
            pids = client.run(os.getpid)  # worker address -> pid
            result = {}
            thread = threading.Thread(target=lambda: result.update(
                outcome=sw.sweep(spec, tmp_path / "out", scheduler=address)))
            thread.start()
            victim = None
            deadline = time.time() + 120
            while victim is None and time.time() < deadline and thread.is_alive():
                busy = [w for w, keys in client.processing().items() if keys]
                victim = busy[0] if busy else None
                time.sleep(0.05)
            assert victim is not None, "the run never started"
            killed = next(p for p in procs if p.pid == pids[victim])
            killed.kill()
            killed.wait()
            thread.join(timeout=300)
        outcome = result["outcome"]
        assert not outcome.failed and len(outcome.records) == 1
        records = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
        assert len(records) == 1
        assert json.loads(records[0])["worker"].endswith(f":{[p for w, p in pids.items() if w != victim][0]}")
    finally:
        _stop(procs)


def test_a_failed_run_is_reported_and_its_log_says_why(tmp_path):
    (tmp_path / "empty").mkdir()
    spec = write(tmp_path, f'[base]\ndataset = "mnist"\ndata_dir = "{tmp_path / "empty"}"\nepochs = 1\n\n'
                           '[grid]\nseed = [0]\n')
    code, stdout, err = run("sweep", spec, "--out", tmp_path / "out", "--workers", 0, "--no-progress")
    logs = list((tmp_path / "out" / "runs").glob("*.log"))
    assert len(logs) == 1 and not (tmp_path / "out" / "results.jsonl").exists()
    assert "wrote " + str(tmp_path / "out" / "results.jsonl") not in stdout  # nothing recorded, none claimed
    reason = logs[0].read_text().splitlines()[-1]
    assert reason.startswith("failed: ") and "empty" in reason, reason
    assert code == 1 and "1 run failed (not recorded; a rerun tries it again):" in err
    assert reason[len("failed: "):] in err


def test_two_local_clusters_run_side_by_side():
    """A second sweep on the same machine starts its own cluster beside the first (Dask's default
    HTTP port 8787 would be taken: a warning, an error under this suite's filter)."""
    from solvers.training._runner import _client

    with _client(None, 1) as first, _client(None, 1) as second:
        ports = {c.cluster.scheduler.http_server.port for c in (first, second)}
        assert len(ports) == 2 and 8787 not in ports
        assert first.submit(abs, -2).result() == 2 and second.submit(abs, -3).result() == 3
