"""GPU check: the CUDA engine on a convolution against the numba engine and a PyTorch GPU loop.

The forward solve of benchmarks/bench_conv.py (1): a random kernel ``K`` (16 × 16 × 3 × 3,
standard normal over ``√(16·9)``) projected onto ``{μ∞ ≤ 0.9}`` by
``contraction.project_mu_inf``, as a ``contraction.Conv2d`` on 28 × 28 images with circular
padding; ``W`` standard normal, float32, ``atol = 1e-4``, relu, ``method="average"``
(``α = α*``), ``check=False``; with ``engine="cuda"``, with ``engine="numba"`` (the CPU), and
(when PyTorch sees the GPU) bench_conv.py's plain PyTorch loop (``F.conv2d`` on a circularly
padded buffer, ``x ← x + α*(relu(K ⋆ x + W) − x)`` until the batch's ℓ∞ residual meets
``atol``) on CUDA tensors. Each batch size of ``--batches`` (default 100 and 1000) is one round
of timings: ``W`` is that many samples.

Each side is warmed up first (the CUDA kernel's compilation on one sample; numba until it has
run 1.5 s without compiling; one torch solve), then they are timed alternately over
``--repeats`` rounds (median, wall clock of the whole call: ``solvers.solve`` with
``engine="cuda"`` takes numpy arrays, so its time includes the transfers to and from the
device; the torch loop's data stay on the device and each call ends with a synchronise), each
call after a pause of 0.3 s. The solutions must agree: every sample converged on both nemon
engines, and ``max |x_cuda − x_other| ≤ 2 atol / (1 − μ∞)`` for the numba and torch solutions
(each is within ``atol / (1 − μ∞)`` of the fixed point, as the averaged map contracts in ℓ∞).

Exit status: 0 when they agree, 1 when they do not (or the CUDA kernel fails), 2 when there is
no GPU to run on (the message says why).

Run (from the repository root, on a machine with an NVIDIA GPU)::

    python benchmarks/gpu_conv_check.py
    python benchmarks/gpu_conv_check.py --repeats 11 --batches 100,1000,10000
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
BATCH_SIZES = (100, 1000)
ATOL = 1e-4
MAX_ITER = 1000
#: Seconds to wait before each timed call, so that numba's thread pool stops spinning.
GAP = 0.3
#: Seconds numba must run without compiling before the timings start.
WARMUP_SECONDS = 1.5


def _int_list(what: str, ok):
    """An argparse type: comma-separated integers, each passing ``ok``; ``what`` names them."""
    def parse(raw: str) -> list[int]:
        try:
            values = [int(v) for v in raw.split(",")]
        except ValueError:
            values = []
        if not values or not all(ok(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected {what} separated by commas, got {raw!r}")
        return values
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per engine (median; default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kernel and the right-hand side")
    p.add_argument("--threads-per-block", type=_int_list("powers of two up to 1024", lambda t: 0 < t <= 1024 and not t & (t - 1)),
                   default=[128], help="comma-separated threads per block of the CUDA engine, one timed row each (default 128)")
    p.add_argument("--batches", type=_int_list("positive integers", lambda b: b > 0), default=list(BATCH_SIZES),
                   help="comma-separated batch sizes, one round of timings each (default 100,1000)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def instance(seed: int, batch: int):
    """The convolution and ``batch`` right-hand sides as in benchmarks/bench_conv.py's forward solve."""
    import contraction

    C, k = CHANNELS, KERNEL
    rng = np.random.default_rng([seed, 14])
    K = rng.standard_normal((C, C, k, k)) / np.sqrt(C * k * k)
    op = contraction.project_mu_inf(contraction.Conv2d(K, IMAGE, PADDING), GAMMA)
    return op, rng.standard_normal((batch, op.n)).astype(np.float32)


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


