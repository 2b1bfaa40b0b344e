"""The interval (embedded) network of a convolutional layer: split products against full ones.

Interval bounds solve the embedded network, whose state is ``[x_hi, x_lo]`` (2C channels) and
whose kernel is ``[[M, N], [N, M]]`` (``N`` the negative taps of ``A`` other than the centre
taps, ``M = A − N``). The numba engine applies it as two C-channel passes on the sum and the
difference of the halves, ``(M + N)/2 ⋆ (x_hi + x_lo) ± (M − N)/2 ⋆ (x_hi − x_lo)``, half the
multiply-adds of one 2C-channel pass; the kernel gradient is folded the same way. This
benchmark times, in the same run and on the same problem:

- the embedded forward solve and its adjoint solve (numba, averaged, float32), with the split
  product and with the full 2C-channel product (the baseline: the engine's operator built
  without the split);
- the gradient of the embedded kernel: two C-channel gradients on sums and differences against
  one 2C-channel gradient folded afterwards (the baseline);
- one interval loss-and-gradient step (``interval_loss_and_grad``) with the engine split and
  not (the gradient fold is the new one in both).

Run from the repository root (the layer is freshly initialised; ``--checkpoint`` loads a
trained one instead)::

    python benchmarks/bench_embedded.py              # 16 channels, 3 x 3, 14 x 14 state, batch 100
    python benchmarks/bench_embedded.py --quick      # 8 channels, batch 20
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

import solvers
from solvers._engines import numba_engine, operators
from solvers.training import ConvImplicitNetwork, load
from solvers.training._robust import _box, interval_loss_and_grad


@contextlib.contextmanager
def full_products():
    """The numba engine builds its convolution without the split (the baseline)."""
    split = numba_engine.conv
    numba_engine.conv = lambda op, dtype, resolvent=None, split=False: operators.conv(op, dtype, resolvent=resolvent)
    try:
        yield
    finally:
        numba_engine.conv = split


def best(f, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``f``, in seconds."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def old_fold(net, V, X2):
    """The kernel gradient of the embedded network as one 2C-channel gradient, folded."""
    C = net.channels
    g = net._kernel_gradient(V, X2, 2 * C, 2 * C)
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
    y = rng.integers(0, net.n_out, args.batch)
    op, W2, _, _ = net.embedded_system(*_box(U, args.eps))
    print(f"{net!r}\nembedded network: {op.kernel.shape[0]} channels on {op.image_shape}, batch {args.batch}, "
          f"eps {args.eps}, best of {args.repeats}")
    kw = dict(method="average", atol=net.solver.atol, activation=net.activation, engine="numba", check=False)
    res = {}
    for name, context in (("split", contextlib.nullcontext), ("full", full_products)):
        with context():
            r = solvers.solve(op, W2, **kw)  # compiles on the first call
            forward = best(lambda: solvers.solve(op, W2, **kw), args.repeats)
            Z2 = net.state_product(op, r.x) + W2
            G2 = rng.standard_normal(W2.shape).astype(W2.dtype)
            adj = dict(method="average", atol=net.solver.adjoint_atol, activation=net.activation, engine="numba",
                       check=False)
            solvers.solve_adjoint(op, Z2, G2, **adj)
            adjoint = best(lambda: solvers.solve_adjoint(op, Z2, G2, **adj), args.repeats)
            interval_loss_and_grad(net, U, y, args.eps)
            step = best(lambda: interval_loss_and_grad(net, U, y, args.eps), args.repeats)
        res[name] = (forward, adjoint, step, r.iterations.mean())
    V = rng.standard_normal(W2.shape).astype(W2.dtype)
    X2 = np.maximum(W2, 0)
    net._embedded_kernel_gradient(V, X2)
    grad_new = best(lambda: net._embedded_kernel_gradient(V, X2), args.repeats)
    old_fold(net, V, X2)
    grad_old = best(lambda: old_fold(net, V, X2), args.repeats)
    for i, what in enumerate(("forward solve", "adjoint solve", "interval loss and gradient")):
        split, full = res["split"][i], res["full"][i]
        extra = f" ({res['split'][3]:.1f} iterations a sample)" if i == 0 else ""
        print(f"  {what:28s} split {1e3 * split:8.1f} ms   full {1e3 * full:8.1f} ms   "
              f"ratio {full / split:5.2f}{extra}")
    print(f"  {'embedded kernel gradient':28s} split {1e3 * grad_new:8.1f} ms   full {1e3 * grad_old:8.1f} ms   "
          f"ratio {grad_old / grad_new:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
