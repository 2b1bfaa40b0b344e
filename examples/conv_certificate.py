"""Convolutional implicit layers: the seed authors' diagonal shift certifies nothing; the projection does.

The seed authors' convolutional layer (``NEMONSingleConv`` in their code) normalises its kernel,
``K = g K0 / ‖K0‖_F`` (``g = 1`` at initialisation), and iterates on
``z ↦ (m − C · max|K|) z + K ⋆ z`` (circular padding, ``m = 0.05``): the centre taps
``K[c, c, p, p]`` move by ``m − C · max|K|``, meant to make ``μ∞ ≤ m``. But row ``c`` of a
convolution holds all ``C k²`` taps of ``K[c]``, so (DESIGN.md section 8b)

    μ∞ = max_c ( K[c, c, p, p] + Σ_{(c', i, j) ≠ (c, p, p)} |K[c, c', i, j]| ),

and a shift by ``C · max|K|`` is about ``k²`` times too small to bound it: for a Gaussian ``K0``
the row sums are about ``k √(2/π)`` (2.4 for 3×3, 4.0 for 5×5) while ``C · max|K|`` is about
``√(2 ln(C² k²)) / k``, so for random kernels their layer's ``μ∞`` stays above 1 (it creeps
towards 1 as ``C`` grows only through the logarithm). Their trained scale ``g`` multiplies
everything but ``m``: ``μ∞(g) = m + g (μ∞(1) − m)``, certified only while
``g < (1 − m) / (μ∞(1) − m)``, which nothing in their training enforces. The shift that would
certify ``μ∞ ≤ γ`` is ``γ − μ∞(K)``; the Frobenius projection of the kernel onto
``{μ∞ ≤ γ}`` (``contraction.project_mu_inf`` of a ``Conv2d``, one row problem per output
channel) certifies ``μ∞ = γ`` exactly and moves the kernel less than any such shift (the
shifted kernel is feasible, the projection is the nearest feasible kernel).

For each kernel size ``k`` and channel count ``C`` the table gives, over ``--trials`` Gaussian
kernels ``K0`` (``K = K0 / ‖K0‖_F``): their shift ``m − C max|K|`` and the shift that certifies
``γ``; the true ``μ∞`` of their layer (mean and max over trials) and how many trials have
``μ∞ < 1``, and the largest scale ``g`` at which all of them would be (``g max``); ``μ∞`` after
the projection (largest over trials); and how far each of the three
moves the kernel, ``‖ΔK‖_F`` (``‖K‖_F = 1``, so relative). Every ``μ∞`` comes from the kernel
formula, checked against the dense matrix of the smallest layer on a small image.

Run (from the repository root, with the package installed or ``PYTHONPATH=.``)::

    python examples/conv_certificate.py --out out/conv_certificate.png
    python examples/conv_certificate.py --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import contraction
from contraction import Conv2d
from solvers.cli import positive_int

#: The seed authors' margin ``m`` (the default of their convolutional layer).
SEED_M = 0.05
#: Image size of the layers (MNIST); μ∞ does not depend on it once ``H, W ≥ k``.
IMAGE = (28, 28)
#: Image side of the dense cross-check (the smallest layer's matrix, ``C · side²`` rows).
DENSE_SIDE = 8
QUICK = {"channels": [4, 8], "kernels": [3, 5], "trials": 2}


def normalised(K0: np.ndarray) -> np.ndarray:
    """``K0 / ‖K0‖_F``: the seed authors' kernel at ``g = 1``."""
    return K0 / np.linalg.norm(K0)