def torch_gpu():
    """PyTorch, when it is installed and sees a CUDA device; else None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    # cuDNN's convolutions default to TF32 (10-bit mantissas): the loop's residual then stalls
    # near 1e-3 and never meets atol = 1e-4. Plain float32, as the CUDA engine computes.
    torch.backends.cudnn.allow_tf32 = False
    return torch


def check_batch(batch: int, args, torch) -> bool:
    """Time and compare the engines (and the torch loop) on one batch size; True when they agree."""
    import contraction

    op, W = instance(args.seed, batch)
    t0 = time.perf_counter()
    solve(op, W[:1], "cuda")  # compiles the kernel once (its types do not depend on the batch)
    warm = {"cuda": time.perf_counter() - t0}
    t0 = time.perf_counter()
    steady(lambda: solve(op, W, "numba"), WARMUP_SECONDS)
    warm["numba"] = time.perf_counter() - t0
    from solvers._engines import cuda_engine

    def on_gpu(tpb):
        def run():
            cuda_engine.TPB_CAP = tpb
            return solve(op, W, "cuda")
        return run

    # The first row is "cuda", the baseline of the ratios; the others "cuda/<threads per block>".
    runners = {("cuda" if i == 0 else f"cuda/{tpb}"): on_gpu(tpb) for i, tpb in enumerate(args.threads_per_block)}
    runners["numba"] = lambda: solve(op, W, "numba")
    if torch is not None:
        from bench_conv import torch_forward_solve

        Kt = torch.from_numpy(op.kernel.astype(np.float32)).cuda()
        Wt = torch.from_numpy(W).view(batch, CHANNELS, *IMAGE).cuda()

        def plain():
            with torch.no_grad():
                out = torch_forward_solve(torch, Kt, Wt, ATOL, MAX_ITER)
            torch.cuda.synchronize()
            return out

        t0 = time.perf_counter()
        plain()
        warm["torch"] = time.perf_counter() - t0
        runners["torch"] = plain

    runs = {name: [] for name in runners}
    results = {}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            time.sleep(GAP)
            t0 = time.perf_counter()
            results[name] = fn()
            runs[name].append(time.perf_counter() - t0)

    mu = contraction.mu_inf(op)
    print(f"\nForward solve: batch {batch}, {CHANNELS} channels, {IMAGE[0]}x{IMAGE[1]}, {KERNEL}x{KERNEL} "
          f"kernel ({PADDING}), float32, relu, average, atol {ATOL:g}; mu_inf(A) = {mu:.4f}, "
          f"alpha* = {contraction.optimal_alpha(op):.4f}")
    print(f"cuda = {args.threads_per_block[0]} threads per block")
    print(f"{'engine':<8} {'warm-up s':>9} {'ms (median)':>11} {'min-max':>17} {'iterations':>20} {'converged':>10}")
    xs = {}
    for name in runners:
        ms = [1e3 * s for s in runs[name]]
        r = results[name]
        if name == "torch":
            X, _, iters, ok = r
            xs[name] = X.reshape(batch, -1).cpu().numpy().astype(np.float64)
            its, conv = f"{iters} (batch)", "all" if ok else "no"
        else:
            xs[name] = r.x.astype(np.float64)
            its, conv = f"{int(r.iterations.max())} max, {r.iterations.mean():.1f} mean", f"{int(r.converged.sum())}/{batch}"
        print(f"{name:<8} {warm.get(name, 0.0):>9.1f} {statistics.median(ms):>11.2f} {f'{min(ms):.2f}-{max(ms):.2f}':>17} "
              f"{its:>20} {conv:>10}")
    bound = 2 * ATOL / (1 - mu)
    agree = all(bool(r.converged.all()) for name, r in results.items() if name != "torch")
    for name in runners:
        if name == "cuda":
            continue
        diff = float(np.abs(xs["cuda"] - xs[name]).max())
        agree = agree and diff <= bound
        ratio = statistics.median(runs[name]) / statistics.median(runs["cuda"])
        print(f"{name}/cuda = {ratio:.2f}; max|x_cuda - x_{name}| = {diff:.2e} (bound 2 atol / (1 - mu_inf) = {bound:.1e})")
    print(f"{args.repeats} rounds, alternating, {GAP} s pause before each call")
    return agree


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu_conv_check: {reason}", file=sys.stderr)
        return 2
    from numba import cuda

    device = cuda.get_current_device().name
    print(f"GPU: {device.decode() if isinstance(device, bytes) else device}")
    torch = torch_gpu()
    print("PyTorch loop: " + (f"torch {torch.__version__} on the GPU" if torch is not None
                              else "skipped (PyTorch not installed or sees no GPU)"))
    agree = True
    for batch in args.batches:
        try:
            agree = check_batch(batch, args, torch) and agree
        except Exception as exc:  # a kernel that fails to compile or launch: say so, do not time
            print(f"gpu_conv_check: batch {batch} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    print("PASS: the solutions agree" if agree else "FAIL: the solutions disagree")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
