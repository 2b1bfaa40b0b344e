"""Evaluation reports and training-curve figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import contraction

from solvers import solve
from solvers.engine import blas_threads_for

from ._network import ImplicitNetwork

__all__ = ["evaluate", "format_report", "format_epoch_table", "plot_history"]


def evaluate(net: ImplicitNetwork, X, y, batch_size: int = 1000, eta=None) -> dict:
    """Accuracy, well-posedness and certificates of ``net`` on ``(X, y)``."""
    X = np.asarray(X)
    y = np.asarray(y)
    correct, iters, unconverged = 0, [], 0
    s = net.solver
    with blas_threads_for(batch_size, net.n_hidden):
        for i in range(0, len(X), batch_size):
            U = np.ascontiguousarray(X[i : i + batch_size], dtype=net.dtype)
            W = U @ net.B.T + net.b
            res = solve(net.A, W, method=s.method, atol=s.atol, max_iter=s.max_iter, activation=net.activation,
                        engine=s.engine, check=False)
            Y = res.x @ net.C.T + net.c
            correct += int((Y.argmax(axis=1) == y[i : i + batch_size]).sum())
            iters.append(res.iterations)
            unconverged += int((~res.converged).sum())
    A64 = net.A.astype(np.float64)
    iters = np.concatenate(iters)
    return {
        "samples": int(len(X)),
        "accuracy": correct / len(X),
        "mu_inf": contraction.mu_inf(A64),
        "mu_inf_weighted": contraction.optimal_weights(A64)[1],
        "alpha_star": contraction.optimal_alpha(A64),
        "lipschitz_tight": net.lipschitz("tight", eta=eta),
        "lipschitz_paper": net.lipschitz("paper", eta=eta),
        "forward_iterations_mean": float(iters.mean()),
        "forward_iterations_max": int(iters.max()),
        "unconverged": unconverged,
        "parameters": net.parameter_count(),
        "method": s.method,
        "atol": s.atol,
    }


def format_report(metrics: dict, title: str = "Report") -> str:
    m = metrics
    lines = [
        title,
        "-" * len(title),
        f"test accuracy               {m['accuracy']:.4f}  ({m['samples']} samples)",
        f"mu_inf(A)                   {m['mu_inf']:.4f}  (best diagonal weights: {m['mu_inf_weighted']:.4f})",
        f"alpha* = 1/(1 - min(0, a_min)) {m['alpha_star']:.4f}",
        f"Lipschitz bound (tight)     {m['lipschitz_tight']:.4g}  = ||C|| ||B|| / (1 - mu)",
        f"Lipschitz bound (paper)     {m['lipschitz_paper']:.4g}  = ||C|| ||B|| / (1 - max(0, mu))",
        f"forward iterations          mean {m['forward_iterations_mean']:.1f}, max {m['forward_iterations_max']} "
        f"({m['method']}, atol {m['atol']:g}; {m['unconverged']} unconverged)",
        f"parameters                  {m['parameters']}",
    ]
    return "\n".join(lines)


_COLUMNS = (("epoch", "{:>5d}"), ("loss", "{:>8.4f}"), ("train_acc", "{:>9.4f}"), ("val_acc", "{:>8.4f}"),
            ("mu_inf", "{:>7.3f}"), ("alpha_star", "{:>10.3f}"), ("fwd_iters", "{:>9.1f}"),
            ("adj_iters", "{:>9.1f}"), ("lipschitz", "{:>10.4g}"), ("seconds", "{:>7.2f}"))


def format_epoch_table(records, header: bool = True) -> str:
    lines = []
    if header:
        lines.append(" ".join(f"{name:>{len(fmt.format(1 if 'd' in fmt else 1.0))}}" for name, fmt in _COLUMNS))
    for r in records:
        lines.append(" ".join(fmt.format(int(r[k]) if "d" in fmt else float(r[k])) for k, fmt in _COLUMNS))
    return "\n".join(lines)


def plot_history(history, path, title: str = "") -> Path:
    """Loss, accuracies, solver iterations and the Lipschitz bound per epoch."""
    from matplotlib.figure import Figure  # an explicit figure: no pyplot state, no backend choice

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ep = history.column("epoch")
    fig = Figure(figsize=(16, 3.8))
    axes = fig.subplots(1, 4)
    axes[0].plot(ep, history.column("loss"), "o-")
    axes[0].set_title("training loss")
    axes[1].plot(ep, history.column("train_acc"), "o-", label="train")
    axes[1].plot(ep, history.column("val_acc"), "s-", label="test")
    axes[1].set_title("accuracy")
    axes[1].legend()
    axes[2].plot(ep, history.column("fwd_iters"), "o-", label="forward")
    axes[2].plot(ep, history.column("adj_iters"), "s-", label="adjoint")
    axes[2].set_title("mean solver iterations per batch")
    axes[2].legend()
    axes[3].semilogy(ep, history.column("lipschitz"), "o-", label="tight")
    axes[3].semilogy(ep, history.column("lipschitz_paper"), "s--", label="paper")
    axes[3].set_title("l-inf Lipschitz bound (input to logits)")
    axes[3].legend()
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
