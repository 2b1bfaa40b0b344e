"""Training benchmark: epochs of Fashion-MNIST with the nemon trainer against plain PyTorch.

One configuration, trained side by side from the same initial parameters in the same batch
order: ``n = 100`` hidden units, ReLU, float32, batch 100, Adam (lr 1e-3), constraint
``mu_inf`` with ``γ = 0.9`` (projected gradient), forward and adjoint tolerance ``atol = 1e-4``,
``max_iter = 1000``, on the 60,000 Fashion-MNIST training images (``--quick``: the first 10,000,
one epoch).

(a) nemon: ``solvers.training.train`` (``engine="numba"``, ``progress=False``), one epoch
    per call, resumed between epochs (``resume=``), so that the two implementations alternate
    epoch by epoch and a change of machine load hits both alike.
(b) torch: a plain PyTorch CPU implementation of the same step, written here, everything
    under ``torch.no_grad`` in float32 with ``torch.set_num_threads`` equal to numba's thread
    count:

    - ``W = U Bᵀ + b``; averaged forward iteration ``x ← x + α* (relu(x Aᵀ + W) − x)``,
      ``α* = 1 / (1 − min(0, min diag A))``, until the per-sample ℓ∞ residual
      ``‖relu(x Aᵀ + W) − x‖∞ ≤ atol`` holds for the whole batch (or ``max_iter``);
    - ``Z = X Aᵀ + W`` (the last iteration's product, which is exactly that), logits
      ``X Cᵀ + c``, cross-entropy with ``∂L/∂Y = (softmax − onehot) / batch``, ``G = ∂L/∂Y C``;
    - averaged adjoint ``λ ← λ + α* (G + (λ ⊙ σ'(Z)) A − λ)`` until the per-sample ℓ1
      residual is ``≤ atol`` for the whole batch; ``V = λ ⊙ σ'(Z)``;
    - ``gA = Vᵀ X``, ``gB = Vᵀ U``, ``gb = Σ V``, ``gC = ∂L/∂Yᵀ X``, ``gc = Σ ∂L/∂Y``;
      ``torch.optim.Adam`` (default betas and eps, the same as nemon's);
    - after each step ``A`` is projected onto ``{μ∞(A) ≤ γ}`` by the same numpy function the
      nemon trainer calls, ``contraction.project_mu_inf`` (on ``A.numpy()``, copied back), so
      the projection costs both sides the same.

    It starts from the nemon network's initial ``B, b, C, c`` and its projected initial ``A``
    (the nemon trainer projects ``A`` before its first step), and draws the batches of epoch
    ``e`` as ``default_rng([seed, e]).permutation(N)``, as the nemon trainer does.

Reported per epoch: wall seconds of both, the ratio torch/nemon, the mean iteration counts
(nemon: per-sample iterations averaged over the batch, each sample stopping on its own;
torch: the whole batch's count, i.e. its slowest sample), the training loss, and after the
last epoch the test accuracy of both. The target line asks for nemon to be at least 3× faster
per epoch than the torch loop with test accuracies within 0.01.

Last, the main job: ``nemon train`` with its command-line defaults (read from
``solvers.cli.build_parser``; mnist5k, 4,000 train / 1,000 test), timed to the first epoch
whose test accuracy reaches 0.90 and in total (test evaluation after each epoch included).

Run (from the repository root)::

    python benchmarks/bench_train.py              # 2 epochs on 60,000 images, then the main job
    python benchmarks/bench_train.py --quick      # 10,000 images, 1 epoch
    python benchmarks/bench_train.py --threads 1 --skip-main-job

Needs PyTorch (``pip install torch==2.13.0``, the ``bench`` extra) and the Fashion-MNIST
files (``apt-get install dataset-fashion-mnist``). On a shared machine compare only runs
taken at a similar load average (printed with the timings).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

# Importable when run as ``python benchmarks/bench_train.py`` from a checkout.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from solvers.cli import positive_int  # noqa: E402

#: The benchmarked configuration.
HIDDEN = 100
BATCH_SIZE = 100
LR = 1e-3
GAMMA = 0.9
ATOL = 1e-4
MAX_ITER = 1000
CONSTRAINT = "mu_inf"
ACTIVATION = "relu"
QUICK_TRAIN = 10_000
#: Training samples used to compile and warm up both implementations before timing.
WARMUP_SAMPLES = 1_000
#: The targets.
TARGET_SPEEDUP = 3.0
TARGET_ACC_GAP = 0.01
MAIN_JOB_ACCURACY = 0.90
EVAL_BATCH = 1000
#: Batches on which the step breakdown times both implementations after training.
BREAKDOWN_BATCHES = 100


# --------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs of each implementation (default 2)")
    p.add_argument("--quick", action="store_true",
                   help=f"the first {QUICK_TRAIN:,} training images and 1 epoch (unless --epochs is given)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for numba, torch and the BLAS (default: numba's count, normally the core count)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--skip-main-job", action="store_true", help="skip the `nemon train` defaults timing")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else 2
    return args


# --------------------------------------------------------------------------- environment


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min; {os.cpu_count()} cores)"


def set_threads(threads: int | None):
    """Thread counts for numba, torch and (when ``threads`` is given) the BLAS; returns the count."""
    import numba
    import torch

    count = numba.config.NUMBA_NUM_THREADS if threads is None else min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(count)
    torch.set_num_threads(count)
    limiter = None
    if threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            print("note: threadpoolctl not installed; numpy's BLAS keeps its own thread count")
        else:
            limiter = threadpool_limits(limits=count)
    return count, limiter


def print_environment(torch, count: int) -> None:
    import numba

    print(f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"torch {torch.__version__}, {platform.machine()}")
    print(f"threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()} (intra-op), "
          f"os.cpu_count() {os.cpu_count()}")
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        print("BLAS: threadpoolctl not installed")
    else:
        rows = [f"{d.get('internal_api')} {d.get('version')} ({d.get('num_threads')} threads) "
                f"{Path(d.get('filepath', '')).name}" for d in threadpool_info()]
        print("BLAS: " + "; ".join(rows))
    print(load_average() + " at start")


# --------------------------------------------------------------------------- the torch trainer


class TorchImplicit:
    """The same projected-gradient training step in plain PyTorch (see the module docstring)."""

    def __init__(self, torch, params: dict, *, lr: float, gamma: float, atol: float, max_iter: int):
        import contraction

        self.torch = torch
        self._project_np = contraction.project_mu_inf
        self.gamma, self.atol, self.max_iter = gamma, atol, max_iter
        self.p = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
        self.opt = torch.optim.Adam(list(self.p.values()), lr=lr)
        self.clock = dict.fromkeys(("forward", "backward", "adam", "projection"), 0.0)

    def _alpha(self) -> float:
        return 1.0 / (1.0 - min(0.0, float(self.torch.diagonal(self.p["A"]).min())))

    def forward(self, U):
        """Equilibria ``X``, pre-activations ``Z = X Aᵀ + W``, iterations, whether converged."""
        torch = self.torch
        A, B, b = self.p["A"], self.p["B"], self.p["b"]
        At = A.t()
        alpha = self._alpha()
        W = torch.addmm(b, U, B.t())
        X = torch.zeros_like(W)
        for k in range(self.max_iter + 1):
            Z = torch.addmm(W, X, At)
            R = torch.relu(Z).sub_(X)
            if float(R.abs().max()) <= self.atol:
                return X, Z, k, True
            if k == self.max_iter:
                return X, Z, k, False
            X.add_(R, alpha=alpha)
        raise AssertionError("unreachable")

    def adjoint(self, Z, G):
        """``λ = G + (λ ⊙ σ'(Z)) A`` by the averaged iteration; returns ``V = λ ⊙ σ'(Z)``, iterations."""
        torch = self.torch
        A = self.p["A"]
        alpha = self._alpha()
        D = (Z >= 0).to(Z.dtype)
        L = torch.zeros_like(G)
        for k in range(self.max_iter + 1):
            R = torch.addmm(G, L * D, A).sub_(L)
            if float(R.abs().sum(dim=1).max()) <= self.atol or k == self.max_iter:
                return L.mul_(D), k
            L.add_(R, alpha=alpha)
        raise AssertionError("unreachable")

    def loss_and_grad(self, U, y):
        """Mean cross-entropy, gradients ``{A, B, b, C, c}``, forward and adjoint iterations."""
        torch = self.torch
        p = self.p
        t0 = time.perf_counter()
        X, Z, fwd, _ = self.forward(U)
        t1 = time.perf_counter()
        logits = torch.addmm(p["c"], X, p["C"].t())
        logp = torch.log_softmax(logits, dim=1)
        loss = -float(logp.gather(1, y[:, None]).mean())
        dY = logp.exp_()
        dY[torch.arange(len(y)), y] -= 1.0
        dY.div_(len(y))
        V, adj = self.adjoint(Z, dY @ p["C"])
        grads = {"A": V.t() @ X, "B": V.t() @ U, "b": V.sum(dim=0), "C": dY.t() @ X, "c": dY.sum(dim=0)}
        self.clock["forward"] += t1 - t0
        self.clock["backward"] += time.perf_counter() - t1
        return loss, grads, fwd, adj

    def step(self, U, y):
        """One training step on ``(U, y)``: loss, forward and adjoint iterations."""
        torch = self.torch
        loss, grads, fwd, adj = self.loss_and_grad(U, y)
        for k, g in grads.items():
            self.p[k].grad = g
        t0 = time.perf_counter()
        self.opt.step()
        t1 = time.perf_counter()
        A = self.p["A"]
        A.copy_(torch.from_numpy(self._project_np(A.numpy(), self.gamma).astype(np.float32)))
        self.clock["adam"] += t1 - t0
        self.clock["projection"] += time.perf_counter() - t1
        return loss, fwd, adj

    def epoch(self, Xt, yt, seed: int, epoch: int, batch_size: int) -> dict:
        torch = self.torch
        perm = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(len(Xt)))
        loss = fwd = adj = 0.0
        batches = 0
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(Xt), batch_size):
                idx = perm[i : i + batch_size]
                value, f, a = self.step(Xt[idx], yt[idx])
                loss += value * len(idx)
                fwd += f
                adj += a
                batches += 1
        return {"seconds": time.perf_counter() - start, "loss": loss / len(Xt), "fwd_iters": fwd / batches,
                "adj_iters": adj / batches}

    def accuracy(self, X, y) -> float:
        torch = self.torch
        correct = 0
        with torch.no_grad():
            for i in range(0, len(X), EVAL_BATCH):
                Xs, _, _, _ = self.forward(torch.from_numpy(X[i : i + EVAL_BATCH]))
                logits = torch.addmm(self.p["c"], Xs, self.p["C"].t())
                correct += int((logits.argmax(dim=1).numpy() == y[i : i + EVAL_BATCH]).sum())
        return correct / len(X)


# --------------------------------------------------------------------------- the comparison


def _nemon_net(seed: int):
    from solvers.training import ImplicitNetwork, SolverConfig

    return ImplicitNetwork(784, HIDDEN, 10, activation=ACTIVATION, seed=seed, dtype=np.float32,
                           solver=SolverConfig(engine="numba", max_iter=MAX_ITER))


def _initial_params(net) -> dict:
    """The parameters the nemon trainer starts from: ``A`` projected, the rest as initialised."""
    from solvers.training import make_constraint

    raw = make_constraint(CONSTRAINT, GAMMA).init(net.A, np.random.default_rng(0))
    return {"A": raw["A"], "B": net.B.copy(), "b": net.b.copy(), "C": net.C.copy(), "c": net.c.copy()}


def _train_kwargs(seed: int) -> dict:
    return dict(batch_size=BATCH_SIZE, lr=LR, optimizer="adam", schedule="constant", constraint=CONSTRAINT,
                gamma=GAMMA, lipschitz_weight=0.0, atol=ATOL, loss="cross_entropy", seed=seed, progress=False)


#: Seconds of nemon training in the warm-up after its last compilation.
WARMUP_NEMON_SECONDS = 3.0


def warm_up(torch, Xtr, ytr, seed: int) -> float:
    """Compile numba's kernels and run a few steps of both; returns the seconds it took.

    nemon runs until its steady state: the engine compiles a kernel's parallel driver (or
    loads it from the cache) after a second of serial work (benchmarks/README.md,
    "bench_compile.py"), so the warm-up trains on its samples until
    :data:`WARMUP_NEMON_SECONDS` have passed without a compilation."""
    from solvers.engine import compilation
    from solvers.training import train

    start = time.perf_counter()
    X, y = Xtr[:WARMUP_SAMPLES], ytr[:WARMUP_SAMPLES]
    last = time.perf_counter()
    while time.perf_counter() - last < WARMUP_NEMON_SECONDS:
        compiled = compilation.compilations()
        train(_nemon_net(seed), X, y, epochs=1, **_train_kwargs(seed))
        if compilation.compilations() != compiled:
            last = time.perf_counter()
    net = _nemon_net(seed)
    twin = TorchImplicit(torch, _initial_params(net), lr=LR, gamma=GAMMA, atol=ATOL, max_iter=MAX_ITER)
    twin.epoch(torch.from_numpy(X), torch.from_numpy(y), seed, 0, BATCH_SIZE)
    return time.perf_counter() - start


def compare(torch, Xtr, ytr, Xte, yte, epochs: int, seed: int):
    from solvers.training import train

    net = _nemon_net(seed)
    twin = TorchImplicit(torch, _initial_params(net), lr=LR, gamma=GAMMA, atol=ATOL, max_iter=MAX_ITER)
    Xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    rows, history = [], None
    for e in range(epochs):
        load_before = os.getloadavg()[0]
        time.sleep(0.3)  # the other library's OpenMP/BLAS pool stops spinning (see breakdown)
        start = time.perf_counter()
        history = train(net, Xtr, ytr, epochs=e + 1, resume=history, **_train_kwargs(seed))
        nemon_s = time.perf_counter() - start
        rec = history[e]
        time.sleep(0.3)
        t = twin.epoch(Xt, yt, seed, e, BATCH_SIZE)
        rows.append({"epoch": e + 1, "nemon_s": nemon_s, "nemon_batches_s": rec["seconds"], "torch_s": t["seconds"],
                     "nemon_fwd": rec["fwd_iters"], "torch_fwd": t["fwd_iters"], "nemon_adj": rec["adj_iters"],
                     "torch_adj": t["adj_iters"], "nemon_loss": rec["loss"], "torch_loss": t["loss"],
                     "unconverged": rec["unconverged"], "mu_inf": rec["mu_inf"],
                     "load": (load_before + os.getloadavg()[0]) / 2})
    start = time.perf_counter()
    acc_nemon = net.accuracy(Xte, yte)
    eval_nemon = time.perf_counter() - start
    start = time.perf_counter()
    acc_torch = twin.accuracy(Xte, yte)
    eval_torch = time.perf_counter() - start
    acc = {"nemon": acc_nemon, "torch": acc_torch, "nemon_s": eval_nemon, "torch_s": eval_torch}
    return rows, acc, net, twin


def breakdown(torch, net, twin, Xtr, ytr, rows, seed: int) -> None:
    """Where a step's time goes: both implementations timed on the same batches.

    Each part runs as one block over the batches after a pause, not interleaved batch by
    batch: torch and numba each bring an OpenMP pool (two libgomp copies), and a pool keeps
    spinning for a while after its last call, so interleaving would time the two pools
    fighting over 2 cores. nemon runs under the trainer's BLAS policy (blas_threads_for).
    """
    from solvers.engine import blas_threads_for

    steps = len(rows) * (len(Xtr) // BATCH_SIZE)
    in_epoch = dict(twin.clock)
    perm = np.random.default_rng([seed, 0]).permutation(len(Xtr))
    batches = [perm[i * BATCH_SIZE : (i + 1) * BATCH_SIZE] for i in range(min(BREAKDOWN_BATCHES, len(Xtr) // BATCH_SIZE))]
    parts = {
        "nemon_fwd": lambda U, y: net.forward(U),
        "nemon_lag": lambda U, y: net.loss_and_grad(U, y),
        "torch_fwd": lambda U, y: twin.forward(torch.from_numpy(U)),
        "torch_lag": lambda U, y: twin.loss_and_grad(torch.from_numpy(U), torch.from_numpy(y)),
    }
    samples = {k: [] for k in parts}
    with torch.no_grad(), blas_threads_for(BATCH_SIZE, HIDDEN):
        for key, fn in parts.items():
            time.sleep(0.3)
            fn(Xtr[batches[0]], ytr[batches[0]])  # wakes this implementation's pools
            for idx in batches:
                U, y = Xtr[idx], ytr[idx]
                t0 = time.perf_counter()
                fn(U, y)
                samples[key].append(time.perf_counter() - t0)
    ms = {k: 1e3 * float(np.median(v)) for k, v in samples.items()}
    nemon_step = 1e3 * sum(r["nemon_batches_s"] for r in rows) / steps
    torch_step = 1e3 * sum(r["torch_s"] for r in rows) / steps
    adam = 1e3 * in_epoch["adam"] / steps
    proj = 1e3 * in_epoch["projection"] / steps
    print()
    print(f"Step breakdown, ms per step (medians over {len(samples['nemon_fwd'])} batches after training, "
          "each part in one block after a pause; 'whole step' from the epochs)")
    print(f"{'':<36} {'nemon':>7} {'torch':>7} {'torch/nemon':>11}")
    for label, a, b in (("forward (solve, Z, logits)", ms["nemon_fwd"], ms["torch_fwd"]),
                        ("forward + loss + adjoint + gradients", ms["nemon_lag"], ms["torch_lag"]),
                        ("whole step in the epoch", nemon_step, torch_step)):
        print(f"{label:<36} {a:>7.3f} {b:>7.3f} {b / a:>11.2f}")
    print(f"torch, from the epochs: Adam {adam:.3f} ms, projection (contraction.project_mu_inf, the function "
          f"nemon's trainer calls) {proj:.3f} ms per step; {load_average()}")


def print_comparison(rows, acc, n_train: int) -> bool:
    print()
    print(f"Per epoch ({n_train:,} images, {n_train // BATCH_SIZE} steps): wall seconds, ratio, mean iterations")
    header = (f"{'epoch':>5} {'nemon s':>8} {'torch s':>8} {'torch/nemon':>11} {'fwd nemon':>9} {'fwd torch':>9} "
              f"{'adj nemon':>9} {'adj torch':>9} {'loss nemon':>10} {'loss torch':>10} {'load':>5}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['epoch']:>5d} {r['nemon_s']:>8.2f} {r['torch_s']:>8.2f} {r['torch_s'] / r['nemon_s']:>11.2f} "
              f"{r['nemon_fwd']:>9.2f} {r['torch_fwd']:>9.2f} {r['nemon_adj']:>9.2f} {r['torch_adj']:>9.2f} "
              f"{r['nemon_loss']:>10.4f} {r['torch_loss']:>10.4f} {r['load']:>5.2f}")
    nemon_mean = float(np.mean([r["nemon_s"] for r in rows]))
    torch_mean = float(np.mean([r["torch_s"] for r in rows]))
    ratio = torch_mean / nemon_mean
    print(f"{'mean':>5} {nemon_mean:>8.2f} {torch_mean:>8.2f} {ratio:>11.2f}")
    print("nemon s: the whole train() call for the epoch (its per-batch sum: "
          + ", ".join(f"{r['nemon_batches_s']:.2f}" for r in rows) + " s); fwd/adj nemon: per-sample iterations "
          "(each sample stops on its own), torch: the batch's count (its slowest sample); load: 1-min load average")
    unconverged = max(r["unconverged"] for r in rows)
    print(f"nemon: mu_inf(A) = {rows[-1]['mu_inf']:.4f} after the last epoch; "
          f"{100 * unconverged:.2f}% forward solves missed atol (worst epoch)")
    gap = abs(acc["nemon"] - acc["torch"])
    agree = gap <= TARGET_ACC_GAP
    print()
    print(f"test accuracy after {len(rows)} epoch(s) (10,000 test images): nemon {acc['nemon']:.4f} "
          f"({acc['nemon_s']:.1f} s), torch {acc['torch']:.4f} ({acc['torch_s']:.1f} s); difference {gap:.4f} -> "
          f"{'agree' if agree else 'DISAGREE'} within {TARGET_ACC_GAP}")
    ok = ratio >= TARGET_SPEEDUP and agree
    print(f"target: >= {TARGET_SPEEDUP:g}x faster per epoch at equal accuracy (within {TARGET_ACC_GAP}): "
          f"{'PASS' if ok else 'FAIL'} (torch/nemon = {ratio:.2f}x, accuracy gap {gap:.4f})")
    return ok


# --------------------------------------------------------------------------- the main job


def main_job() -> None:
    """``nemon train`` with its command-line defaults: time to 0.90 test accuracy, total time."""
    from solvers.cli import build_parser, load_data, train_config
    from solvers.training import ImplicitNetwork, SolverConfig, train

    # The command line's own defaults and data loading (so this cannot drift from `nemon train`).
    args = build_parser().parse_args(["train", "--no-progress"])
    Xtr, ytr, Xte, yte = load_data(args)
    config = train_config(args)
    print()
    print(f"Main job: `nemon train` defaults: {args.dataset} ({len(Xtr):,} train / {len(Xte):,} test), "
          f"n = {args.hidden}, {config.epochs} epochs, batch {args.batch_size}, {args.optimizer} lr {args.lr:g} "
          f"({args.schedule}), {args.constraint} gamma {args.gamma}, atol {args.atol:g}, {args.activation}, "
          f"{args.dtype}, engine {args.engine}; test accuracy after every epoch")
    net = ImplicitNetwork(Xtr.shape[1], args.hidden, int(ytr.max()) + 1, activation=args.activation, seed=args.seed,
                          dtype=np.dtype(args.dtype), solver=SolverConfig(engine=args.engine))
    stamps = []
    start = time.perf_counter()

    def on_epoch(record):
        stamps.append((time.perf_counter() - start, record["val_acc"]))

    train(net, Xtr, ytr, config, X_val=Xte, y_val=yte, progress=False, callback=on_epoch)
    total = time.perf_counter() - start
    reached = next(((k + 1, t, a) for k, (t, a) in enumerate(stamps) if a >= MAIN_JOB_ACCURACY), None)
    print("epoch  seconds  test acc")
    for k, (t, a) in enumerate(stamps):
        print(f"{k + 1:>5d} {t:>8.2f} {a:>9.4f}")
    if reached is None:
        print(f"main job: test accuracy never reached {MAIN_JOB_ACCURACY} (best {max(a for _, a in stamps):.4f}); "
              f"total {total:.1f} s; {load_average()}")
    else:
        print(f"main job: test accuracy >= {MAIN_JOB_ACCURACY} after epoch {reached[0]} at {reached[1]:.1f} s "
              f"(accuracy {reached[2]:.4f}); total {total:.1f} s, final accuracy {stamps[-1][1]:.4f}; {load_average()}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_train needs PyTorch: pip install torch==2.13.0", file=sys.stderr)
        return 2
    from solvers.training import load_dataset

    start = time.perf_counter()
    count, limiter = set_threads(args.threads)
    print_environment(torch, count)
    try:
        Xtr, ytr, Xte, yte = load_dataset("fashion-mnist", data_dir=args.data_dir)
    except FileNotFoundError as exc:
        print(f"bench_train: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        Xtr, ytr = Xtr[:QUICK_TRAIN], ytr[:QUICK_TRAIN]
    print(f"Fashion-MNIST: {len(Xtr):,} training / {len(Xte):,} test images; n = {HIDDEN}, batch {BATCH_SIZE}, "
          f"Adam lr {LR:g}, {CONSTRAINT} gamma {GAMMA}, atol {ATOL:g} (forward and adjoint), max_iter {MAX_ITER}, "
          f"float32, {ACTIVATION}, seed {args.seed}, {args.epochs} epoch(s)")
    print("projection: contraction.project_mu_inf (compiled) in both implementations")
    print(f"warm-up (compilation and {WARMUP_SAMPLES:,} samples of each): {warm_up(torch, Xtr, ytr, args.seed):.1f} s")
    rows, acc, net, twin = compare(torch, Xtr, ytr, Xte, yte, args.epochs, args.seed)
    print_comparison(rows, acc, len(Xtr))
    breakdown(torch, net, twin, Xtr, ytr, rows, args.seed)
    if not args.skip_main_job:
        main_job()
    if limiter is not None:
        limiter.restore_original_limits()
    print()
    print(f"{load_average()} at end; wall time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
