"""First-run cost: each entry point timed in a fresh process, with an empty numba cache and again
with the cache that first run left.

Entry points (each in its own new process, ``NUMBA_CACHE_DIR`` set to a new empty folder):

- ``solve <method>``: ``import solvers`` and one ``solvers.solve`` of a 50 × 50 float64 problem
  (``‖A‖∞ = 0.8``, a batch of 8, ReLU) with that method; the in-process time of the solve call is printed
  beside the wall time of the whole process;
- ``solve (batch 100)``: the same with a batch of 100, which the engine splits over threads;
- ``train``: ``nemon train --epochs 1 --no-progress`` (mnist5k, the main job's defaults);
- ``certify``: ``nemon certify`` of a checkpoint trained beforehand (with its own cache), on
  200 test images at ε = 0.01, 0.05.

Each row: cold (empty cache) and warm (the cache the cold run filled) wall seconds, and their
ratio. Run from the repository root::

    python benchmarks/bench_compile.py            # every entry point
    python benchmarks/bench_compile.py --only solve
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("picard", "average", "forward_backward", "peaceman_rachford", "douglas_rachford", "anderson")

_SOLVE = """
import time
t0 = time.perf_counter()
import numpy as np
import solvers
t1 = time.perf_counter()
rng = np.random.default_rng(0)
n = 50
A = rng.standard_normal((n, n))
A *= 0.8 / np.abs(A).sum(axis=1).max()  # ||A||_inf = 0.8: every method is guaranteed
W = rng.standard_normal(({batch}, n))
r = solvers.solve(A, W, method={method!r}, check=False)
t2 = time.perf_counter()
assert r.success, r
print(f"IMPORT {{t1 - t0:.3f}} SOLVE {{t2 - t1:.3f}}")
"""


def _run(cmd, cache: Path, env_extra=None) -> tuple[float, str]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), **(env_extra or {}))
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout + proc.stderr


def _nemon(*args) -> list:
    return [sys.executable, "-m", "solvers.cli", *map(str, args)]


def _entry_points(only, work: Path):
    rows = []
    if only in (None, "solve"):
        for method in METHODS:
            rows.append((f"solve {method}", [sys.executable, "-c", _SOLVE.format(method=method, batch=8)]))
        rows.append(("solve average (batch 100)", [sys.executable, "-c", _SOLVE.format(method="average", batch=100)]))
    if only in (None, "train"):
        # --force: the warm run overwrites the cold run's throwaway checkpoint (nemon train refuses
        # an existing one unasked)
        rows.append(("train --epochs 1", _nemon("train", "--epochs", 1, "--no-progress", "--out", work / "t.npz",
                                                "--figure", work / "t.png", "--force")))
    if only in (None, "certify"):
        model = work / "model.npz"
        _run(_nemon("train", "--epochs", 1, "--no-progress", "--out", model, "--figure", work / "m.png"),
             work / "cache-model")
        rows.append(("certify", _nemon("certify", model, "--eps", "0.01,0.05", "--samples", 200,
                                       "--out", work / "c.png")))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("solve", "train", "certify"), help="time one group of entry points")
    args = p.parse_args(argv)
    print(__doc__.splitlines()[0])
    print(f"python {platform.python_version()}, {platform.machine()}, os.cpu_count() = {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-compile-") as tmp:
        work = Path(tmp)
        header = f"{'entry point':<28} {'cold s':>8} {'warm s':>8} {'cold/warm':>10}   in-process (cold)"
        print(header)
        print("-" * len(header))
        for i, (name, cmd) in enumerate(_entry_points(args.only, work)):
            cache = work / f"cache-{i}"
            cold, out = _run(cmd, cache)
            warm, _ = _run(cmd, cache)
            detail = ""
            for line in out.splitlines():
                if line.startswith("IMPORT"):
                    _, imp, _, solve = line.split()
                    detail = f"import {float(imp):.2f} s, first solve {float(solve):.2f} s"
            print(f"{name:<28} {cold:>8.2f} {warm:>8.2f} {cold / warm:>10.1f}   {detail}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
