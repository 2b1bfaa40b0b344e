"""Convolutional benchmark: the conv forward solve and a conv training epoch, nemon against plain PyTorch.

Two measurements, each against a plain PyTorch CPU loop of the same iteration and model
written here (float32, ``torch.no_grad``, ``torch.set_num_threads`` equal to numba's thread
count, circular padding through a preallocated halo buffer and ``F.conv2d``):

(1) The forward solve. A random kernel ``K`` (16 × 16 × 3 × 3, standard normal over
    ``√(16·9)``) projected onto ``{μ∞ ≤ 0.9}`` by ``contraction.project_mu_inf``, as a
    ``contraction.Conv2d`` on 28 × 28 images with circular padding; ``W`` standard normal,
    batch 100, float32, ``atol = 1e-4``.

    - nemon: ``solvers.solve(Conv2d, W, method="average", engine="numba", activation="relu",
      check=False)`` (``α = α*``; each sample stops on its own);
    - torch: ``x ← x + α* (relu(K ⋆ x + w) − x)`` with ``α* = 1 / (1 − min(0, min_c K[c,c,p,p]))``
      until the per-sample ℓ∞ residual ``‖relu(K ⋆ x + w) − x‖∞ ≤ atol`` holds for every
      sample (the batch stops as a whole).

    Both are timed alternately over ``--repeats`` rounds (median), each call after a pause of
    0.3 s (an OpenMP pool keeps spinning after its last call and would steal a core from the
    other library), after a warm-up that lasts until numba has run 1.5 s without compiling
    (the engine switches to a kernel's parallel driver after a second of serial work). The
    solutions are compared: each is within ``atol / (1 − μ∞)`` of the fixed point (the
    averaged map contracts by ``1 − α(1 − μ∞)`` in ℓ∞), so they agree to ``2 atol / (1 − μ∞)``.

(2) One training epoch on Fashion-MNIST (``--quick``: the first 5,000 images) of
    ``ConvImplicitNetwork((1, 28, 28), 16, 3, 10, pool=4)`` (circular padding, ReLU, float32):
    batch 100, Adam (lr 1e-3, default betas and eps), constraint ``mu_inf`` with ``γ = 0.9``,
    forward and adjoint ``atol = 1e-4``, ``max_iter = 1000``.

    - nemon: ``solvers.training.train(net, X, y, TrainConfig(epochs=1, ...), progress=False)``
      (numba engine);
    - torch: ``W = B ⋆ U + b``; the forward iteration of (1) (``Z = A ⋆ X + W`` from its last
      iteration); logits ``C · avgpool₄(X) + c``, cross-entropy, ``∂L/∂Y = (softmax − onehot) /
      batch``, ``G = pool*(∂L/∂Y C)`` (each pooled gradient spread over its 4 × 4 block, over
      16); averaged adjoint ``λ ← λ + α* (G + Aᵀ(λ ⊙ σ'(Z)) − λ)`` (``Aᵀ``: the flipped kernel
      with its channels swapped, circular padding) until the per-sample ℓ1 residual is
      ``≤ atol`` for the whole batch; ``V = λ ⊙ σ'(Z)``; kernel gradients by
      ``torch.nn.grad.conv2d_weight`` on the circularly padded ``X`` and ``U``,
      ``gb = Σ V``, ``gC = ∂L/∂Yᵀ avgpool₄(X)``, ``gc = Σ ∂L/∂Y``; ``torch.optim.Adam``; after
      each step ``A`` is projected by ``contraction.project_mu_inf`` on a ``Conv2d`` of
      ``A.numpy()`` (the call nemon's trainer makes, so it costs both sides the same), copied
      back.

    Both start from the same parameters (the nemon network's initial ``B, b, C, c`` and its
    projected initial ``A``, as the trainer projects it before its first step) and draw the
    same batches (``default_rng([seed, 0]).permutation(N)``). Reported: both epochs' wall
    seconds, the ratio, the ratio per step (torch's epoch against the sum of nemon's batches,
    without the trainer's end-of-epoch work), the mean iterations (nemon: per sample, each
    stopping on its own; torch: the batch's count, i.e. its slowest sample), the training loss
    and the test accuracy of both after the epoch.

The script ends with the targets: the forward solve at least 1.5× faster than the torch
loop, the epoch at least 2× faster with test accuracies within 0.01. ``--profile`` adds the
top lines of a ``cProfile`` of nemon training steps.

Run (from the repository root)::

    python benchmarks/bench_conv.py               # 60,000 training images, all 10,000 test images
    python benchmarks/bench_conv.py --quick       # 5,000 training images, 2,000 test images, 5 repeats
    python benchmarks/bench_conv.py --threads 1   # numba, torch and the BLAS on one thread

Needs PyTorch (``pip install torch==2.13.0``, the ``bench`` extra) and the Fashion-MNIST
files (``apt-get install dataset-fashion-mnist``). On a shared machine compare only runs
taken at a similar load average (printed with the timings).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# Importable when run as ``python benchmarks/bench_conv.py`` from a checkout.
_HERE = Path(__file__).resolve().parent
for _path in (_HERE.parent, _HERE):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402

import bench_train  # noqa: E402  (the environment header and thread settings)
from solvers.cli import positive_int  # noqa: E402

#: The benchmarked configuration (issue 14).
CHANNELS = 16
KERNEL = 3
IMAGE = (28, 28)
POOL = 4
PADDING = "circular"
BATCH_SIZE = 100
LR = 1e-3
GAMMA = 0.9
ATOL = 1e-4
MAX_ITER = 1000
CONSTRAINT = "mu_inf"
ACTIVATION = "relu"
QUICK_TRAIN = 5_000
QUICK_TEST = 2_000
QUICK_REPEATS = 5
EVAL_BATCH = 1000
#: Seconds to wait before each timed call, so that the other library's pool stops spinning.
GAP = 0.3
#: Seconds numba must run without compiling before the timings start.
WARMUP_SOLVE_SECONDS = 1.5
WARMUP_TRAIN_SECONDS = 2.0
#: Training samples of each warm-up round (three steps).
WARMUP_SAMPLES = 300
#: nemon steps profiled with ``--profile``.
PROFILE_SAMPLES = 500
#: The targets.
TARGET_SOLVE = 1.5
TARGET_EPOCH = 2.0
TARGET_ACC_GAP = 0.01


# --------------------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"the first {QUICK_TRAIN:,} training and {QUICK_TEST:,} test images, "
                        f"{QUICK_REPEATS} repeats of the solve")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed rounds of the solve (default 7)")
    p.add_argument("--test-samples", type=positive_int, default=None,
                   help="test images for the accuracies (default all, --quick 2,000)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for numba, torch and the BLAS (default: numba's count, normally the core count)")
    p.add_argument("--seed", type=int, default=0, help="kernel, initialisation and batch-order seed (default 0)")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--skip-train", action="store_true", help="time the forward solve only")
    p.add_argument("--profile", action="store_true",
                   help=f"after the epoch, profile nemon training on {PROFILE_SAMPLES} images (cProfile)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else 7
    return args


# --------------------------------------------------------------------------- torch pieces


class CircularConv:
    """``K ⋆ x`` with circular padding in PyTorch: ``x`` copied into a preallocated buffer with
    a halo of ``p`` pixels (cheaper than ``F.pad(mode="circular")`` here), then ``F.conv2d``."""

    def __init__(self, torch, shape, k: int, device=None):
        self.torch = torch
        self.p = k // 2
        b, c, h, w = shape
        self.buf = torch.empty((b, c, h + 2 * self.p, w + 2 * self.p), device=device)

    def pad(self, x):
        p, buf = self.p, self.buf
        h, w = x.shape[2:]
        buf[:, :, p : p + h, p : p + w].copy_(x)
        buf[:, :, :p, p : p + w].copy_(x[:, :, h - p :])
        buf[:, :, p + h :, p : p + w].copy_(x[:, :, :p])
        buf[:, :, :, :p].copy_(buf[:, :, :, w : w + p])  # columns after the rows: the corners wrap too
        buf[:, :, :, p + w :].copy_(buf[:, :, :, p : 2 * p])
        return buf

    def __call__(self, x, K):
        return self.torch.nn.functional.conv2d(self.pad(x), K)


def torch_alpha(K) -> float:
    """``α* = 1 / (1 − min(0, min_c K[c, c, p, p]))`` of a square kernel (a torch tensor)."""
    p = K.shape[2] // 2
    return 1.0 / (1.0 - min(0.0, float(K[:, :, p, p].diagonal().min())))


def torch_forward_solve(torch, K, Wb, atol: float, max_iter: int):
    """The averaged forward iteration on ``Wb`` (batch, C, H, W); returns ``X``, ``Z = K ⋆ X + Wb``,
    iterations, whether every sample met ``atol``."""
    conv = CircularConv(torch, Wb.shape, K.shape[2], Wb.device)
    alpha = torch_alpha(K)
    X = torch.zeros_like(Wb)
    for k in range(max_iter + 1):
        Z = conv(X, K).add_(Wb)
        R = torch.relu(Z).sub_(X)
        if float(R.abs().amax()) <= atol:
            return X, Z, k, True
        if k == max_iter:
            return X, Z, k, False
        X.add_(R, alpha=alpha)
    raise AssertionError("unreachable")


class TorchConvImplicit:
    """The same projected-gradient training step in plain PyTorch (see the module docstring)."""

    def __init__(self, torch, params: dict, *, lr: float, gamma: float, atol: float, max_iter: int):
        import contraction

        self.torch = torch
        self.contraction = contraction
        self.gamma, self.atol, self.max_iter = gamma, atol, max_iter
        self.p = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
        self.opt = torch.optim.Adam(list(self.p.values()), lr=lr)

    def _inputs(self, U):
        return U.reshape(U.shape[0], 1, *IMAGE)

    def forward(self, U):
        """``U4`` (batch, 1, H, W), equilibria ``X``, pre-activations ``Z``, iterations."""
        torch = self.torch
        U4 = self._inputs(U)
        Wb = CircularConv(torch, U4.shape, KERNEL)(U4, self.p["B"]).add_(self.p["b"].view(1, -1, 1, 1))
        X, Z, k, _ = torch_forward_solve(torch, self.p["A"], Wb, self.atol, self.max_iter)
        return U4, X, Z, k

    def logits(self, X):
        pooled = self.torch.nn.functional.avg_pool2d(X, POOL).flatten(1)
        return self.torch.addmm(self.p["c"], pooled, self.p["C"].t()), pooled

    def adjoint(self, Z, G):
        """``λ = G + Aᵀ(λ ⊙ σ'(Z))`` by the averaged iteration; returns ``V = λ ⊙ σ'(Z)``, iterations."""
        torch = self.torch
        A = self.p["A"]
        AT = A.flip(2, 3).transpose(0, 1).contiguous()
        conv = CircularConv(torch, G.shape, KERNEL)
        alpha = torch_alpha(A)
        D = (Z >= 0).to(Z.dtype)
        L = torch.zeros_like(G)
        for k in range(self.max_iter + 1):
            R = conv(L * D, AT).add_(G).sub_(L)
            if float(R.abs().sum(dim=(1, 2, 3)).max()) <= self.atol or k == self.max_iter:
                return L.mul_(D), k
            L.add_(R, alpha=alpha)
        raise AssertionError("unreachable")

    def loss_and_grad(self, U, y):
        """Mean cross-entropy, gradients ``{A, B, b, C, c}``, forward and adjoint iterations."""
        torch = self.torch
        weight_grad = torch.nn.grad.conv2d_weight
        p = self.p
        U4, X, Z, fwd = self.forward(U)
        logits, pooled = self.logits(X)
        logp = torch.log_softmax(logits, dim=1)
        loss = -float(logp.gather(1, y[:, None]).mean())
        dY = logp.exp_()
        dY[torch.arange(len(y)), y] -= 1.0
        dY.div_(len(y))
        h, w = IMAGE[0] // POOL, IMAGE[1] // POOL
        G = (dY @ p["C"]).view(len(y), CHANNELS, h, w)
        G = G.repeat_interleave(POOL, dim=2).repeat_interleave(POOL, dim=3).div_(POOL * POOL)
        V, adj = self.adjoint(Z, G)
        Xp = CircularConv(torch, X.shape, KERNEL).pad(X)
        Up = CircularConv(torch, U4.shape, KERNEL).pad(U4)
        grads = {"A": weight_grad(Xp, p["A"].shape, V), "B": weight_grad(Up, p["B"].shape, V),
                 "b": V.sum(dim=(0, 2, 3)), "C": dY.t() @ pooled, "c": dY.sum(dim=0)}
        return loss, grads, fwd, adj

    def step(self, U, y):
        """One training step on ``(U, y)``: loss, forward and adjoint iterations."""
        torch = self.torch
        loss, grads, fwd, adj = self.loss_and_grad(U, y)
        for k, g in grads.items():
            self.p[k].grad = g
        self.opt.step()
        A = self.p["A"]
        K = A.numpy()
        # The trainer's call: the projection is a kernel quantity, independent of the image size.
        op = self.contraction.Conv2d(K, K.shape[2:], PADDING)
        A.copy_(torch.from_numpy(self.contraction.project_mu_inf(op, self.gamma).kernel.astype(np.float32)))
        return loss, fwd, adj

    # The same epoch loop as the dense twin's: batches of default_rng([seed, epoch]).permutation(N).
    epoch = bench_train.TorchImplicit.epoch

    def accuracy(self, X, y) -> float:
        torch = self.torch
        correct = 0
        with torch.no_grad():
            for i in range(0, len(X), EVAL_BATCH):
                _, Xs, _, _ = self.forward(torch.from_numpy(X[i : i + EVAL_BATCH]))
                logits, _ = self.logits(Xs)
                correct += int((logits.argmax(dim=1).numpy() == y[i : i + EVAL_BATCH]).sum())
        return correct / len(X)


# --------------------------------------------------------------------------- (1) the forward solve


def _steady(fn, seconds: float) -> None:
    """Call ``fn`` until ``seconds`` have passed without a numba compilation."""
    from solvers.engine import compilation

    last = time.perf_counter()
    while time.perf_counter() - last < seconds:
        compiled = compilation.compilations()
        fn()
        if compilation.compilations() != compiled:
            last = time.perf_counter()


def bench_solve(torch, repeats: int, seed: int) -> dict:
    import contraction
    import solvers

    C, k = CHANNELS, KERNEL
    rng = np.random.default_rng([seed, 14])
    K = rng.standard_normal((C, C, k, k)) / np.sqrt(C * k * k)
    op = contraction.project_mu_inf(contraction.Conv2d(K, IMAGE, PADDING), GAMMA)
    W = rng.standard_normal((BATCH_SIZE, op.n)).astype(np.float32)
    Kt = torch.from_numpy(op.kernel.astype(np.float32))
    Wt = torch.from_numpy(W).view(BATCH_SIZE, C, *IMAGE)

    def nemon():
        return solvers.solve(op, W, method="average", atol=ATOL, max_iter=MAX_ITER, activation=ACTIVATION,
                             engine="numba", check=False)

    def plain():
        with torch.no_grad():
            return torch_forward_solve(torch, Kt, Wt, ATOL, MAX_ITER)

    start = time.perf_counter()
    _steady(nemon, WARMUP_SOLVE_SECONDS)
    plain()
    warm = time.perf_counter() - start
    samples = {"nemon": [], "torch": []}
    results = {}
    load_before = os.getloadavg()[0]
    for _ in range(repeats):
        for name, fn in (("nemon", nemon), ("torch", plain)):
            time.sleep(GAP)
            t0 = time.perf_counter()
            results[name] = fn()
            samples[name].append(time.perf_counter() - t0)
    res = results["nemon"]
    X, _, torch_iters, torch_ok = results["torch"]
    mu = contraction.mu_inf(op)
    return {
        "ms": {name: 1e3 * statistics.median(s) for name, s in samples.items()},
        "spread": {name: (1e3 * min(s), 1e3 * max(s)) for name, s in samples.items()},
        "nemon_iters": (int(res.iterations.max()), float(res.iterations.mean())), "nemon_ok": bool(res.success),
        "torch_iters": torch_iters, "torch_ok": torch_ok,
        "diff": float(np.abs(res.x.astype(np.float64) - X.reshape(BATCH_SIZE, -1).numpy()).max()),
        "bound": 2 * ATOL / (1 - mu), "mu": mu, "alpha": contraction.optimal_alpha(op), "warm": warm,
        "load": (load_before + os.getloadavg()[0]) / 2,
    }


def print_solve(r: dict, repeats: int) -> bool:
    print()
    print(f"(1) Forward solve: batch {BATCH_SIZE}, {CHANNELS} channels, {IMAGE[0]}x{IMAGE[1]}, "
          f"{KERNEL}x{KERNEL} kernel ({PADDING}), float32, relu, average, atol {ATOL:g}; "
          f"mu_inf(A) = {r['mu']:.4f}, alpha* = {r['alpha']:.4f}; warm-up {r['warm']:.1f} s")
    print(f"{'':<16} {'ms (median)':>11} {'min-max':>15} {'iterations':>22}")
    lo, hi = r["spread"]["nemon"]
    it_max, it_mean = r["nemon_iters"]
    print(f"{'nemon (numba)':<16} {r['ms']['nemon']:>11.1f} {f'{lo:.1f}-{hi:.1f}':>15} "
          f"{f'{it_max} max, {it_mean:.1f} mean':>22}")
    lo, hi = r["spread"]["torch"]
    batch_count = f"{r['torch_iters']} (batch)"
    print(f"{'torch loop':<16} {r['ms']['torch']:>11.1f} {f'{lo:.1f}-{hi:.1f}':>15} {batch_count:>22}")
    ratio = r["ms"]["torch"] / r["ms"]["nemon"]
    agree = r["diff"] <= r["bound"] and r["nemon_ok"] and r["torch_ok"]
    print(f"torch/nemon = {ratio:.2f}; max|x_nemon - x_torch| = {r['diff']:.2e} (bound 2 atol / (1 - mu_inf) = "
          f"{r['bound']:.1e}: {'agree' if agree else 'DISAGREE'}); {repeats} rounds, alternating, "
          f"{GAP} s pause before each call; 1-min load average {r['load']:.2f}")
    ok = ratio >= TARGET_SOLVE and agree
    r["ratio"], r["ok"] = ratio, ok
    return ok


# --------------------------------------------------------------------------- (2) one training epoch


def _nemon_net(seed: int):
    from solvers.training import ConvImplicitNetwork, SolverConfig

    return ConvImplicitNetwork((1, *IMAGE), CHANNELS, KERNEL, 10, pool=POOL, padding=PADDING, activation=ACTIVATION,
                               seed=seed, dtype=np.float32, solver=SolverConfig(engine="numba", max_iter=MAX_ITER))


def _config(seed: int):
    from solvers.training import TrainConfig

    return TrainConfig(epochs=1, batch_size=BATCH_SIZE, lr=LR, optimizer="adam", schedule="constant",
                       constraint=CONSTRAINT, gamma=GAMMA, atol=ATOL, seed=seed)


def _initial_params(net) -> dict:
    """The parameters the nemon trainer starts from: ``A`` projected, the rest as initialised."""
    from solvers.training import make_constraint

    raw = make_constraint(CONSTRAINT, GAMMA).init(net.A, np.random.default_rng(0))
    return {"A": raw["A"], "B": net.B.copy(), "b": net.b.copy(), "C": net.C.copy(), "c": net.c.copy()}


def warm_up_training(torch, Xtr, ytr, seed: int) -> float:
    """Compile nemon's training kernels (until it trains without compiling for a while) and run a
    few torch steps; returns the seconds it took."""
    from solvers.training import train

    start = time.perf_counter()
    X, y = Xtr[:WARMUP_SAMPLES], ytr[:WARMUP_SAMPLES]
    _steady(lambda: train(_nemon_net(seed), X, y, _config(seed), progress=False), WARMUP_TRAIN_SECONDS)
    twin = TorchConvImplicit(torch, _initial_params(_nemon_net(seed)), lr=LR, gamma=GAMMA, atol=ATOL,
                             max_iter=MAX_ITER)
    twin.epoch(torch.from_numpy(X), torch.from_numpy(y), seed, 0, BATCH_SIZE)
    return time.perf_counter() - start


def bench_epoch(torch, Xtr, ytr, Xte, yte, seed: int) -> dict:
    from solvers.training import train

    net = _nemon_net(seed)
    twin = TorchConvImplicit(torch, _initial_params(net), lr=LR, gamma=GAMMA, atol=ATOL, max_iter=MAX_ITER)
    load_before = os.getloadavg()[0]
    time.sleep(GAP)
    start = time.perf_counter()
    history = train(net, Xtr, ytr, _config(seed), progress=False)
    nemon_s = time.perf_counter() - start
    rec = history[0]
    time.sleep(GAP)
    t = twin.epoch(torch.from_numpy(Xtr), torch.from_numpy(ytr), seed, 0, BATCH_SIZE)
    load = (load_before + os.getloadavg()[0]) / 2
    start = time.perf_counter()
    acc_nemon = net.accuracy(Xte, yte, solver=history.solver)
    eval_nemon = time.perf_counter() - start
    start = time.perf_counter()
    acc_torch = twin.accuracy(Xte, yte)
    eval_torch = time.perf_counter() - start
    return {"nemon_s": nemon_s, "nemon_batches_s": rec["seconds"], "torch_s": t["seconds"],
            "nemon_fwd": rec["fwd_iters"], "torch_fwd": t["fwd_iters"], "nemon_adj": rec["adj_iters"],
            "torch_adj": t["adj_iters"], "nemon_loss": rec["loss"], "torch_loss": t["loss"],
            "unconverged": rec["unconverged"], "mu_inf": rec["mu_inf"], "load": load,
            "acc_nemon": acc_nemon, "acc_torch": acc_torch, "eval_nemon": eval_nemon, "eval_torch": eval_torch,
            "net": net, "solver": history.solver}


def print_epoch(r: dict, n_train: int, n_test: int) -> bool:
    steps = n_train // BATCH_SIZE
    ratio = r["torch_s"] / r["nemon_s"]
    print()
    print(f"(2) One training epoch: Fashion-MNIST, {n_train:,} images ({steps} steps of {BATCH_SIZE}); "
          f"ConvImplicitNetwork((1, 28, 28), {CHANNELS}, {KERNEL}, 10, pool={POOL}, {PADDING}), {ACTIVATION}, float32; "
          f"Adam lr {LR:g}, {CONSTRAINT} gamma {GAMMA}, atol {ATOL:g} (forward and adjoint)")
    print(f"{'':<8} {'epoch s':>8} {'ms/step':>8} {'fwd iters':>9} {'adj iters':>9} {'loss':>8} {'test acc':>8} "
          f"{'eval s':>7}")
    for name in ("nemon", "torch"):
        print(f"{name:<8} {r[name + '_s']:>8.2f} {1e3 * r[name + '_s'] / steps:>8.1f} {r[name + '_fwd']:>9.2f} "
              f"{r[name + '_adj']:>9.2f} {r[name + '_loss']:>8.4f} {r['acc_' + name]:>8.4f} {r['eval_' + name]:>7.1f}")
    gap = abs(r["acc_nemon"] - r["acc_torch"])
    agree = gap <= TARGET_ACC_GAP
    print(f"torch/nemon = {ratio:.2f}; nemon s: the whole train() call (its per-batch sum "
          f"{r['nemon_batches_s']:.2f} s, torch/nemon per step {r['torch_s'] / r['nemon_batches_s']:.2f}; the rest is "
          "the trainer's end-of-epoch work); "
          "iterations: nemon per sample (each stops on its own), torch the batch's count (its slowest sample)")
    print(f"test accuracy on the first {n_test:,} test images: difference {gap:.4f} -> "
          f"{'agree' if agree else 'DISAGREE'} within {TARGET_ACC_GAP}; nemon mu_inf(A) = {r['mu_inf']:.4f}, "
          f"{100 * r['unconverged']:.2f}% forward solves missed atol; 1-min load average {r['load']:.2f}")
    ok = ratio >= TARGET_EPOCH and agree
    r["ratio"], r["gap"], r["ok"] = ratio, gap, ok
    return ok


def profile_nemon(Xtr, ytr, seed: int) -> None:
    """The top lines of a cProfile of nemon training on :data:`PROFILE_SAMPLES` images (warm kernels)."""
    import cProfile
    import io
    import pstats

    from solvers.training import train

    X, y = Xtr[:PROFILE_SAMPLES], ytr[:PROFILE_SAMPLES]
    prof = cProfile.Profile()
    prof.enable()
    train(_nemon_net(seed), X, y, _config(seed), progress=False)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(10)
    print()
    print(f"nemon train() on {len(X)} images ({len(X) // BATCH_SIZE} steps), cProfile by own time:")
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    print("\n".join(line for line in lines[start:] if line.strip()))


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_conv needs PyTorch: pip install torch==2.13.0", file=sys.stderr)
        return 2
    start = time.perf_counter()
    count, limiter = bench_train.set_threads(args.threads)
    bench_train.print_environment(torch, count)
    print(f"torch conv: F.conv2d ({'oneDNN' if torch.backends.mkldnn.is_available() else 'native'}), "
          "circular padding through a preallocated halo buffer")

    solve = bench_solve(torch, args.repeats, args.seed)
    targets = [("conv forward solve", f">= {TARGET_SOLVE:g}x faster than the torch loop",
                print_solve(solve, args.repeats), f"torch/nemon = {solve['ratio']:.2f}x")]

    if not args.skip_train:
        from solvers.training import load_dataset

        try:
            Xtr, ytr, Xte, yte = load_dataset("fashion-mnist", data_dir=args.data_dir)
        except FileNotFoundError as exc:
            print(f"bench_conv: {exc}", file=sys.stderr)
            return 2
        if args.quick:
            Xtr, ytr = Xtr[:QUICK_TRAIN], ytr[:QUICK_TRAIN]
        n_test = args.test_samples or (QUICK_TEST if args.quick else len(Xte))
        Xte, yte = Xte[:n_test], yte[:n_test]
        print()
        print(f"warm-up of training (compilation, {WARMUP_SAMPLES} images of each): "
              f"{warm_up_training(torch, Xtr, ytr, args.seed):.1f} s")
        epoch = bench_epoch(torch, Xtr, ytr, Xte, yte, args.seed)
        ok = print_epoch(epoch, len(Xtr), len(Xte))
        targets.append(("one conv training epoch", f">= {TARGET_EPOCH:g}x faster at equal accuracy "
                        f"(within {TARGET_ACC_GAP})", ok,
                        f"torch/nemon = {epoch['ratio']:.2f}x, accuracy gap {epoch['gap']:.4f}"))
        if args.profile:
            profile_nemon(Xtr, ytr, args.seed)

    if limiter is not None:
        limiter.restore_original_limits()
    print()
    for name, what, ok, detail in targets:
        print(f"target: {name} {what}: {'PASS' if ok else 'FAIL'} ({detail})")
    print(f"{bench_train.load_average()} at end; wall time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
