"""Well-posedness regions: which conditions certify an implicit network ``x = σ(Ax + Bu + b)``?

Panel (a) slices matrix space along the 2×2 family ``A(p, q) = [[p, q], [1/2, 0]]`` and
outlines where each condition of DESIGN.md section 3 certifies well-posedness. The diagonal
entry ``p`` may be strongly negative, as in the seed paper's ``[[-100, 50], [0, 0]]``: the
ℓ∞ log-norm lets a row with a negative self-loop carry large off-diagonal weights, so the
``nemon`` polytope ``p + |q| < 1`` is a wedge that contains the ``idl_norm`` diamond and
outgrows the ``mon`` parabola ``p < 1 − (q + 1/2)²/4`` (which pokes out of it only near the
corner ``p = 1, q = 0``); the best diagonal weights (``nemon_weighted``, ``p < 1 − |q|/2``)
widen it further. ``lben`` is larger still: ``|x|ᵀΛ⌈A⌉|x| ≥ xᵀΛAx`` shows that
``nemon_weighted ⇒ lben``, at the price of a semidefinite program.

Panels (b) and (c) count the random matrices each condition certifies as the size ``n``
grows. In a sparse ensemble with heterogeneous self-loops (the random analogue of the paper's
example) ``nemon`` certifies far more than ``mon`` and ``idl``; in a dense isotropic Gaussian
ensemble the ℓ∞ row sums grow like ``√n`` while ``μ₂`` stays near ``s√2``, so ``mon`` wins:
which polytope is largest depends on the structure of ``A``.

Run from the repository root (with the package installed, or ``PYTHONPATH=.``)::

    python examples/wellposedness_regions.py --out out/wellposedness_regions.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import contraction

#: Conditions in plotting order; each one's region is ``value < 1``.
CONDITIONS = ("lben", "nemon_weighted", "nemon", "mon", "idl_spectral", "idl_norm")
LABELS = {
    "nemon": r"nemon: $\mu_\infty(A) < 1$",
    "nemon_weighted": r"nemon_weighted: $\alpha(\lceil A \rceil) < 1$",
    "idl_norm": r"idl_norm: $\|A\|_\infty < 1$",
    "idl_spectral": r"idl_spectral: $\rho(|A|) < 1$",
    "mon": r"mon: $\mu_2(A) < 1$",
    "lben": r"lben: diag. $\Lambda$, $\Lambda(I-A)+(I-A)^\top\Lambda \succ 0$ (= nemon_weighted for $q>0$)",
}
COLOURS = {
    "nemon": "#d62728",
    "nemon_weighted": "#ff7f0e",
    "idl_norm": "#1f77b4",
    "idl_spectral": "#17becf",
    "mon": "#2ca02c",
    "lben": "#7f7f7f",
}
#: Table and legend order; (line style, width) per condition in the figure.
ORDER = ("nemon", "nemon_weighted", "idl_norm", "idl_spectral", "mon", "lben")
STYLE = {
    "nemon": ("-", 3.0),
    "nemon_weighted": ("-", 2.2),
    "idl_norm": ("-", 2.2),
    "idl_spectral": ("--", 2.2),
    "mon": ("-", 2.2),
    "lben": (":", 2.6),
}
COUPLING = 0.5  # the fixed entry A[1, 0] of the 2×2 family
P_RANGE = (-10.0, 8.0)  # nothing is certified for p >= 1: room for the zoom inset
Q_RANGE = (-10.0, 10.0)
ZOOM = ((-1.5, 1.5), (-2.5, 2.5))  # (p, q) window of the inset
EXAMPLE_POINT = (-6.0, 6.0)  # certified by nemon, by neither mon nor idl
LBEN_COARSENING = 4  # the LBEN semidefinite program runs on a 4 times coarser grid
LBEN_MAX_N = 20  # above this size the SDP is skipped ("-" in the table)
GAUSSIAN_SCALE = 0.5  # A = s G / sqrt(n): spectral radius about s for every n
DIAG_RANGE = (0.1, 100.0)  # self-inhibition d_i of the sparse ensemble, log-uniform
SPARSE_INPUTS = 2  # off-diagonal entries per row of the sparse ensemble


def family(p: float, q: float) -> np.ndarray:
    """``A(p, q) = [[p, q], [1/2, 0]]``: a negative self-loop ``p`` carrying an input ``q``."""
    return np.array([[p, q], [COUPLING, 0.0]])


def _values(A: np.ndarray, conditions) -> dict[str, float]:
    """Each condition's value (``< 1`` certifies); a failed LBEN program counts as not certified."""
    cheap = [c for c in conditions if c != "lben"]
    out = {r.name: r.value for r in contraction.wellposedness(A, conditions=cheap)} if cheap else {}
    if "lben" in conditions:
        try:
            out["lben"] = contraction.lben_value(A)
        except RuntimeError:  # cvxpy could not solve the semidefinite program
            out["lben"] = np.inf
    return out


