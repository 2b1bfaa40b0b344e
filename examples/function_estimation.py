"""Function estimation: certified Lipschitz bounds against the measured slope of the fit.

Implicit networks ``x = relu(A x + B u + b)``, ``y = C x + c`` with one input and one output
are fitted (mean squared error, Adam) to the 1-D function of ``load_dataset("function")``,
``f(u) = sin(3u) + |u|/2`` on ``[-1, 1]`` (largest slope 3.5, at the kink ``u = 0``), under
every constraint of ``solvers.training.CONSTRAINTS``: the projections onto
``{μ∞(A) ≤ γ}`` and ``{‖A‖∞ ≤ γ}``, the seed authors' parametrisation (``μ∞,η(A) ≤ γ`` in
its own weights ``η = e^(−d)``), the monotone parametrisation (``m = 1 − γ``; an ℓ2, not an
ℓ∞, guarantee) and no constraint, for each ``γ`` of ``--gammas``, plus one ``μ∞`` run with the
Lipschitz regulariser ``λ_L ‖C‖∞ ‖B‖∞ / (1 − μ∞(A))`` in the loss.

For each model the table gives the training and test MSE, the certified ℓ∞ Lipschitz bound of
``u ↦ y`` (``net.lipschitz("tight", eta)`` = ``‖C diag(η)‖∞ ‖diag(η)⁻¹ B‖∞ / (1 − μ∞,η(A))``;
``inf`` without an ℓ∞ certificate), the seed paper's form (divides by ``1 − max(0, μ)``) and
the largest slope of the fitted function, ``max |Δy/Δu|`` over 10,001 equally spaced points of
``[-1, 1]`` (equilibria solved to ``1e-11`` in float64, so solver error cannot fake a slope).
A finite bound must be at least that slope: the script asserts it and prints ``bound holds``.

Run (from the repository root, with the package installed or ``PYTHONPATH=.``)::

    python examples/function_estimation.py --out out/function_estimation.png
    python examples/function_estimation.py --gammas 0.3,0.6,0.9 --epochs 300
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np

import contraction
from solvers import solve
from solvers.cli import positive_int
from solvers.training import ImplicitNetwork, load_dataset, make_constraint, train

#: Equally spaced points of [-1, 1] on which the slope of each fit is measured.
GRID_POINTS = 10_001
#: Solver tolerance and iteration limit for the evaluation (float64): far below the grid step.
EVAL_ATOL = 1e-11
EVAL_MAX_ITER = 100_000
#: Relative slack of the assertion ``slope ≤ bound`` (floating-point rounding only).
BOUND_RTOL = 1e-6
#: Constraints with a bound γ, in table order; "none" is added once at the end.
CONSTRAINED = ("mu_inf", "norm_inf", "nemon_param", "mon")


@dataclasses.dataclass(frozen=True)
class Spec:
    constraint: str
    gamma: float
    lipschitz_weight: float = 0.0

    @property
    def label(self) -> str:
        if self.constraint == "none":
            return "none"
        text = f"{self.constraint} γ={self.gamma:g}"
        return text + (f" +Lip {self.lipschitz_weight:g}" if self.lipschitz_weight > 0 else "")


def _gammas(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(g) and 0.0 <= g < 1.0 for g in values):
        raise argparse.ArgumentTypeError(f"every gamma must lie in [0, 1), got {text!r}")
    return values


def _outputs(net: ImplicitNetwork, U: np.ndarray) -> tuple[np.ndarray, bool]:
    """``y(u)`` for every row of ``U``, solved to ``EVAL_ATOL``; and whether every solve converged."""
    U = np.asarray(U, dtype=np.float64)
    W = U @ net.B.T.astype(np.float64) + net.b.astype(np.float64)
    res = solve(net.A.astype(np.float64), W, method=net.solver.method, atol=EVAL_ATOL, max_iter=EVAL_MAX_ITER,
                activation=net.activation, engine=net.solver.engine, check=False)
    Y = res.x @ net.C.T.astype(np.float64) + net.c.astype(np.float64)
    return Y, bool(np.all(res.converged))


def fit(spec: Spec, data, *, hidden: int, epochs: int, lr: float, seed: int) -> dict:
    """Train one model and measure its errors, certificates and slope."""
    Xtr, ytr, Xte, yte = data
    net = ImplicitNetwork(1, hidden, 1, seed=seed, dtype=np.float64)
    start = time.perf_counter()
    hist = train(net, Xtr, ytr, epochs=epochs, batch_size=100, lr=lr, constraint=spec.constraint,
                 gamma=spec.gamma, lipschitz_weight=spec.lipschitz_weight, loss="mse", seed=seed, progress=False)
    seconds = time.perf_counter() - start
    eta = make_constraint(spec.constraint, spec.gamma).weights(hist.state.raw)
    grid = np.linspace(-1.0, 1.0, GRID_POINTS).reshape(-1, 1)
    y_grid, grid_ok = _outputs(net, grid)
    y_train, train_ok = _outputs(net, Xtr)
    y_test, test_ok = _outputs(net, Xte)
    slope = float(np.max(np.abs(np.diff(y_grid[:, 0])) / np.diff(grid[:, 0])))
    return {
        "spec": spec,
        "train_mse": float(np.mean((y_train - ytr) ** 2)),
        "test_mse": float(np.mean((y_test - yte) ** 2)),
        "mu": contraction.mu_inf(net.A.astype(np.float64), eta),
        "weighted": eta is not None,
        "bound": net.lipschitz("tight", eta=eta),
        "bound_paper": net.lipschitz("paper", eta=eta),
        "slope": slope,
        "converged": grid_ok and train_ok and test_ok,
        "grid": grid[:, 0],
        "y_grid": y_grid[:, 0],
        "seconds": seconds,
    }


def check_bound(row: dict) -> str:
    """``bound holds`` / ``no l-inf bound``; raises ``AssertionError`` when a finite bound fails."""
    if not math.isfinite(row["bound"]):
        return "no l-inf bound"
    assert row["converged"], f"{row['spec'].label}: the evaluation solves did not converge"
    assert row["slope"] <= row["bound"] * (1.0 + BOUND_RTOL), (
        f"{row['spec'].label}: measured slope {row['slope']:.6g} exceeds the certified bound {row['bound']:.6g}")
    assert row["bound"] <= row["bound_paper"] * (1.0 + BOUND_RTOL), f"{row['spec'].label}: tight > paper bound"
    return "bound holds"


def format_table(rows) -> str:
    header = (f"{'model':<26} {'train MSE':>9} {'test MSE':>9} {'mu(A)':>7} {'bound':>9} {'paper':>9} "
              f"{'slope':>6} {'bound/slope':>11} {'time s':>6}  check")
    lines = [header, "-" * len(header)]
    for r in rows:
        mu = f"{r['mu']:.3f}" + ("η" if r["weighted"] else " ")
        ratio = r["bound"] / r["slope"] if r["slope"] > 0 else math.inf
        lines.append(f"{r['spec'].label:<26} {r['train_mse']:>9.2e} {r['test_mse']:>9.2e} {mu:>7} "
                     f"{r['bound']:>9.4g} {r['bound_paper']:>9.4g} {r['slope']:>6.3f} {ratio:>11.4g} "
                     f"{r['seconds']:>6.1f}  {r['check']}"
                     + ("" if r["converged"] else " (evaluation solves unconverged)"))
    return "\n".join(lines)


def plot(rows, data, path: Path, shown) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Xtr, ytr, _, _ = data
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1, 1, 1.35]})
    grid = rows[0]["grid"]
    target = np.sin(3.0 * grid) + 0.5 * np.abs(grid)
    colours = plt.get_cmap("tab10")

    ax = axes[0]
    ax.plot(Xtr[:, 0], ytr[:, 0], ".", color="0.75", ms=3, label="training data")
    ax.plot(grid, target, "k-", lw=3, alpha=0.35, label="target f(u)")
    for k, r in enumerate(shown):
        ax.plot(grid, r["y_grid"], "-", lw=1.2, color=colours(k), label=r["spec"].label)
    ax.set_title("target and fits")
    ax.set_xlabel("u")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1]
    for k, r in enumerate(shown):
        ax.plot(grid, r["y_grid"] - target, "-", lw=1.2, color=colours(k), label=r["spec"].label)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_title("fit error y(u) − f(u)")
    ax.set_xlabel("u")
    ax.legend(fontsize=8, loc="lower left")

    ax = axes[2]
    pos = np.arange(len(rows))
    finite = [math.isfinite(r["bound"]) for r in rows]
    slopes = np.array([r["slope"] for r in rows])
    tallest = max([r["bound_paper"] for r, ok in zip(rows, finite) if ok] + [slopes.max()]) * 2
    ax.bar(pos, [r["bound"] if ok else np.nan for r, ok in zip(rows, finite)], 0.6, color="tab:blue",
           alpha=0.8, label="certified bound (tight)")
    ax.plot(pos, [r["bound_paper"] if ok else np.nan for r, ok in zip(rows, finite)], "_", color="k", ms=22,
            mew=2, label="certified bound (paper form)")
    for p, r, ok in zip(pos, rows, finite):
        if ok:
            ax.text(p, r["bound_paper"] * 1.25, f"×{r['bound'] / r['slope']:.3g}", ha="center", va="bottom",
                    fontsize=8)
        else:
            ax.bar(p, tallest, 0.6, color="none", edgecolor="tab:red", hatch="//", lw=0.8)
            ax.text(p, (tallest * slopes.min()) ** 0.5, "no ℓ∞ bound", rotation=90, ha="center", va="center",
                    fontsize=8, color="tab:red", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    ax.plot(pos, slopes, "D", color="tab:orange", ms=7, mec="k", label="measured max |Δy/Δu| of the fit")
    ax.axhline(3.5, color="k", ls=":", lw=1, label="largest slope of the target (3.5)")
    ax.set_yscale("log")
    ax.set_ylim(slopes.min() / 2, tallest * 12)
    ax.set_xticks(pos)
    ax.set_xticklabels([r["spec"].label for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("ℓ∞ Lipschitz constant of u ↦ y")
    ax.set_title("certified bound vs measured slope (×: bound / slope)")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/function_estimation.png"), help="figure path")
    parser.add_argument("--epochs", type=positive_int, default=100, help="training epochs per model (default 100)")
    parser.add_argument("--hidden", type=positive_int, default=40, help="hidden units n (default 40)")
    parser.add_argument("--gammas", type=_gammas, default=_gammas("0.5,0.9"),
                        help="comma-separated bounds for the constrained models (default 0.5,0.9)")
    parser.add_argument("--lipschitz-weight", type=float, default=1e-4,
                        help="weight of the Lipschitz regulariser in the extra mu_inf run (default 1e-4)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 1e-2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, initialisation and batches")
    args = parser.parse_args(argv)
    if not args.lipschitz_weight > 0:
        parser.error(f"--lipschitz-weight must be > 0, got {args.lipschitz_weight}")

    start = time.perf_counter()
    data = load_dataset("function", seed=args.seed)
    specs = [Spec(name, g) for name in CONSTRAINED for g in args.gammas]
    specs.append(Spec("mu_inf", max(args.gammas), args.lipschitz_weight))
    specs.append(Spec("none", 0.0))
    print(f"f(u) = sin(3u) + |u|/2: {len(data[0])} training points, {len(data[2])} test points; "
          f"n = {args.hidden}, {args.epochs} epochs of Adam (lr {args.lr:g}, batch 100), relu, float64")
    rows = []
    for spec in specs:
        row = fit(spec, data, hidden=args.hidden, epochs=args.epochs, lr=args.lr, seed=args.seed)
        row["check"] = check_bound(row)
        rows.append(row)
    print(format_table(rows))
    print("mu(A): mu_inf(A), or mu_inf,eta(A) in the parametrisation's weights (η); bound = ||C||·||B|| / (1 - mu)"
          " (weighted), paper = the same over 1 - max(0, mu) (equal when mu >= 0); slope = max |Δy/Δu| on "
          f"{GRID_POINTS:,} points of [-1, 1]")
    by_label = {r["spec"].label: r for r in rows}
    g = max(args.gammas)
    wanted = [Spec("mu_inf", g), Spec("mu_inf", g, args.lipschitz_weight), Spec("nemon_param", g),
              Spec("mon", g), Spec("none", 0.0)]
    shown = [by_label[s.label] for s in wanted]
    path = plot(rows, data, args.out, shown)
    print(f"figure: {path}")
    print(f"total time {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