def centre_shift(K: np.ndarray, shift: float) -> np.ndarray:
    """``K`` with every centre tap ``K[c, c, p, p]`` moved by ``shift`` (the diagonal of the
    convolution's matrix)."""
    C, k = K.shape[0], K.shape[2]
    out = K.copy()
    out[np.arange(C), np.arange(C), k // 2, k // 2] += shift
    return out


def seed_shift(K: np.ndarray, m: float = SEED_M) -> float:
    """The seed authors' shift of the centre taps, ``m − C_out · max|K|``."""
    return float(m - K.shape[0] * np.abs(K).max())


def trial(K0: np.ndarray, gamma: float, m: float) -> dict:
    """The seed authors' layer and nemon's projection of one kernel ``K0``."""
    K = normalised(K0)
    op = Conv2d(K, IMAGE, "circular")
    theirs = seed_shift(K, m)
    needed = gamma - contraction.mu_inf(op)  # μ∞ moves with the diagonal one for one
    projected = contraction.project_mu_inf(op, gamma)
    mu_seed = contraction.mu_inf(op.with_kernel(centre_shift(K, theirs)))
    sqrt_c = np.sqrt(K.shape[0])  # a shift s of the C centre taps moves K by sqrt(C) |s|
    return {
        "shift": theirs,
        "needed": needed,
        "mu_seed": mu_seed,
        # μ∞ at scale g is m + g (μ∞(1) − m): below 1 while g < (1 − m) / (μ∞(1) − m)
        "g_max": (1.0 - m) / (mu_seed - m) if mu_seed > m else np.inf,
        "mu_nemon": contraction.mu_inf(projected),
        "dK_seed": sqrt_c * abs(theirs),
        "dK_shift": sqrt_c * max(0.0, -needed),
        "dK_nemon": float(np.linalg.norm(projected.kernel - K)),
    }


def run(channels, kernels, trials: int, gamma: float, m: float, seed: int) -> list[dict]:
    """One row per ``(k, C)``: the trials' means (and the extremes that matter)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in kernels:
        for C in channels:
            ts = [trial(rng.standard_normal((C, C, k, k)), gamma, m) for _ in range(trials)]
            mean = {key: float(np.mean([t[key] for t in ts])) for key in ts[0]}
            rows.append({"k": k, "C": C, "trials": trials, **mean,
                         "mu_seed_max": max(t["mu_seed"] for t in ts),
                         "certified": sum(t["mu_seed"] < 1.0 for t in ts),
                         "g_max": min(t["g_max"] for t in ts),
                         "mu_nemon_max": max(t["mu_nemon"] for t in ts)})
    return rows


def dense_cross_check(C: int, k: int, gamma: float, m: float, seed: int) -> tuple[float, float, float, float]:
    """``(kernel formula, dense)`` μ∞ of the seed layer and of the projection, for one kernel
    of the smallest layer on a ``DENSE_SIDE²`` image."""
    side = max(DENSE_SIDE, k)
    K = normalised(np.random.default_rng(seed).standard_normal((C, C, k, k)))
    seed_op = Conv2d(centre_shift(K, seed_shift(K, m)), (side, side), "circular")
    nemon_op = contraction.project_mu_inf(Conv2d(K, (side, side), "circular"), gamma)
    return (contraction.mu_inf(seed_op), contraction.mu_inf(seed_op.to_dense()),
            contraction.mu_inf(nemon_op), contraction.mu_inf(nemon_op.to_dense()))


def format_table(rows, gamma: float) -> str:
    header = (f"{'k':>2} {'C':>4} | {'their shift':>11} {'needed':>8} | {'mu_inf seed':>11} {'max':>7} "
              f"{'< 1':>5} {'g max':>6} | {'mu_inf nemon':>12} | {'|dK| seed':>9} {'shift':>7} {'nemon':>7}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['k']:>2} {r['C']:>4} | {r['shift']:>11.3f} {r['needed']:>8.3f} | {r['mu_seed']:>11.3f} "
                     f"{r['mu_seed_max']:>7.3f} {r['certified']:>2}/{r['trials']:<2} {r['g_max']:>6.3f} | "
                     f"{r['mu_nemon_max']:>12.6f} | "
                     f"{r['dK_seed']:>9.3f} {r['dK_shift']:>7.3f} {r['dK_nemon']:>7.3f}")
    lines.append(f"their shift = m - C max|K|; needed = gamma - mu_inf(K), the centre-tap shift that certifies "
                 f"gamma = {gamma:g}")
    lines.append("mu_inf seed = their layer's true mu_inf (mean, max over trials); '< 1' = trials certified; "
                 "g max = their layer at scale g is certified for g < g max (smallest over trials)")
    lines.append("mu_inf nemon = after project_mu_inf (max over trials); |dK| = ||change of K||_F (||K||_F = 1) by "
                 "their shift, by the needed shift and by the projection (means)")
    return "\n".join(lines)


def plot(rows, gamma: float, m: float, path: Path) -> Path:
    from matplotlib.figure import Figure  # an explicit figure: no pyplot state, no backend choice

    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    ax_mu, ax_dk = fig.subplots(1, 2)
    colours = {3: "tab:red", 5: "tab:purple", 7: "tab:brown"}
    nemon = {3: "tab:green", 5: "tab:olive"}
    for k in sorted({r["k"] for r in rows}):
        rs = [r for r in rows if r["k"] == k]
        Cs = [r["C"] for r in rs]
        colour = colours.get(k, "tab:gray")
        ax_mu.plot(Cs, [r["mu_seed"] for r in rs], "o-", color=colour,
                   label=f"seed authors' layer, {k}x{k} (mean; bar to the max)")
        ax_mu.vlines(Cs, [r["mu_seed"] for r in rs], [r["mu_seed_max"] for r in rs], color=colour, lw=1)
        ax_mu.plot(Cs, [r["mu_nemon_max"] for r in rs], "s--", color=nemon.get(k, "tab:green"), mfc="none",
                   ms=9 if k == 3 else 5, label=f"nemon projection, {k}x{k}")
        ax_dk.plot(Cs, [r["dK_seed"] for r in rs], "o-", color=colour, label=f"their shift m - C max|K|, {k}x{k}")
        ax_dk.plot(Cs, [r["dK_shift"] for r in rs], "^:", color=colour, label=f"shift that certifies gamma, {k}x{k}")
        ax_dk.plot(Cs, [r["dK_nemon"] for r in rs], "s--", color=nemon.get(k, "tab:green"), mfc="none",
                   ms=9 if k == 3 else 5, label=f"nemon projection, {k}x{k}")
    ax_mu.axhline(1.0, color="k", lw=1.2, label="well-posedness boundary mu_inf = 1")
    ax_mu.axhline(m, color="0.5", ls=":", label=f"their intended bound m = {m:g}")
    ax_mu.axhline(gamma, color="tab:green", lw=0.6, alpha=0.5)
    ax_mu.set_ylabel("true mu_inf of the layer (kernel formula)")
    ax_mu.set_title("(a) mu_inf of the layer: their shift leaves it above 1,\nthe projection puts it at gamma "
                    f"= {gamma:g}")
    ax_dk.set_ylabel("||change of the kernel||_F  (||K||_F = 1)")
    ax_dk.set_title("(b) how far each moves the kernel: the projection is the nearest\ncertified kernel, "
                    "closer than any uniform shift")
    for ax in (ax_mu, ax_dk):
        ax.set_xscale("log")
        Cs = sorted({r["C"] for r in rows})
        ax.set_xticks(Cs)
        ax.set_xticklabels([str(C) for C in Cs])
        ax.minorticks_off()
        ax.set_xlabel("channels C (kernel C x C x k x k, circular padding)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_mu.set_ylim(bottom=0.0)
    ax_dk.set_yscale("log")
    fig.suptitle("Convolutional implicit layer x = relu(K ⋆ x + B ⋆ u): a diagonal shift by C max|K| is not an "
                 "l-inf certificate; the kernel projection is")
    fig.savefig(path, dpi=110)
    return path


def _ints(text: str) -> list[int]:
    try:
        values = [positive_int(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/conv_certificate.png"), help="figure path")
    parser.add_argument("--channels", type=_ints, default=[4, 8, 16, 32, 64, 81],
                        help="comma-separated channel counts C (default 4,8,16,32,64,81)")
    parser.add_argument("--kernels", type=_ints, default=[3, 5], help="comma-separated odd kernel sizes (default 3,5)")
    parser.add_argument("--trials", type=positive_int, default=5, help="random kernels per (k, C) (default 5)")
    parser.add_argument("--gamma", type=float, default=0.9, help="nemon's bound mu_inf <= gamma (default 0.9)")
    parser.add_argument("--m", type=float, default=SEED_M, help=f"the seed authors' margin m (default {SEED_M})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kernels (default 0)")
    parser.add_argument("--quick", action="store_true",
                        help=f"C in {QUICK['channels']}, k in {QUICK['kernels']}, {QUICK['trials']} trials")
    args = parser.parse_args(argv)
    if args.quick:
        args.channels, args.kernels, args.trials = QUICK["channels"], QUICK["kernels"], QUICK["trials"]
    bad = [k for k in args.kernels if k % 2 == 0 or k > min(IMAGE)]
    if bad:
        parser.error(f"--kernels must be odd sizes of at most {min(IMAGE)}, got {bad}")

    start = time.perf_counter()
    print(f"Seed authors' conv layer: K = K0/||K0||_F, centre taps shifted by m - C max|K| (m = {args.m:g}), "
          f"circular padding, {IMAGE[0]}x{IMAGE[1]} images; nemon: K projected onto {{mu_inf <= {args.gamma:g}}}; "
          f"{args.trials} Gaussian K0 per row, seed {args.seed}")
    print()
    rows = run(args.channels, args.kernels, args.trials, args.gamma, args.m, args.seed)
    print(format_table(rows, args.gamma))
    C, k = min(args.channels), min(args.kernels)
    seed_formula, seed_dense, nemon_formula, nemon_dense = dense_cross_check(C, k, args.gamma, args.m, args.seed)
    side = max(DENSE_SIDE, k)
    print()
    print(f"dense cross-check (C = {C}, k = {k}, {side}x{side} image, n = {C * side * side}): seed layer mu_inf "
          f"{seed_formula:.12g} (kernel formula) vs {seed_dense:.12g} (matrix); nemon projection {nemon_formula:.12g} "
          f"vs {nemon_dense:.12g}")
    worst = max(r["mu_nemon_max"] for r in rows)
    print(f"largest mu_inf after the projection: {worst:.15g} (gamma + {worst - args.gamma:.1e}); "
          f"seed layers certified (mu_inf < 1): {sum(r['certified'] for r in rows)} of "
          f"{sum(r['trials'] for r in rows)}")
    path = plot(rows, args.gamma, args.m, args.out)
    print(f"elapsed {time.perf_counter() - start:.1f} s")
    print(f"figure written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
