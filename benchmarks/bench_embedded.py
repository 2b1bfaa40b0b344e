"""The interval (embedded) network of a convolutional layer: split products against full ones.

Interval bounds solve the embedded network, whose state is ``[x_hi, x_lo]`` (2C channels) and
whose kernel is ``[[M, N], [N, M]]`` (``N`` the negative taps of ``A`` other than the centre
taps, ``M = A − N``). The numba engine applies it as two C-channel passes on the sum and the
difference of the halves, ``(M + N)/2 ⋆ (x_hi + x_lo) ± (M − N)/2 ⋆ (x_hi − x_lo)``, half the
multiply-adds of one 2C-channel pass; the kernel gradient is folded the same way. This
benchmark times, in the same run and on the same problem:

- the embedded forward solve and its adjoint solve (numba, averaged, float32), with the split
  product, and with the full 2C-channel product as the baseline: the same kernel with one tap
  moved by 1e-7, which the engine no longer recognises (the same arithmetic, to rounding);
- the gradient of the embedded kernel: two C-channel gradients on sums and differences against
  one 2C-channel gradient folded afterwards (the baseline), both with
  ``solvers.engine.correlate_grad``.

Run from the repository root (the layer is freshly initialised; ``--checkpoint`` loads a
trained one instead)::

    python benchmarks/bench_embedded.py              # 16 channels, 3 x 3, 14 x 14 state, batch 100
    python benchmarks/bench_embedded.py --quick      # 8 channels, batch 20
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import contraction
import solvers
from solvers.engine import correlate_grad
from solvers.training import ConvImplicitNetwork, load


def best(f, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``f``, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def kernel_gradient(V, X, channels: int, k: int, shape, circular: bool):
    """``Σ ⟨V, K ⋆ X⟩``'s gradient in ``K`` (channels × channels × k × k), float64."""
    g = np.empty((channels, channels, k, k))
    correlate_grad(np.ascontiguousarray(V), np.ascontiguousarray(X), k, *shape, circular, g)
    return g


def split_fold(V, X2, C, k, shape, circular):
    """``(∂M, ∂N)`` from two C-channel gradients on sums and differences."""
    n = V.shape[1] // 2
    g_sum = kernel_gradient(V[:, :n] + V[:, n:], X2[:, :n] + X2[:, n:], C, k, shape, circular)
    g_diff = kernel_gradient(V[:, :n] - V[:, n:], X2[:, :n] - X2[:, n:], C, k, shape, circular)
    return 0.5 * (g_sum + g_diff), 0.5 * (g_sum - g_diff)


def full_fold(V, X2, C, k, shape, circular):
    """``(∂M, ∂N)`` from one 2C-channel gradient, folded."""
    g = kernel_gradient(V, X2, 2 * C, k, shape, circular)
    return g[:C, :C] + g[C:, C:], g[:C, C:] + g[C:, :C]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--eps", type=float, default=0.1, help="radius of the input box (pixel units)")
    ap.add_argument("--repeats", type=int, default=5, help="best of this many runs of each")
    ap.add_argument("--checkpoint", help="a trained ConvImplicitNetwork (.npz) instead of a fresh one")
    ap.add_argument("--quick", action="store_true", help="8 channels, batch 20")
    args = ap.parse_args(argv)
    if args.quick:
        args.channels, args.batch = 8, 20
    if args.checkpoint:
        net = load(args.checkpoint)
    else:
        net = ConvImplicitNetwork(in_shape=(1, 28, 28), channels=args.channels, kernel_size=3, n_out=10, pool=2,
                                  stride=2, seed=0)
    rng = np.random.default_rng(0)
    U = rng.uniform(0.0, 1.0, (args.batch, net.n_in)).astype(net.dtype)
    op, W2, _, _ = net.embedded_system(np.clip(U - args.eps, 0, 1), np.clip(U + args.eps, 0, 1))
    nudged = op.kernel.copy()
    nudged[0, 0, 0, 0] += 1e-7
    full = contraction.Conv2d(nudged, op.image_shape, op.padding)
    print(f"{net!r}\nembedded network: {op.kernel.shape[0]} channels on {op.image_shape}, batch {args.batch}, "
          f"eps {args.eps}, best of {args.repeats}")
    fwd = dict(method="average", atol=net.solver.atol, activation=net.activation, engine="numba", check=False)
    adj = dict(method="average", atol=net.solver.adjoint_atol, activation=net.activation, engine="numba",
               check=False)
    r = solvers.solve(op, W2, **fwd)
    Z2 = (W2 + op.apply(r.x.astype(np.float64))).astype(W2.dtype)
    G2 = rng.standard_normal(W2.shape).astype(W2.dtype)
    times = {}
    for name, o in (("split", op), ("full", full)):
        solvers.solve(o, W2, **fwd)  # compiles on the first call
        solvers.solve_adjoint(o, Z2, G2, **adj)
    for name, o in (("split", op), ("full", full)) * 2:  # alternately, best of both rounds
        t = (best(lambda: solvers.solve(o, W2, **fwd), args.repeats),
             best(lambda: solvers.solve_adjoint(o, Z2, G2, **adj), args.repeats))
        times[name] = t if name not in times else tuple(map(min, times[name], t))
    C, k = net.channels, net.kernel_size
    grid = dict(C=C, k=k, shape=op.image_shape, circular=op.padding == "circular")
    V = rng.standard_normal(W2.shape)
    X2 = np.maximum(W2, 0).astype(np.float64)
    np.testing.assert_allclose(split_fold(V, X2, **grid), full_fold(V, X2, **grid), rtol=1e-9, atol=1e-9)
    grads = {name: best(lambda: f(V, X2, **grid), args.repeats) for name, f in (("split", split_fold),
                                                                               ("full", full_fold))}
    for i, what in enumerate(("forward solve", "adjoint solve")):
        split, whole = times["split"][i], times["full"][i]
        extra = f" ({r.iterations.mean():.1f} iterations a sample)" if i == 0 else ""
        print(f"  {what:26s} split {1e3 * split:8.1f} ms   full {1e3 * whole:8.1f} ms   "
              f"ratio {whole / split:5.2f}{extra}")
    print(f"  {'embedded kernel gradient':26s} split {1e3 * grads['split']:8.1f} ms   "
          f"full {1e3 * grads['full']:8.1f} ms   ratio {grads['full'] / grads['split']:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
