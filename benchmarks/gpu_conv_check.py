"""GPU check: the CUDA engine on a convolution against the numba engine, timed and compared.

The forward solve of benchmarks/bench_conv.py (1): a random kernel ``K`` (16 × 16 × 3 × 3,
standard normal over ``√(16·9)``) projected onto ``{μ∞ ≤ 0.9}`` by
``contraction.project_mu_inf``, as a ``contraction.Conv2d`` on 28 × 28 images with circular
padding; ``W`` standard normal, batch 100, float32, ``atol = 1e-4``, relu, ``method="average"``
(``α = α*``), ``check=False``; once with ``engine="cuda"`` and once with ``engine="numba"``.

Each engine is warmed up first (the CUDA kernel's compilation on one sample; numba until it
has run 1.5 s without compiling), then both are timed alternately over ``--repeats`` rounds
(median, wall clock of the whole ``solvers.solve`` call: the CUDA one includes its transfers),
each call after a pause of 0.3 s. The solutions must agree: every sample converged on both
engines, and ``max |x_cuda − x_numba| ≤ 2 atol / (1 − μ∞)`` (each is within
``atol / (1 − μ∞)`` of the fixed point, as the averaged map contracts in ℓ∞).

Exit status: 0 when they agree, 1 when they do not (or the CUDA kernel fails), 2 when there is
no GPU to run on (the message says why).

Run (from the repository root, on a machine with an NVIDIA GPU)::

    python benchmarks/gpu_conv_check.py
    python benchmarks/gpu_conv_check.py --repeats 11
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv import _steady as steady  # noqa: E402  (warm-up until numba stops compiling)

CHANNELS = 16
KERNEL = 3
IMAGE = (28, 28)
PADDING = "circular"
GAMMA = 0.9
BATCH_SIZE = 100
ATOL = 1e-4
MAX_ITER = 1000
#: Seconds to wait before each timed call, so that numba's thread pool stops spinning.
GAP = 0.3
#: Seconds numba must run without compiling before the timings start.
WARMUP_SECONDS = 1.5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per engine (median; default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kernel and the right-hand side")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def instance(seed: int):
    """The convolution and the right-hand side of benchmarks/bench_conv.py's forward solve."""
    import contraction

    C, k = CHANNELS, KERNEL
    rng = np.random.default_rng([seed, 14])
    K = rng.standard_normal((C, C, k, k)) / np.sqrt(C * k * k)
    op = contraction.project_mu_inf(contraction.Conv2d(K, IMAGE, PADDING), GAMMA)
    return op, rng.standard_normal((BATCH_SIZE, op.n)).astype(np.float32)


def solve(op, W, engine: str):
    import solvers

    return solvers.solve(op, W, method="average", atol=ATOL, max_iter=MAX_ITER, activation="relu",
                         engine=engine, check=False)


def no_gpu_reason() -> str | None:
    """Why ``engine="cuda"`` cannot run on a GPU here, or None."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return ("NUMBA_ENABLE_CUDASIM is set, so engine='cuda' would run in numba's simulator: this check "
                "times a real GPU; unset NUMBA_ENABLE_CUDASIM (or set it to 0)")
    from numba import cuda

    if not cuda.is_available():
        return ("no CUDA GPU found (numba.cuda.is_available() is False): this check needs an NVIDIA GPU with a "
                "working driver; engine='numba' runs on the CPU")
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu_conv_check: {reason}", file=sys.stderr)
        return 2
    import contraction
    from numba import cuda

    op, W = instance(args.seed)
    device = cuda.get_current_device().name
    print(f"GPU: {device.decode() if isinstance(device, bytes) else device}")
    t0 = time.perf_counter()
    try:
        solve(op, W[:1], "cuda")  # compiles the kernel (its types do not depend on the batch)
    except Exception as exc:  # a kernel that fails to compile or launch: say so, do not time
        print(f"gpu_conv_check: engine='cuda' failed on its first solve: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    warm_cuda = time.perf_counter() - t0
    t0 = time.perf_counter()
    steady(lambda: solve(op, W, "numba"), WARMUP_SECONDS)
    warm_numba = time.perf_counter() - t0

    runs = {"cuda": [], "numba": []}
    results = {}
    for _ in range(args.repeats):
        for engine in runs:
            time.sleep(GAP)
            t0 = time.perf_counter()
            results[engine] = solve(op, W, engine)
            runs[engine].append(time.perf_counter() - t0)

    mu = contraction.mu_inf(op)
    print(f"Forward solve: batch {BATCH_SIZE}, {CHANNELS} channels, {IMAGE[0]}x{IMAGE[1]}, {KERNEL}x{KERNEL} "
          f"kernel ({PADDING}), float32, relu, average, atol {ATOL:g}; mu_inf(A) = {mu:.4f}, "
          f"alpha* = {contraction.optimal_alpha(op):.4f}")
    print(f"{'engine':<8} {'warm-up s':>9} {'ms (median)':>11} {'min-max':>17} {'iterations':>20} {'converged':>10}")
    for engine, warm in (("cuda", warm_cuda), ("numba", warm_numba)):
        ms = [1e3 * s for s in runs[engine]]
        r = results[engine]
        its = f"{int(r.iterations.max())} max, {r.iterations.mean():.1f} mean"
        print(f"{engine:<8} {warm:>9.1f} {statistics.median(ms):>11.2f} {f'{min(ms):.2f}-{max(ms):.2f}':>17} "
              f"{its:>20} {f'{int(r.converged.sum())}/{BATCH_SIZE}':>10}")
    a, b = results["cuda"], results["numba"]
    diff = float(np.abs(a.x.astype(np.float64) - b.x.astype(np.float64)).max())
    bound = 2 * ATOL / (1 - mu)
    agree = bool(a.converged.all() and b.converged.all() and diff <= bound)
    ratio = statistics.median(runs["numba"]) / statistics.median(runs["cuda"])
    print(f"numba/cuda = {ratio:.2f}; max|x_cuda - x_numba| = {diff:.2e} (bound 2 atol / (1 - mu_inf) = "
          f"{bound:.1e}); max iteration difference {int(np.abs(a.iterations - b.iterations).max())}; "
          f"{args.repeats} rounds, alternating, {GAP} s pause before each call")
    print("PASS: the engines agree" if agree else "FAIL: the engines disagree")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