def region_grids(grid: int, p_range, q_range) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``name -> (P, Q, values)`` over the family; LBEN on a coarser grid (it is an SDP)."""
    grids = {}
    cheap = [c for c in CONDITIONS if c != "lben"]
    for size, names in ((grid, cheap), (max(grid // LBEN_COARSENING, 5), ["lben"])):
        P, Q = np.meshgrid(np.linspace(*p_range, size), np.linspace(*q_range, size))
        vals = {c: np.empty_like(P) for c in names}
        for idx in np.ndindex(P.shape):
            for c, v in _values(family(P[idx], Q[idx]), names).items():
                vals[c][idx] = v
        grids.update({c: (P, Q, vals[c]) for c in names})
    return grids


def gaussian(n: int, rng: np.random.Generator) -> np.ndarray:
    """Dense isotropic ``A = s G / √n`` (``G`` standard normal)."""
    return GAUSSIAN_SCALE * rng.standard_normal((n, n)) / np.sqrt(n)


def sparse_heterogeneous(n: int, rng: np.random.Generator) -> np.ndarray:
    """``a_ii = −d_i`` and ``SPARSE_INPUTS`` inputs ``a_ij = (1 + d_i) g_ij / (2 SPARSE_INPUTS)`` per row.

    The random analogue of the paper's ``[[-100, 50], [0, 0]]``: a unit with a strong
    self-inhibition ``d_i`` (log-uniform over three decades) may carry strong inputs.
    """
    d = np.exp(rng.uniform(*np.log(DIAG_RANGE), n))
    A = np.zeros((n, n))
    for i in range(n):
        cols = rng.choice(np.delete(np.arange(n), i), size=min(SPARSE_INPUTS, n - 1), replace=False)
        A[i, cols] = (1.0 + d[i]) * rng.standard_normal(cols.size) / (2 * SPARSE_INPUTS)
    A[np.diag_indices(n)] = -d
    return A


ENSEMBLES = {
    "sparse, heterogeneous self-loops": (
        sparse_heterogeneous,
        rf"$a_{{ii}}=-d_i,\ d_i \sim \log\mathcal{{U}}{DIAG_RANGE}$; {SPARSE_INPUTS} inputs/row "
        rf"$a_{{ij}}=(1+d_i)\,g_{{ij}}/{2 * SPARSE_INPUTS}$",
    ),
    "dense Gaussian": (gaussian, rf"$A = {GAUSSIAN_SCALE}\,G/\sqrt{{n}}$"),
}


def certified_fractions(sample, sizes, trials: int, rng) -> dict[int, dict[str, float]]:
    """``n -> condition -> fraction certified`` over ``trials`` draws (``nan``: skipped)."""
    table = {}
    for n in sizes:
        names = [c for c in CONDITIONS if c != "lben" or n <= LBEN_MAX_N]
        counts = dict.fromkeys(names, 0)
        for _ in range(trials):
            for c, v in _values(sample(n, rng), names).items():
                counts[c] += v < 1.0
        table[n] = {c: counts[c] / trials if c in counts else np.nan for c in CONDITIONS}
    return table


def format_table(title: str, table) -> str:
    header = f"{'n':>4} " + " ".join(f"{c:>14}" for c in ORDER)
    lines = [title, header, "-" * len(header)]
    for n, row in table.items():
        cells = ("-" if np.isnan(row[c]) else f"{row[c]:.3f}" for c in ORDER)
        lines.append(f"{n:>4} " + " ".join(f"{s:>14}" for s in cells))
    return "\n".join(lines)


def _draw_regions(ax, grids) -> None:
    # Only lben and the two nemon regions are filled; every region is outlined so nesting stays readable.
    fills = {"lben": 0.10, "nemon_weighted": 0.16, "nemon": 0.32}
    for c in CONDITIONS:
        P, Q, V = grids[c]
        if c in fills:
            ax.contourf(P, Q, V, levels=[-np.inf, 1.0], colors=[COLOURS[c]], alpha=fills[c])
        ax.contour(P, Q, V, levels=[1.0], colors=[COLOURS[c]], linewidths=STYLE[c][1], linestyles=STYLE[c][0])
    ax.grid(alpha=0.3)


def plot(grids, zoom_grids, tables, sizes, trials: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 3, figsize=(19, 6.8), width_ratios=[1.25, 1, 1], layout="constrained")
    ax = axes[0]
    inset = ax.inset_axes([0.62, 0.05, 0.37, 0.42])
    for target, g in ((ax, grids), (inset, zoom_grids)):
        _draw_regions(target, g)
    inset.set_xlim(*ZOOM[0])
    inset.set_ylim(*ZOOM[1])
    inset.set_xticks([-1, 0, 1])
    inset.tick_params(labelsize=8)
    inset.set_title("zoom near p = 1, q = 0", fontsize=8.5)
    ax.indicate_inset_zoom(inset, edgecolor="0.3")
    p0, q0 = EXAMPLE_POINT
    verdict = _values(family(p0, q0), ("nemon", "mon", "idl_norm", "lben"))
    marks = ", ".join(f"{c} {'yes' if v < 1.0 else 'no'}" for c, v in verdict.items())
    ax.plot(p0, q0, "k*", ms=14, zorder=5)
    ax.annotate(f"A({p0:g}, {q0:g}):\n{marks}", (p0, q0), xytext=(10, 4), textcoords="offset points", fontsize=9,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.5", "alpha": 0.9})
    ax.set_xlim(*P_RANGE)
    ax.set_ylim(*Q_RANGE)
    ax.set_xlabel(r"$p = a_{11}$ (self-loop of unit 1)")
    ax.set_ylabel(r"$q = a_{12}$ (input of unit 1 from unit 2)")
    ax.set_title(r"(a) certified regions of $A(p,q) = [[p,\ q],\ [1/2,\ 0]]$ (left of / inside each curve)")
    handles = [Line2D([], [], color=COLOURS[c], ls=STYLE[c][0], lw=STYLE[c][1], label=LABELS[c]) for c in ORDER]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=9, frameon=False)

    for k, (ax, (name, table)) in enumerate(zip(axes[1:], tables.items())):
        for c in ORDER:
            ax.plot(sizes, [table[n][c] for n in sizes], marker="o", ls=STYLE[c][0], color=COLOURS[c],
                    lw=STYLE[c][1], ms=5, label=c, zorder=3 if c == "nemon" else 2)
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(r"size $n$")
        ax.set_ylabel(f"fraction certified ({trials} draws per $n$)")
        ax.set_title(f"({'bc'[k]}) {name}\n{ENSEMBLES[name][1]}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8.5, loc="lower left", bbox_to_anchor=(0.0, 0.08))
    fig.suptitle(r"Well-posedness of $x = \sigma(Ax + Bu + b)$: where the $\ell_\infty$ log-norm polytope "
                 rf"$\mu_\infty(A) < 1$ (nemon) certifies, against the alternatives (lben skipped for $n > {LBEN_MAX_N}$)",
                 fontsize=12)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes must be positive integers, got {text!r}")
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/wellposedness_regions.png"), help="figure path")
    parser.add_argument("--trials", type=int, default=200, help="random matrices per size (default 200)")
    parser.add_argument("--sizes", type=_sizes, default=[2, 5, 10, 20, 50], help="comma-separated sizes n")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random ensembles (default 0)")
    parser.add_argument("--grid", type=int, default=81,
                        help=f"grid lines per axis of panel (a) (default 81; LBEN uses 1/{LBEN_COARSENING})")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.grid < 5:
        parser.error("--trials must be >= 1 and --grid >= 5")

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    grids = region_grids(args.grid, P_RANGE, Q_RANGE)
    zoom_grids = region_grids(args.grid, *ZOOM)
    tables = {name: certified_fractions(sample, args.sizes, args.trials, rng)
              for name, (sample, _) in ENSEMBLES.items()}
    for name, table in tables.items():
        print(format_table(f"Fraction certified, {name} ({args.trials} draws per n; '-' = lben skipped):", table))
        print()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(grids, zoom_grids, tables, args.sizes, args.trials, args.out)
    print(f"elapsed {time.perf_counter() - start:.1f} s")
    print(f"figure written to {args.out}")
    return 0


if __name__ == "__main__":
    main()
