"""Per-unit steps against the single step α* of the averaged iteration, on a convolutional layer.

``alpha="per_unit"`` gives unit ``i`` (every pixel of output channel ``c``) the step
``1 / (1 − min(0, K[c,c,p,p]))`` instead of ``α* = 1 / (1 − min(0, min_c K[c,c,p,p]))``. This
benchmark times, in the same run, alternately, on the same problem (numba engine, float32,
``atol = 1e-4``):

- the forward solve ``x = relu(A ⋆ x + w)`` with each step;
- the adjoint solve ``λ = g + Aᵀ(λ ⊙ σ'(z))`` at that equilibrium with each step;
- with ``--checkpoint``, the interval bounds of the batch over the ε-box
  (``solvers.training.interval_bounds``, the embedded network's forward solve, as ``nemon
  certify`` runs it) with the network's ``SolverConfig.alpha`` set to each.

Without a checkpoint the layer is a random 16-channel 3 × 3 kernel on a 14 × 14 state whose
centre taps spread from −2 to 0, projected onto ``{μ∞ ≤ 0.9}``, with standard normal ``w``;
with one, the trained layer on the first ``--batch`` Fashion-MNIST test images. It prints the
mean iterations, the best of ``--repeats`` seconds of each and their ratios (α* / per-unit),
and both guaranteed factors.

Run from the repository root::

    python benchmarks/bench_steps.py                                  # a random layer
    python benchmarks/bench_steps.py --checkpoint out/conv_interval.npz   # a trained one
    python benchmarks/bench_steps.py --quick                          # 8 channels, batch 20
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

import contraction
import solvers
from solvers.engine import correlate
from solvers.training import interval_bounds, load, load_dataset


def best(f, repeats: int):
    """``(shortest seconds, last result)`` of ``repeats`` timed calls of ``f``."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return min(times), out


def random_layer(channels: int, batch: int, seed: int = 0):
    """``(Conv2d, W)``: a 3 × 3 kernel with centre taps from −2 to 0, μ∞ ≤ 0.9, and inputs."""
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)
    K[np.arange(channels), np.arange(channels), 1, 1] = np.linspace(-2.0, 0.0, channels)
    op = contraction.project_mu_inf(contraction.Conv2d(K, (14, 14)), 0.9)
    return op, rng.standard_normal((batch, op.n)).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=16, help="channels of the random layer")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5, help="best of this many runs of each")
    ap.add_argument("--checkpoint", help="a trained ConvImplicitNetwork (.npz) instead of a random layer")
    ap.add_argument("--eps", type=float, default=0.1, help="interval radius of the checkpoint's bounds (pixel units)")
    ap.add_argument("--quick", action="store_true", help="8 channels, batch 20, 3 repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.channels, args.batch, args.repeats = 8, 20, 3
    net = None
    if args.checkpoint:
        net = load(args.checkpoint)
        U = net.as_inputs(load_dataset("fashion-mnist")[2][: args.batch])
        op = net.state_operator()
        W = net.injected(U)
        source = f"{args.checkpoint} on {len(U)} test images"
    else:
        op, W = random_layer(args.channels, args.batch)
        source = f"random {args.channels}-channel 3x3 layer, 14x14, batch {args.batch}"
    steps = contraction.optimal_alpha(op, per_unit=True)
    print(f"{source}; numba threads {os.environ.get('NUMBA_NUM_THREADS', 'default')}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"alpha* = {contraction.optimal_alpha(op):.4g}, per-unit steps {steps.min():.4g} .. {steps.max():.4g}; "
          f"guaranteed factors {contraction.contraction_factor(op):.4g} (alpha*) and "
          f"{contraction.contraction_factor(op, steps):.4g} (per unit)")
    G = np.random.default_rng(1).standard_normal(W.shape).astype(W.dtype) * 1e-3
    kw = dict(atol=1e-4, check=False)
    for alpha in (None, "per_unit"):  # compile both variants before timing
        solvers.solve(op, W, alpha=alpha, max_iter=2, **kw)
    x = solvers.solve(op, W, **kw).x
    Z = np.empty_like(x)  # the pre-activations at the equilibrium, A ⋆ x + w
    correlate(np.ascontiguousarray(op.kernel, x.dtype), *op.image_shape, op.padding == "circular", x, Z)
    Z += W
    rows = {None: {}, "per_unit": {}}
    for _ in range(2):  # two rounds, alternating
        for alpha in (None, "per_unit"):
            t, r = best(lambda: solvers.solve(op, W, alpha=alpha, **kw), args.repeats)
            rows[alpha]["forward"] = (r.iterations.mean(), min(t, rows[alpha].get("forward", (0, np.inf))[1]))
            t, (_, ra) = best(lambda: solvers.solve_adjoint(op, Z, G, alpha=alpha, **kw), args.repeats)
            rows[alpha]["adjoint"] = (ra.iterations.mean(), min(t, rows[alpha].get("adjoint", (0, np.inf))[1]))
            if net is not None:
                net.solver = dataclasses.replace(net.solver, method="average", alpha=alpha)
                lo, hi = np.clip(U - args.eps, 0, 1), np.clip(U + args.eps, 0, 1)
                t, _ = best(lambda: interval_bounds(net, lo, hi), args.repeats)
                rows[alpha]["interval bounds"] = (float("nan"), min(t, rows[alpha].get("interval bounds", (0, np.inf))[1]))
    print(f"{'':16} {'alpha* iters':>12} {'ms':>9} {'per-unit iters':>15} {'ms':>9} {'ratio':>7}")
    for part in rows[None]:
        (i0, t0), (i1, t1) = rows[None][part], rows["per_unit"][part]
        i0, i1 = ("-", "-") if np.isnan(i0) else (f"{i0:.1f}", f"{i1:.1f}")
        print(f"{part:16} {i0:>12} {1e3 * t0:>9.1f} {i1:>15} {1e3 * t1:>9.1f} {t0 / t1:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
