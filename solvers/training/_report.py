"""Evaluation reports and training-curve figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import contraction

from solvers.engine import blas_threads_for

from ._network import LOCAL_RATE_SAMPLES, ImplicitNetwork, check_count

__all__ = ["evaluate", "format_report", "format_epoch_table", "history_figure", "plot_history"]


def evaluate(net: ImplicitNetwork, X, y, batch_size: int = 1000, eta=None) -> dict:
    """Accuracy, well-posedness and certificates of ``net`` on ``(X, y)``."""
    X = net.check_inputs(X, "X")
    y = net.check_labels(y, len(X), "y")
    batch_size = check_count(batch_size, "batch_size")
    correct, iters, unconverged = 0, [], 0
    s = net.solver
    with blas_threads_for(batch_size, net.n_hidden):
        for i in range(0, len(X), batch_size):
            fp = net.forward_pass(X[i : i + batch_size], s)
            correct += int((fp.Y.argmax(axis=1) == y[i : i + batch_size]).sum())
            iters.append(fp.iterations)
            unconverged += int((~fp.converged).sum())
    A = net.state_operator()
    conv = isinstance(A, contraction.Conv2d)
    A64 = A if conv else A.astype(np.float64)
    iters = np.concatenate(iters)
    per_unit = s.alpha == "per_unit"
    rates = net.local_rates(X[:LOCAL_RATE_SAMPLES], s)
    return {
        "samples": int(len(X)),
        "accuracy": correct / len(X),
        "mu_inf": contraction.mu_inf(A64),
        "mu_inf_weighted": contraction.optimal_weights(A64)[1],  # per channel for a convolution
        "alpha_star": contraction.optimal_alpha(A64),
        "lipschitz_tight": net.lipschitz("tight", eta=eta),
        "lipschitz_paper": net.lipschitz("paper", eta=eta),
        "forward_iterations_mean": float(iters.mean()),
        "forward_iterations_max": int(iters.max()),
        "unconverged": unconverged,
        "local_rate_median": float(np.median(rates)),
        "local_rate_max": float(rates.max()),
        "local_rate_samples": int(len(rates)),
        "step_factor": contraction.contraction_factor(
            A64, contraction.optimal_alpha(A64, per_unit=True) if per_unit else None),
        "per_unit_steps": per_unit,
        "parameters": net.parameter_count(),
        "readout_hidden": getattr(net, "readout_hidden", 0),
        "method": s.method,
        "atol": s.atol,
    }


def format_report(metrics: dict, title: str = "Report") -> str:
    m = metrics
    norms = "||C|| ||D|| ||B||" if m.get("readout_hidden") else "||C|| ||B||"  # D: a hidden readout layer
    lines = [
        title,
        "-" * len(title),
        f"test accuracy               {m['accuracy']:.4f}  ({m['samples']} samples)",
        f"mu_inf(A)                   {m['mu_inf']:.4f}  (best diagonal weights: {m['mu_inf_weighted']:.4f})",
        f"alpha* = 1/(1 - min(0, a_min)) {m['alpha_star']:.4f}",
        f"Lipschitz bound (tight)     {m['lipschitz_tight']:.4g}  = {norms} / (1 - mu)",
        f"Lipschitz bound (paper)     {m['lipschitz_paper']:.4g}  = {norms} / (1 - max(0, mu))",
        f"forward iterations          mean {m['forward_iterations_mean']:.1f}, max {m['forward_iterations_max']} "
        f"({m['method']}, atol {m['atol']:g}; {m['unconverged']} unconverged)",
        f"local rate                  median {m['local_rate_median']:.3f}, max {m['local_rate_max']:.3f} "
        f"(first {m['local_rate_samples']} samples; averaged step{', per unit' if m['per_unit_steps'] else ''}; "
        f"bound {m['step_factor']:.3f})",
        f"parameters                  {m['parameters']}",
    ]
    return "\n".join(lines)


_COLUMNS = (("epoch", "{:>5d}"), ("loss", "{:>8.4f}"), ("train_acc", "{:>9.4f}"), ("val_acc", "{:>8.4f}"),
            ("mu_inf", "{:>7.3f}"), ("alpha_star", "{:>10.3f}"), ("fwd_iters", "{:>9.1f}"),
            ("adj_iters", "{:>9.1f}"), ("local_rate", "{:>10.3f}"), ("lipschitz", "{:>10.4g}"),
            ("seconds", "{:>7.2f}"))


#: Interval training's columns, after ``val_acc``: the epoch's radius and the certified accuracy
#: at it on the first validation samples (``trainer.CERTIFIED_SAMPLES``).
_CERTIFIED_COLUMNS = (("eps", "{:>6.3f}"), ("val_cert", "{:>8.4f}"))


def format_epoch_table(records, header: bool = True, certified: bool = False) -> str:
    """The epoch table's header and one line per record; ``certified``: with the interval
    training's ``eps`` and ``val_cert`` columns (records without them show nan, as do records
    without ``local_rate``, which runs without validation data and older checkpoints lack)."""
    columns = _COLUMNS[:4] + _CERTIFIED_COLUMNS * certified + _COLUMNS[4:]
    lines = []
    if header:
        lines.append(" ".join(f"{name:>{len(fmt.format(1 if 'd' in fmt else 1.0))}}" for name, fmt in columns))
    for r in records:
        r = {"eps": float("nan"), "val_cert": r.get("val_certified", float("nan")), "local_rate": float("nan"), **r}
        lines.append(" ".join(fmt.format(int(r[k]) if "d" in fmt else float(r[k])) for k, fmt in columns))
    return "\n".join(lines)


#: The constraint of a run in plain words, from ``TrainConfig.constraint`` and ``gamma``.
_CONSTRAINT_WORDS = {
    "mu_inf": "projected onto μ∞(A) ≤ {gamma:g}",
    "norm_inf": "projected onto ||A||∞ ≤ {gamma:g}",
    "nemon_param": "seed authors' parametrisation, μ∞(A) ≤ {gamma:g}",
    "mon": "monotone parametrisation, m = {m:g}",
    "none": "unconstrained A",
    "zero": "A = 0 (feed-forward baseline)",
}


def _describe_run(config) -> str:
    """A training configuration in plain words, for a figure title."""
    words = _CONSTRAINT_WORDS.get(config.constraint, config.constraint)
    parts = [words.format(gamma=config.gamma, m=1 - config.gamma),
             f"{config.optimizer} (lr {config.lr:g}{', cosine schedule' if config.schedule == 'cosine' else ''})",
             f"batch {config.batch_size}", f"{config.epochs} epoch{'s' if config.epochs != 1 else ''}"]
    if config.interval_eps > 0:
        parts.append(f"interval training at eps = {config.interval_eps:g} (weight {config.interval_weight:g})")
    if config.lipschitz_weight > 0:
        parts.append(f"Lipschitz penalty {config.lipschitz_weight:g}")
    return _lines("Training: ", parts)


def _lines(head: str, parts, width: int = 100) -> str:
    """``head`` and the comma-separated ``parts``, broken into lines of at most ``width``
    characters between parts (never inside one)."""
    lines, line = [], head
    for i, part in enumerate(parts):
        piece = part + ("," if i < len(parts) - 1 else "")
        if line.strip() and len(line) + 1 + len(piece) > width:
            lines.append(line)
            line = piece
        else:
            line = f"{line}{'' if line.endswith(' ') or not line else ' '}{piece}"
    return "\n".join(lines + [line])


def history_figure(history, title: str = "", n_classes: int | None = None):
    """The training curves of ``history`` as a :class:`matplotlib.figure.Figure` (2 × 2 panels).

    Loss; accuracy (train, validation when recorded, interval-certified validation accuracy
    when the records carry ``val_certified``, and chance level ``1/n_classes`` when given);
    mean solver iterations; the ℓ∞ Lipschitz bound (log scale). ``title`` defaults to the
    run's configuration in words.
    """
    from matplotlib.figure import Figure  # an explicit figure: no pyplot state, no backend choice
    from matplotlib.ticker import LogFormatter, MaxNLocator

    if n_classes is not None and (isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 2):
        raise ValueError(f"n_classes must be an integer >= 2 or None, got {n_classes!r}")
    records = list(history.epochs)
    config = history.config
    classifier = getattr(config, "loss", "cross_entropy") == "cross_entropy"

    def has(key):
        return bool(records) and all(key in r for r in records) and not np.all(np.isnan(history.column(key)))

    ep = history.column("epoch")
    fig = Figure(figsize=(10, 7.5), layout="constrained")
    (ax_loss, ax_acc), (ax_it, ax_lip) = fig.subplots(2, 2, sharex=True)

    ax_loss.plot(ep, history.column("loss"), "o-", label="train")
    ax_loss.set_title("training loss")
    ax_loss.set_ylabel("cross-entropy (nats per sample)" if classifier else "mean squared error")

    if classifier:
        ax_acc.plot(ep, history.column("train_acc"), "o-", label="train")
        if has("val_acc"):
            ax_acc.plot(ep, history.column("val_acc"), "s-", label="validation")
        if has("val_certified"):
            eps = history.column("eps") if has("eps") else np.array([config.interval_eps])
            at = f"eps {eps[-1]:g}" if np.all(eps == eps[-1]) else "training eps"
            ax_acc.plot(ep, history.column("val_certified"), "^-", label=f"validation, certified at {at} (interval)")
        if n_classes is not None:
            ax_acc.axhline(1 / n_classes, color="0.4", ls="--", lw=1, label=f"chance (1/{int(n_classes)})")
        ax_acc.set_ylim(0, 1)
        ax_acc.set_title("accuracy")
        ax_acc.set_ylabel("accuracy (fraction correct)")
    else:  # regression: the validation column holds the mean squared error
        if has("val_acc"):
            ax_acc.plot(ep, history.column("val_acc"), "s-", label="validation")
        ax_acc.set_title("validation error")
        ax_acc.set_ylabel("mean squared error")

    ax_it.plot(ep, history.column("fwd_iters"), "o-", label="forward")
    ax_it.plot(ep, history.column("adj_iters"), "s-", label="adjoint")
    ax_it.set_title("solver iterations (mean over samples)")
    ax_it.set_ylabel("iterations per sample")

    lip = history.column("lipschitz")
    ax_lip.semilogy(ep, lip, "o-", label="tight: 1/(1 − μ)")
    ax_lip.semilogy(ep, history.column("lipschitz_paper"), "s--", label="paper: 1/(1 − max(0, μ))")
    if not np.all(np.isfinite(lip)):  # an empty or gapped panel must say why
        where = "any epoch" if not np.any(np.isfinite(lip)) else "the missing epochs"
        ax_lip.text(0.03, 0.04, f"no bound at {where}: μ∞(A) ≥ 1", transform=ax_lip.transAxes, fontsize=9)
    ax_lip.set_title("l-inf Lipschitz bound, input to logits")
    ax_lip.set_ylabel("bound (logit change per unit of input)")
    # within one decade only minor ticks are in view: plain numbers, not 4.9×10¹
    ax_lip.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))

    for ax in (ax_loss, ax_acc, ax_it, ax_lip):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    for ax in (ax_it, ax_lip):
        ax.set_xlabel("epoch")
    fig.suptitle(title or _describe_run(config))
    return fig


def plot_history(history, path, title: str = "", n_classes: int | None = None) -> Path:
    """Write :func:`history_figure` to ``path`` (PNG, or any format matplotlib infers from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    history_figure(history, title=title, n_classes=n_classes).savefig(path, dpi=150)
    return path
