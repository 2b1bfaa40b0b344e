"""Solver benchmark: the numba engine against numpy, a plain PyTorch loop and the GEMM floor.

For each problem size ``batch × n`` and dtype this script times, side by side in one run:

(a) ``solvers.solve(A, W, engine="numba")`` with ``method="average"`` (``α = α*``), ReLU,
    ``check=False``, ``atol = 1e-8`` (float64) or ``1e-4`` (float32);
(b) the same call with ``engine="numpy"`` (the readable reference engine);
(c) a plain PyTorch CPU loop of the same averaged iteration
    ``x ← x + α (relu(x Aᵀ + W) − x)`` with the same per-sample ℓ∞ stopping rule, checked on
    the whole batch every iteration (stop when every sample meets it), under
    ``torch.no_grad``, with preallocated tensors and ``torch.set_num_threads(os.cpu_count())``
    (the thread count numba uses); skipped with a note when torch is not installed;
(d) every guaranteed method of the numba engine (``average``, ``forward_backward``,
    ``peaceman_rachford``, ``douglas_rachford``, ``anderson``, each at its default step and
    the fastest reported with its name (a method whose guarantee check warns is left out);
(e) the GEMM floor: the time of one ``(batch × n) @ (n × n)`` product with numpy in the same
    dtype, times the iteration count of the numba ``average`` solve (its largest per-sample
    count; the solve itself does one more product, to verify the last step).

Problem instances: ``A = contraction.project_mu_inf(G / √n, 0.9)`` with ``G`` standard
normal (``--instances negdiag`` adds ``contraction.example("negative-diagonal")``, whose
diagonal reaches about −5 so that ``α*`` is small), ``W`` standard normal ``(batch, n)``.
Every kernel is compiled and each numba method run for 1.5 s (its parallel driver is in use
from then on) before timing. Each timing is the median over
``--repeats`` rounds; the candidates of one size are timed round-robin (one measurement of
each per round), so a change of machine load hits all of them alike; one measurement runs a
candidate enough times back to back to last ``--min-time`` seconds (as ``timeit`` does)
and reports the time per call. All implementations are checked to reach the same solution
(largest absolute difference to the numba ``average`` solution, printed as ``max|Δx|``).

It ends with the targets at ``batch = 100``, float64: at ``n = 100`` numba ``average`` at
least 1.5× faster than the torch loop and the fastest guaranteed method at least 3× faster;
at ``n = 500`` numba ``average`` within 1.5× of the GEMM floor.

Run (from the repository root)::

    python benchmarks/bench_solve.py            # the full grid, float32 and float64
    python benchmarks/bench_solve.py --quick    # float64, batch 100, n in {100, 500}
    python benchmarks/bench_solve.py --sizes 100x100,1000x500 --dtypes float64 --repeats 21
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

# Importable when run as ``python benchmarks/bench_solve.py`` from a checkout.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

#: The methods of the numba engine that carry an ℓ∞ guarantee at their default step.
GUARANTEED = ("average", "forward_backward", "peaceman_rachford", "douglas_rachford", "anderson")
#: Absolute tolerance per dtype.
ATOL = {"float64": 1e-8, "float32": 1e-4}
FULL_SIZES = ((1, 100), (1, 500), (100, 100), (100, 500), (1000, 100), (1000, 500))
QUICK_SIZES = ((100, 100), (100, 500))
MAX_ITER = 1000
#: The issue's targets.
TARGET_TORCH_AVERAGE = 1.5
TARGET_TORCH_FASTEST = 3.0
TARGET_FLOOR = 1.5


# --------------------------------------------------------------------------- command line


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            b, n = item.lower().split("x")
            b, n = int(b), int(n)
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes must look like 100x500,1x100; got {item!r}") from None
        if b < 1 or n < 1:
            raise argparse.ArgumentTypeError(f"batch and n must be positive, got {item!r}")
        out.append((b, n))
    return out


def _dtypes(text: str) -> list[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in ATOL]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"dtypes must be among {sorted(ATOL)}, got {text!r}")
    return out


def _instances(text: str) -> list[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    if not out or any(t not in ("projected", "negdiag") for t in out):
        raise argparse.ArgumentTypeError(f"instances must be among projected,negdiag; got {text!r}")
    return out


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="float64 only, sizes 100x100,100x500 (the targets), 7 repeats")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="comma list of BATCHxN (default: 1,100,1000 x 100,500)")
    p.add_argument("--dtypes", type=_dtypes, default=None, help="float32,float64 (default both)")
    p.add_argument("--repeats", type=_positive, default=None, help="rounds per timing (default 15)")
    p.add_argument("--min-time", type=float, default=0.02,
                   help="seconds one measurement lasts at least (default 0.02)")
    p.add_argument("--gap", type=float, default=0.2,
                   help="seconds of sleep before each measurement, so that the previous candidate's "
                        "spinning BLAS/OpenMP threads are idle (default 0.2; 0 to disable)")
    p.add_argument("--stat", choices=("median", "min"), default="median",
                   help="how the rounds are reduced (default median; min is steadier on a loaded machine)")
    p.add_argument("--instances", type=_instances, default=["projected"],
                   help="projected (default) and/or negdiag")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else FULL_SIZES)
    if args.dtypes is None:
        args.dtypes = ["float64"] if args.quick else ["float32", "float64"]
    if args.repeats is None:
        args.repeats = 7 if args.quick else 15
    return args


# --------------------------------------------------------------------------- timing


def _per_call(fn, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def time_round_robin(candidates: dict, repeats: int, min_time: float, stat: str = "median",
                     gap: float = 0.0) -> dict[str, float]:
    """Median (or min) seconds per call of each candidate, measured round-robin over ``repeats`` rounds.

    Each measurement is preceded by ``gap`` seconds of sleep: a BLAS or OpenMP pool keeps its
    worker threads spinning for a while after a call (OpenBLAS for up to about 0.1 s), and on a
    2-core machine the threads of the previous candidate's library would otherwise steal a
    core from the next candidate. A program uses one of these libraries at a time; the gap
    measures each as it runs alone.
    """
    numbers = {}
    for name, fn in candidates.items():
        t = _per_call(fn, 1)  # also a last warm-up
        numbers[name] = max(1, min(10_000, math.ceil(min_time / max(t, 1e-9))))
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if gap > 0:
                time.sleep(gap)
                fn()  # wakes this candidate's own pools, as in a program that calls it in a loop
            samples[name].append(_per_call(fn, numbers[name]))
    reduce = statistics.median if stat == "median" else min
    return {name: reduce(s) for name, s in samples.items()}


# --------------------------------------------------------------------------- problems


def make_problem(instance: str, n: int, batch: int, seed: int):
    """``(A (float64), W (float64))`` for one instance family."""
    import contraction

    rng = np.random.default_rng((seed, n))
    if instance == "projected":
        A = contraction.project_mu_inf(rng.standard_normal((n, n)) / math.sqrt(n), 0.9)
    else:
        A, _ = contraction.example("negative-diagonal", n=n, seed=seed)
        A = np.asarray(A, dtype=np.float64)
    W = np.random.default_rng((seed, n, batch)).standard_normal((batch, n))
    return A, W


# --------------------------------------------------------------------------- torch baseline


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return torch


def make_torch_average(torch, A: np.ndarray, W: np.ndarray, alpha: float, atol: float, max_iter: int):
    """A plain PyTorch loop of the averaged iteration; returns ``run() -> (X, iterations)``.

    Per iteration: ``Z = W + X Aᵀ`` (one addmm into a preallocated buffer), ``T = relu(Z)``
    in place, ``R = T − X``, the per-sample ℓ∞ residual of the whole batch, stop when every
    sample meets ``atol``, else ``X += α R``. Converged samples keep iterating with the
    others (the batch stops as a whole).
    """
    AT = torch.from_numpy(np.ascontiguousarray(A.T))
    Wt = torch.from_numpy(np.ascontiguousarray(W))
    X = torch.zeros_like(Wt)
    Z = torch.empty_like(Wt)
    R = torch.empty_like(Wt)
    r = torch.empty(Wt.shape[0], dtype=Wt.dtype)

    def run():
        with torch.no_grad():
            X.zero_()
            for k in range(max_iter + 1):
                torch.addmm(Wt, X, AT, out=Z)
                torch.relu_(Z)
                torch.sub(Z, X, out=R)
                torch.amax(torch.abs(R), dim=1, out=r)
                if bool((r <= atol).all()):
                    return X, k
                X.add_(R, alpha=alpha)
            return X, max_iter

    return run


# --------------------------------------------------------------------------- environment


def blas_description() -> str:
    import scipy.linalg.cython_blas  # noqa: F401  (loads scipy's BLAS, the one numba's np.dot calls)

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        rows = [
            f"{d.get('internal_api')} {d.get('version')} ({d.get('threading_layer', '?')}, "
            f"{d.get('num_threads')} threads, {d.get('architecture', '?')}) {Path(d.get('filepath', '')).name}"
            for d in threadpool_info()
        ]
        return "threadpoolctl: " + "; ".join(rows)
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"numpy BLAS: {blas.get('name')} {blas.get('version')} (threadpoolctl not installed)"
    except Exception:
        return "numpy BLAS: unknown (threadpoolctl not installed)"


def print_environment(torch, threads: int) -> None:
    import numba
    import scipy

    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"numba {numba.__version__}, torch {torch.__version__ if torch else 'not installed'}")
    print(f"CPU: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
          f"numba threads = {numba.get_num_threads()}, torch threads = {threads if torch else '-'}")
    print(blas_description())
    print("numba's np.dot calls scipy's BLAS (scipy.linalg.cython_blas); the GEMM floor uses numpy's")
    env = {k: os.environ[k] for k in sorted(os.environ)
           if k.startswith(("OPENBLAS", "OMP_", "MKL_", "NUMBA_"))}
    print(f"thread/BLAS environment: {env or 'none set'}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (1 min)")


# --------------------------------------------------------------------------- one size


#: Seconds each numba method runs in the warm-up, after its first call.
WARMUP_SECONDS = 1.5


def bench_case(instance, batch, n, dtype_name, args, torch):
    import contraction
    import solvers
    from solvers import NotGuaranteedWarning, Status

    dtype = np.dtype(dtype_name)
    atol = ATOL[dtype_name]
    A64, W64 = make_problem(instance, n, batch, args.seed)
    A = A64.astype(dtype)
    W = W64.astype(dtype)
    alpha = contraction.optimal_alpha(A64, "average")

    def solver(method, engine):
        return lambda: solvers.solve(A, W, method=method, atol=atol, engine=engine,
                                     activation="relu", max_iter=MAX_ITER, check=False)

    # Warm-up (compiles the numba kernels for this dtype) and the guarantee check.
    guaranteed, skipped = [], {}
    results = {}
    for method in GUARANTEED:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NotGuaranteedWarning)
            solvers.solve(A, W, method=method, atol=atol, engine="numba", max_iter=MAX_ITER, check=True)
        if any(issubclass(w.category, NotGuaranteedWarning) for w in caught):
            skipped[method] = "not guaranteed"
            continue
        guaranteed.append(method)
        run = solver(method, "numba")
        results[method] = run()
        # Steady state: the engine compiles a variant's parallel driver (or loads it from the
        # cache) after a second of serial work (README.md, "Compilation").
        steady = time.perf_counter()
        while time.perf_counter() - steady < WARMUP_SECONDS:
            run()
    results["numpy"] = solver("average", "numpy")()

    candidates = {f"numba:{m}": solver(m, "numba") for m in guaranteed}
    candidates["numpy"] = solver("average", "numpy")
    torch_run = None
    if torch is not None:
        torch_run = make_torch_average(torch, A, W, alpha, atol, MAX_ITER)
        Xt, kt = torch_run()
        results["torch"] = (Xt.numpy().copy(), kt)
        candidates["torch"] = torch_run
    iters = int(results["average"].iterations.max())
    AT = np.ascontiguousarray(A.T)
    Xg = np.random.default_rng(1).standard_normal((batch, n)).astype(dtype)
    Zg = np.empty_like(Xg)
    candidates["gemm"] = lambda: np.dot(Xg, AT, out=Zg)

    t = time_round_robin(candidates, args.repeats, args.min_time, args.stat, args.gap)

    # Agreement with the numba average solution.
    ref = results["average"].x
    diffs = {}
    failures = []
    for name, res in results.items():
        if name == "torch":
            x, k = res
            if k >= MAX_ITER:
                failures.append("torch hit max_iter")
        else:
            x = res.x
            if res.status != Status.SUCCESS:
                failures.append(f"{name}: {res.status.name}")
        diffs[name] = float(np.max(np.abs(np.asarray(x, np.float64) - ref)))
    per_method = {m: (t[f"numba:{m}"], int(results[m].iterations.max())) for m in guaranteed}
    fastest = min(guaranteed, key=lambda m: per_method[m][0])
    row = {
        "batch": batch, "n": n, "iters": iters,
        "numba": t["numba:average"], "numpy": t["numpy"], "torch": t.get("torch"),
        "torch_iters": results["torch"][1] if "torch" in results else None,
        "fastest": fastest, "fastest_t": per_method[fastest][0],
        "gemm": t["gemm"], "floor": t["gemm"] * iters,
        "maxdiff": max(diffs.values()), "diffs": diffs,
        "per_method": per_method, "skipped": skipped, "failures": failures,
    }
    return row


# --------------------------------------------------------------------------- report


def _ms(x) -> str:
    if x is None:
        return "-"
    ms = 1e3 * x
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def _ratio(a, b) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


_STAT = "median"  # set from --stat in main()
_SHORT = {"average": "avg", "forward_backward": "fb", "peaceman_rachford": "pr",
          "douglas_rachford": "dr", "anderson": "anderson"}


def print_table(instance, dtype_name, rows) -> None:
    print()
    print(f"== {instance}, {dtype_name}, atol {ATOL[dtype_name]:g}: {_STAT} ms per solve "
          f"(iters = numba average; torch iters in brackets) ==")
    head = (f"{'batch':>5} {'n':>4} {'iters':>9} {'numba':>8} {'numpy':>8} {'torch':>8} "
            f"{'fastest':>17} {'floor':>8} {'torch/numba':>11} {'torch/fast':>10} {'numba/floor':>11} "
            f"{'max|dx|':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        it = f"{r['iters']}" + (f" [{r['torch_iters']}]" if r["torch_iters"] is not None else "")
        fast = f"{_SHORT[r['fastest']]} {_ms(r['fastest_t'])}"
        print(f"{r['batch']:>5} {r['n']:>4} {it:>9} {_ms(r['numba']):>8} {_ms(r['numpy']):>8} "
              f"{_ms(r['torch']):>8} {fast:>17} {_ms(r['floor']):>8} {_ratio(r['torch'], r['numba']):>11} "
              f"{_ratio(r['torch'], r['fastest_t']):>10} {_ratio(r['numba'], r['floor']):>11} "
              f"{r['maxdiff']:>8.1e}")
    print(f"  numba engine, every guaranteed method: {_STAT} ms (max iterations)")
    for r in rows:
        cells = "  ".join(f"{_SHORT[m]} {_ms(tm)} ({k})" for m, (tm, k) in r["per_method"].items())
        extra = f"  [left out: {r['skipped']}]" if r["skipped"] else ""
        print(f"  {r['batch']:>5}x{r['n']:<4} {cells}  | one GEMM {_ms(r['gemm'])}{extra}")
    for r in rows:
        if r["failures"]:
            print(f"  WARNING {r['batch']}x{r['n']}: {', '.join(r['failures'])}")


def print_targets(table) -> None:
    print()
    print("== targets (batch 100, float64, projected instance) ==")
    r100 = table.get(("projected", "float64", 100, 100))
    r500 = table.get(("projected", "float64", 100, 500))
    if r100 is None or r100["torch"] is None:
        why = "not measured" if r100 is None else "torch not installed"
        print(f"torch/numba(average) >= {TARGET_TORCH_AVERAGE} at n=100: SKIP ({why})")
        print(f"torch/fastest >= {TARGET_TORCH_FASTEST} at n=100: SKIP ({why})")
    else:
        a = r100["torch"] / r100["numba"]
        f = r100["torch"] / r100["fastest_t"]
        print(f"torch/numba(average) >= {TARGET_TORCH_AVERAGE} at n=100: "
              f"{'PASS' if a >= TARGET_TORCH_AVERAGE else 'FAIL'} "
              f"({a:.2f}x: torch {_ms(r100['torch'])} ms, numba average {_ms(r100['numba'])} ms)")
        print(f"torch/fastest >= {TARGET_TORCH_FASTEST} at n=100: "
              f"{'PASS' if f >= TARGET_TORCH_FASTEST else 'FAIL'} "
              f"({f:.2f}x: torch {_ms(r100['torch'])} ms, {r100['fastest']} {_ms(r100['fastest_t'])} ms)")
    if r500 is None:
        print(f"numba(average)/GEMM floor <= {TARGET_FLOOR} at n=500: SKIP (not measured)")
    else:
        q = r500["numba"] / r500["floor"]
        print(f"numba(average)/GEMM floor <= {TARGET_FLOOR} at n=500: "
              f"{'PASS' if q <= TARGET_FLOOR else 'FAIL'} "
              f"({q:.2f}x: numba average {_ms(r500['numba'])} ms, floor {_ms(r500['floor'])} ms "
              f"= {r500['iters']} x {_ms(r500['gemm'])} ms)")


def main(argv=None) -> int:
    global _STAT
    args = parse_args(argv)
    _STAT = args.stat
    torch = torch_available()
    threads = os.cpu_count() or 1
    if torch is not None:
        torch.set_num_threads(threads)
    print(__doc__.splitlines()[0])
    print_environment(torch, threads)
    if torch is None:
        print("NOTE: torch is not installed; column (c) and the torch targets are skipped "
              "(pip install torch==2.13.0)")
    print(f"sizes {' '.join(f'{b}x{n}' for b, n in args.sizes)}; dtypes {', '.join(args.dtypes)}; "
          f"instances {', '.join(args.instances)}; repeats {args.repeats} ({args.stat}); min time {args.min_time} s; gap {args.gap} s")
    start = time.perf_counter()
    table = {}
    for instance in args.instances:
        for dtype_name in args.dtypes:
            rows = []
            for batch, n in args.sizes:
                row = bench_case(instance, batch, n, dtype_name, args, torch)
                table[(instance, dtype_name, batch, n)] = row
                rows.append(row)
            print_table(instance, dtype_name, rows)
    print_targets(table)
    print()
    print(f"load average at end: {os.getloadavg()[0]:.2f} (1 min); wall time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
