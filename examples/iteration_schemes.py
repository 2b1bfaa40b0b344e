"""Iteration schemes compared: how fast does each method solve ``x = σ(Ax + w)``?

Every method of DESIGN.md section 4 runs at its optimal step on one random well-posed
network from a built-in family, for a batch of inputs, to the same ℓ∞ residual tolerance.
The table sets the observed rate per iteration (the geometric mean of the residual ratio)
against the guaranteed worst-case contraction factor, and the figure draws the residual
against iterations and against wall time. On ``negative-diagonal`` the diagonal goes down to
about −5, so ``α* = 1/(1 − a_min)`` is small, ``picard`` (α = 1) is outside its guarantee,
and the splittings and Anderson pull ahead; on ``random-nemon`` every step is close to 1.

Run::

    python examples/iteration_schemes.py --family negative-diagonal --out out/iteration_schemes.png

On a shared or busy machine the parallel numba kernels and the threaded BLAS wait on each
other at every step; for wall times that mean something there, run with
``NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import contraction
from solvers import ACTIVATIONS, ENGINES
from solvers.cli import positive_int
from solvers.compare import FAMILIES, compare_methods, format_table, instance, plot_comparison


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="negative-diagonal",
                        help="built-in random family (default negative-diagonal)")
    parser.add_argument("--n", type=positive_int, default=100, help="network size (default 100)")
    parser.add_argument("--batch", type=positive_int, default=100, help="number of inputs (default 100)")
    parser.add_argument("--activation", choices=list(ACTIVATIONS), default="relu", help="activation (default relu)")
    parser.add_argument("--atol", type=float, default=1e-8, help="residual tolerance (default 1e-8)")
    parser.add_argument("--max-iter", type=positive_int, default=5000, help="iteration limit (default 5000)")
    parser.add_argument("--engine", choices=ENGINES, default="numba", help="solver engine (default numba)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed solves per method (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the matrix and inputs (default 0)")
    parser.add_argument("--out", type=Path, default=Path("out/iteration_schemes.png"), help="figure path")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    A, W = instance(args.family, n=args.n, batch=args.batch, seed=args.seed)
    mu = contraction.mu_inf(A)
    a_min = float(A.diagonal().min())
    print(f"{args.family}: n = {A.shape[0]}, batch = {W.shape[0]}, activation {args.activation}, "
          f"mu_inf(A) = {mu:.4g}, min a_ii = {a_min:.4g}, atol = {args.atol:.0e}, engine {args.engine}")
    print()
    rows = compare_methods(A, W, activation=args.activation, atol=args.atol, max_iter=args.max_iter,
                           engine=args.engine, repeats=args.repeats)
    print(format_table(rows))
    print()
    print("rate = (r_K / r_0)^(1/K) of the batch-max residual; factor = worst-case l-inf contraction "
          "factor of one step (< 1 contracts); time = median over repeats, compilation excluded")
    for r in rows:
        if r.note:
            print(f"  {r.method}: {r.note}")
    title = (f"Iteration schemes on {args.family} (n = {A.shape[0]}, batch = {W.shape[0]}, {args.activation}, "
             rf"$\mu_\infty(A)$ = {mu:.3g}, min $a_{{ii}}$ = {a_min:.3g}), {args.engine} engine")
    path = plot_comparison(rows, args.out, title)
    print()
    print(f"elapsed {time.perf_counter() - start:.1f} s")
    print(f"figure written to {path}")
    return 0


if __name__ == "__main__":
    main()
