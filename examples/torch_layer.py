"""A PyTorch training loop with nemon's implicit layer: certified well-posed at every step.

The model is ``solvers.torch.ImplicitLayer(784, n)`` (``x = relu(A x + B u + b)``, whose forward
pass is nemon's compiled solve and backward pass the adjoint solve) followed by
``torch.nn.Linear(n, 10)``, trained with ``torch.optim.Adam`` and a cosine learning-rate decay on
mnist5k (4,000 training and 1,000 test digits, pixels in [0, 1]). ``project_after_step``
projects ``A`` onto ``{μ∞(A) ≤ γ}`` after every step, so that every iterate of training has a
unique equilibrium for every input. With ``--train-eps ε`` the loss also takes the cross-entropy
of the worst-case logits over the ℓ∞ ball of radius ε (``interval_bounds`` and
``worst_case_logits``, differentiable), weighted by ``--interval-weight``: certified training
inside the same loop.

Per epoch the table gives the training loss, the test accuracy, ``μ∞(A)``, the mean forward
iterations per sample (``layer.solve`` of the test set) and the seconds so far; then the layer's
certificate (``layer.certificate(readout)``: μ∞, α*, the contraction factor, the ℓ∞ Lipschitz
bound of the logits) and, for each ``--eps``, the test accuracy certified by the interval bounds
of the ε-ball (clipped to [0, 1]). The figure shows (a) the test accuracy and the loss per epoch
and (b) the certified accuracy against ε.

Torch and numba run on one thread each unless ``--threads`` says otherwise: a batch of 50 × 100
states gains little from a second thread, and torch's and numba's OpenMP pools (two copies of
libgomp) spinning against each other on a busy 2-core machine made an epoch 20 to 80 times slower
(benchmarks/README.md, ``bench_torch_layer.py``).

Run (from the repository root, with the package and torch installed, or ``PYTHONPATH=.``)::

    python examples/torch_layer.py --out out/torch_layer.png
    python examples/torch_layer.py --train-eps 0.02 --eps 0.005,0.01,0.02 --out out/torch_robust.png
    python examples/torch_layer.py --quick
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numba
import torch

from solvers.cli import positive_int
from solvers.torch import ImplicitLayer, interval_bounds, project_after_step, worst_case_logits
from solvers.training import load_dataset

#: Settings of ``--quick`` (the tests): a small layer on a slice of the data, one epoch.
QUICK = {"epochs": 1, "hidden": 20, "train": 400, "test": 200, "eps": [0.001, 0.01]}
#: Test samples per call of the layer when evaluating.
EVAL_BATCH = 500


def _radii(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated radii >= 0, got {text!r}")
    return values


def _nonnegative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def build_model(hidden: int, gamma: float, seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(ImplicitLayer(784, hidden, gamma=gamma), torch.nn.Linear(hidden, 10))


def robust_loss(model, u, y, eps: float) -> torch.Tensor:
    """Cross-entropy of the worst-case logits over the ε-ball of ``u`` (clipped to [0, 1])."""
    x_lo, x_hi = interval_bounds(model[0], (u - eps).clamp(min=0), (u + eps).clamp(max=1))
    return torch.nn.functional.cross_entropy(worst_case_logits(model[1], x_lo, x_hi, y), y)


def evaluate(model, X, y, eps_list) -> dict:
    """Test accuracy, mean forward iterations and the interval-certified accuracy at each ε."""
    layer, readout = model
    correct, iterations, certified = 0, 0.0, dict.fromkeys(eps_list, 0)
    with torch.no_grad():
        for i in range(0, len(X), EVAL_BATCH):
            u, labels = X[i : i + EVAL_BATCH], y[i : i + EVAL_BATCH]
            result = layer.solve(u)
            logits = readout(torch.from_numpy(result.x))
            correct += int((logits.argmax(1) == labels).sum())
            iterations += float(result.iterations.sum())
            for eps in eps_list:
                x_lo, x_hi = interval_bounds(layer, (u - eps).clamp(min=0), (u + eps).clamp(max=1))
                z = worst_case_logits(readout, x_lo, x_hi, labels).scatter(1, labels[:, None], -math.inf)
                certified[eps] += int((z < 0).all(dim=1).sum())
    return {"accuracy": correct / len(X), "iterations": iterations / len(X),
            "certified": {eps: count / len(X) for eps, count in certified.items()}}


def train(model, data, *, epochs: int, batch_size: int, lr: float, train_eps: float, interval_weight: float,
          eps_list, seed: int, report=print) -> list[dict]:
    """Adam with a cosine decay; one row per epoch (evaluation not counted in ``seconds``)."""
    X, y, Xt, yt = data
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    project_after_step(optimizer, model)
    steps = epochs * math.ceil(len(X) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    order = torch.Generator().manual_seed(seed)
    rows, seconds = [], 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total = 0.0
        for idx in torch.randperm(len(X), generator=order).split(batch_size):
            u, labels = X[idx], y[idx]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(u), labels)
            if train_eps > 0:
                loss = (1 - interval_weight) * loss + interval_weight * robust_loss(model, u, labels, train_eps)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.detach().item() * len(idx)
        seconds += time.perf_counter() - start
        last = epoch == epochs
        result = evaluate(model, Xt, yt, eps_list if last else [])
        row = {"epoch": epoch, "loss": total / len(X), "seconds": seconds, "mu": model[0].certificate().mu_inf,
               **result}
        rows.append(row)
        report(f"{epoch:>5} {row['loss']:>9.4f} {row['accuracy']:>9.4f} {row['mu']:>8.4f} "
               f"{row['iterations']:>10.1f} {seconds:>8.2f}")
    return rows


def plot(rows, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure  # an explicit figure: no pyplot state, no backend choice

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_acc, ax_cert = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    ax_acc.plot(epochs, [r["accuracy"] for r in rows], "o-", color="tab:blue", label="test accuracy")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_ylim(top=1.0)
    ax_loss = ax_acc.twinx()
    ax_loss.plot(epochs, [r["loss"] for r in rows], "s--", color="tab:red", label="training loss")
    ax_loss.set_ylabel("training loss")
    ax_acc.legend(handles=ax_acc.get_lines() + ax_loss.get_lines(), loc="center")
    ax_acc.set_title(f"(a) training, mu_inf(A) <= gamma after every step\n(last: mu_inf = {rows[-1]['mu']:.4f})")
    certified = rows[-1]["certified"]
    radii = [0.0] + sorted(certified)
    ax_cert.plot(radii, [rows[-1]["accuracy"]] + [certified[e] for e in sorted(certified)], "o-", color="tab:green")
    ax_cert.set_xlabel("l-inf radius eps (pixel units, data in [0, 1])")
    ax_cert.set_ylabel("test accuracy certified by interval bounds")
    ax_cert.set_ylim(0, 1)
    ax_cert.set_title("(b) certified accuracy (embedded network, torch)")
    for ax in (ax_acc, ax_cert):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/torch_layer.png"), help="figure path")
    parser.add_argument("--epochs", type=positive_int, default=8, help="training epochs (default 8)")
    parser.add_argument("--hidden", type=positive_int, default=100, help="hidden units n (default 100)")
    parser.add_argument("--batch-size", type=positive_int, default=50, help="batch size (default 50)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's initial learning rate (default 3e-3)")
    parser.add_argument("--gamma", type=float, default=0.9, help="the bound mu_inf(A) <= gamma (default 0.9)")
    parser.add_argument("--train-eps", type=_nonnegative, default=0.0,
                        help="l-inf radius of interval-bound training (default 0: plain training)")
    parser.add_argument("--interval-weight", type=_nonnegative, default=0.5,
                        help="weight of the worst-case loss when --train-eps > 0 (default 0.5)")
    parser.add_argument("--eps", type=_radii, default=[0.001, 0.002, 0.005, 0.01],
                        help="radii of the certified accuracy (default 0.001,0.002,0.005,0.01)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="threads of torch and of numba's engine (default 1: see the module docstring)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['epochs']} epoch, n = {QUICK['hidden']}, the first {QUICK['train']} training and "
                             f"{QUICK['test']} test digits")
    args = parser.parse_args(argv)
    if not 0.0 <= args.gamma < 1.0:
        parser.error(f"--gamma must lie in [0, 1), got {args.gamma}")
    if args.interval_weight > 1:
        parser.error(f"--interval-weight must lie in [0, 1], got {args.interval_weight}")
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    X, y, Xt, yt = (torch.from_numpy(a) for a in load_dataset("mnist5k"))
    if args.quick:
        args.epochs, args.hidden, args.eps = QUICK["epochs"], QUICK["hidden"], QUICK["eps"]
        X, y, Xt, yt = X[: QUICK["train"]], y[: QUICK["train"]], Xt[: QUICK["test"]], yt[: QUICK["test"]]

    start = time.perf_counter()
    model = build_model(args.hidden, args.gamma, args.seed)
    mode = f"interval training at eps = {args.train_eps:g} (weight {args.interval_weight:g})" if args.train_eps else \
        "plain training"
    print(f"mnist5k: {len(X)} training / {len(Xt)} test digits; ImplicitLayer(784, {args.hidden}) + Linear("
          f"{args.hidden}, 10), relu, float32, atol 1e-4, mu_inf(A) <= {args.gamma:g} projected after every step; "
          f"Adam lr {args.lr:g} (cosine), batch {args.batch_size}, {mode}; torch {torch.__version__}; "
          f"{torch.get_num_threads()} torch and {numba.get_num_threads()} numba threads")
    print()
    print(f"{'epoch':>5} {'loss':>9} {'test acc':>9} {'mu_inf':>8} {'fwd iters':>10} {'train s':>8}")
    rows = train(model, (X, y, Xt, yt), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 train_eps=args.train_eps, interval_weight=args.interval_weight, eps_list=args.eps, seed=args.seed)
    print()
    print(f"certificate: {model[0].certificate(readout=model[1])}")
    print("certified test accuracy (interval bounds): "
          + ", ".join(f"eps {eps:g}: {acc:.4f}" for eps, acc in rows[-1]["certified"].items()))
    print(f"final test accuracy {rows[-1]['accuracy']:.4f} after {rows[-1]['seconds']:.1f} s of training "
          f"({time.perf_counter() - start:.1f} s in all)")
    path = plot(rows, args.out, f"nemon's ImplicitLayer in a torch loop on mnist5k ({mode})")
    print(f"figure written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
