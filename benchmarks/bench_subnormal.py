"""What subnormal numbers cost an averaged iteration, and what the engine's flush saves.

A switched-off ReLU unit decays as ``(1 − α)^k`` under the averaged step ``x ← x + α(σ(Ax + w) − x)``;
at ``α = 0.75`` a float32 entry is subnormal (below 1.2e-38) after 60-odd iterations, and CPU
arithmetic that touches subnormal numbers is many times slower. The engines set an averaged
iterate's entry below ``kernels.FLUSH`` (1e-30) to 0. This benchmark runs the same iteration in
plain numpy, float32, for a fixed number of steps, with and without that flush (the baseline, in
the same run), and prints the time per step of each, their ratio, and the share of subnormal
entries the plain loop ends with; then the engine's ``solvers.solve`` of the same problem.

The problem: a dense ``A`` (n × n) with ``μ∞(A) ≤ 0.9`` and diagonal −1/3 (so ``α* = 0.75``),
and inputs ``w`` negative on half of the units, which therefore switch off and decay. Run from
the repository root::

    python benchmarks/bench_subnormal.py                # n = 1000, batch 100, 100 steps
    python benchmarks/bench_subnormal.py --quick        # n = 300, batch 50, 100 steps
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import contraction
import solvers
from solvers._engines.kernels import FLUSH


def problem(n: int, batch: int, seed: int = 0):
    """``(A, W)``, float32: diagonal −1/3 (α* = 0.75), μ∞(A) ≤ 0.9, and half of the units
    driven off (``w ≤ −19``, more than the other units can lift them)."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, n)) / np.sqrt(n)
    np.fill_diagonal(G, 0.0)
    A = G * ((0.9 + 1.0 / 3.0) / np.abs(G).sum(axis=1, keepdims=True))  # off-diagonal row sums 0.9 + 1/3
    np.fill_diagonal(A, -1.0 / 3.0)
    W = rng.uniform(0.0, 1.0, (batch, n))
    W[:, n // 2 :] -= 20.0  # these units stay off: their iterates decay as (1 − α)^k
    return A.astype(np.float32), W.astype(np.float32)


def plain_loop(A, W, alpha: float, steps: int, flush: bool):
    """``steps`` averaged steps from ``x = 1`` in numpy; returns (seconds, last iterate)."""
    X = np.ones_like(W)
    AT = np.ascontiguousarray(A.T)
    a = np.float32(alpha)
    t0 = time.perf_counter()
    for _ in range(steps):
        T = np.maximum(X @ AT + W, 0)
        X += a * (T - X)
        if flush:
            X[np.abs(X) < FLUSH] = 0
    return time.perf_counter() - t0, X


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs of each loop")
    ap.add_argument("--quick", action="store_true", help="n = 300, batch 50")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.batch = 300, 50
    A, W = problem(args.n, args.batch)
    alpha = contraction.optimal_alpha(A.astype(np.float64))
    tiny = np.finfo(np.float32).tiny
    print(f"n = {args.n}, batch {args.batch}, {args.steps} averaged steps from x = 1, float32, "
          f"alpha* = {alpha:.3f}, mu_inf(A) = {contraction.mu_inf(A.astype(np.float64)):.3f}")
    rows = {}
    for flush in (False, True):
        rows[flush] = min(plain_loop(A, W, alpha, args.steps, flush)[0] for _ in range(args.repeats))
        print(f"  plain numpy loop, {'with   ' if flush else 'without'} the flush: "
              f"{1e3 * rows[flush] / args.steps:8.3f} ms a step")
    first = int(np.ceil(np.log(tiny) / np.log(1.0 - alpha)))
    print(f"  ratio without / with the flush: {rows[False] / rows[True]:.2f} (without it, the off units are "
          f"subnormal from step {first} until they underflow to 0)")
    kw = dict(method="average", atol=0.0, max_iter=args.steps, activation="relu", engine="numba", check=False,
              x0=np.ones_like(W))
    solvers.solve(A, W, **kw)  # compile
    dt = min(_timed(lambda: solvers.solve(A, W, **kw)) for _ in range(args.repeats))
    print(f"  solvers.solve (numba, average, the same {args.steps} steps from x = 1): "
          f"{1e3 * dt / args.steps:8.3f} ms a step")
    return 0


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
