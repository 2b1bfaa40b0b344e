"""Sweep benchmark (issue 15): 8 trainings on digits with two local Dask workers against the same
8 one after another in one process.

The 8 runs are ``nemon train --dataset digits --hidden 100 --epochs E`` with seeds 0-7 (a
``[grid] seed`` spec), each scored on its validation split as ``nemon sweep`` does
(:func:`solvers.sweep.run_one`). First one run in this process fills the numba cache (the
workers share it, so neither side compiles in the timed part). Then, alternately for
``--repeats`` rounds:

* *one process*: the 8 runs called in a loop in this process (numba's default threads);
* *sweep*: :func:`solvers.sweep.sweep` of the spec into a fresh folder with ``workers=2`` -- a
  LocalCluster of two single-threaded processes, its start and stop included.

Printed: both wall times (median), their ratio (target >= 1.7 on a 2-core machine), and the
scheduling overhead per run, ``(2 · sweep wall − Σ run seconds) / 8``: the time the two workers
were not computing (cluster start, transfers, the summary), per run.

Run (from the repository root)::

    python benchmarks/bench_sweep.py
    python benchmarks/bench_sweep.py --epochs 4 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE.parent, _HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_train import load_average  # noqa: E402
from solvers.cli import positive_int  # noqa: E402

RUNS = 8
WORKERS = 2


def spec_text(epochs: int) -> str:
    seeds = ", ".join(str(s) for s in range(RUNS))
    return f'[base]\ndataset = "digits"\nhidden = 100\nepochs = {epochs}\n\n[grid]\nseed = [{seeds}]\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=200, help="epochs per run (default 200: about 4 s a run on one core)")
    p.add_argument("--repeats", type=positive_int, default=3, help="alternating rounds (default 3)")
    args = p.parse_args(argv)
    from solvers import sweep as sw

    print(f"at the start: {load_average()}")
    work = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    spec = work / "spec.toml"
    spec.write_text(spec_text(args.epochs))
    configs = [sw.full_config(r) for r in sw.expand(sw.load_spec(spec))]
    sw.run_one(configs[0], str(work / "warm.npz"))  # compile once; the workers share the cache
    serial, parallel, overhead = [], [], []
    for round_ in range(args.repeats):
        t0 = time.perf_counter()
        for i, c in enumerate(configs):
            sw.run_one(c, str(work / f"serial{round_}-{i}.npz"))
        serial.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = sw.sweep(spec, work / f"sweep{round_}", workers=WORKERS, log=lambda line: None)
        wall = time.perf_counter() - t0
        parallel.append(wall)
        busy = sum(r["seconds"] for r in result.records)
        overhead.append((WORKERS * wall - busy) / RUNS)
        print(f"round {round_ + 1}: one process {serial[-1]:.2f} s, sweep on {WORKERS} workers {wall:.2f} s "
              f"(runs {busy:.2f} s of worker time), overhead {overhead[-1]:.2f} s per run", flush=True)
    s, q = statistics.median(serial), statistics.median(parallel)
    print(f"\n{RUNS} runs, digits, hidden 100, {args.epochs} epochs; medians of {args.repeats}:")
    print(f"  one process            {s:8.2f} s")
    print(f"  sweep, {WORKERS} workers        {q:8.2f} s")
    print(f"  one process / sweep    {s / q:8.2f}   (target >= 1.7: {'PASS' if s / q >= 1.7 else 'FAIL'})")
    print(f"  scheduling overhead    {statistics.median(overhead):8.2f} s per run (cluster start and stop included)")
    print(f"at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
