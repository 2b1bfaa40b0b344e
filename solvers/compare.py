"""Side-by-side comparison of the iteration schemes on one problem: iterations, wall time,
observed against guaranteed contraction rate.

The functions here are the library half of ``nemon compare`` and of
``examples/iteration_schemes.py``: they return data (rows, a table string, a figure path)
and log, never print.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

import contraction

from ._api import METHODS, _check_int, solve
from ._result import NotGuaranteedWarning, Status

__all__ = ["FAMILIES", "SCHEMES", "MethodComparison", "compare_methods", "format_table", "instance", "plot_comparison"]

logger = logging.getLogger(__name__)

#: Built-in random families (``contraction.example`` names) that are well-posed by construction.
FAMILIES = ("random-nemon", "negative-diagonal", "mon", "paper-2x2")

#: The schemes compared: every method at its default step, and the averaged iteration with one
#: step per unit (``solve(..., method="average", alpha="per_unit")``).
PER_UNIT = "average_per_unit"
SCHEMES = METHODS + (PER_UNIT,)

#: One colour per scheme, fixed across figures so that runs can be compared by eye.
_COLOURS = dict(zip(SCHEMES, ("#7f7f7f", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e", "#17becf")))
#: Margin to the right of the slowest converged method in the figure (fraction of its span).
_X_MARGIN = 0.15
#: One marker shape per method, and about how many markers a curve gets across the panel.
_MARKER_SHAPES = dict(zip(SCHEMES, ("x", "o", "s", "^", "v", "D", "P")))
_MARKERS = 8
#: Upper y-limit of the figure in multiples of the largest starting residual: a diverging
#: method would otherwise squeeze every converging curve into the bottom of the panel.
_Y_CAP = 1e4


@dataclasses.dataclass(frozen=True)
class MethodComparison:
    """One method's run on the compared problem.

    Attributes
    ----------
    method : str
    alpha : float or ndarray
        Step size used (the method's :func:`contraction.optimal_alpha`; per unit for
        ``average_per_unit``).
    iterations_mean, iterations_max : float, int
        Steps per sample, mean and maximum over the batch.
    seconds : float
        Median wall time of the solve (``record=False``, guarantee check off) over the repeats.
    final_residual : float
        Largest final ℓ∞ fixed-point residual over the batch.
    status : str
        Name of the overall :class:`Status` (``"SUCCESS"``, ``"MAX_ITER"``, ...).
    empirical_rate : float
        ``(r_K / r_0)^(1/K)`` of the batch-max residual history (``nan`` when ``K = 0``).
    theoretical_factor : float
        Worst-case ℓ∞ contraction factor of one step (``anderson``: its ``average`` step).
    guaranteed : bool
        ``False`` when :func:`solve` warned with :class:`NotGuaranteedWarning`.
    history : ndarray, shape (iterations_max + 1,)
        Batch-max residual per iteration (``inf`` where a sample's residual was non-finite).
    atol : float
        Tolerance the run stopped on.
    note : str or None
        The :class:`NotGuaranteedWarning` message, when there was one.
    """

    method: str
    alpha: float | np.ndarray
    iterations_mean: float
    iterations_max: int
    seconds: float
    final_residual: float
    status: str
    empirical_rate: float
    theoretical_factor: float
    guaranteed: bool
    history: np.ndarray
    atol: float
    note: str | None = None

    @property
    def seconds_per_iteration(self) -> float:
        """Average wall time of one step (``nan`` when no step was taken)."""
        return self.seconds / self.iterations_max if self.iterations_max > 0 else float("nan")


def _methods(methods) -> tuple[str, ...]:
    if methods is None:
        return SCHEMES
    if isinstance(methods, str):
        methods = (methods,)
    out = []
    for m in methods:
        if m not in SCHEMES:
            raise ValueError(f"methods must be names from {SCHEMES}, got {m!r}")
        if m not in out:
            out.append(m)
    if not out:
        raise ValueError("methods must name at least one method")
    return tuple(out)


def instance(family: str, n: int = 100, batch: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random problem ``(A, W)`` from a built-in family.

    Parameters
    ----------
    family : {"random-nemon", "negative-diagonal", "mon", "paper-2x2"}
        A :data:`contraction.EXAMPLES` name that is well-posed by construction.
    n : int
        Size (``paper-2x2`` is always 2 × 2).
    batch : int
        Number of inputs.
    seed : int
        Seeds both the matrix and the inputs.

    Returns
    -------
    A : ndarray, shape (n, n)
    W : ndarray, shape (batch, n)
        ``w = B u`` with ``u`` standard normal and the family's input matrix ``B``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    batch = _check_int(batch, "batch", 1)
    seed = _check_int(seed, "seed", 0)
    A, B = contraction.example(family, n=n, seed=seed)
    # A stream of its own, so that the inputs do not depend on how many draws A took.
    rng = np.random.default_rng((seed, 1))
    W = rng.standard_normal((batch, B.shape[1])) @ B.T
    return A, W


def _batch_max_history(history: np.ndarray, iterations: np.ndarray) -> np.ndarray:
    """Max residual over the samples still running at each iteration.

    A NaN inside a sample's own run (row ``k ≤ iterations[s]``) is a non-finite residual and
    counts as ``inf``; NaN after it marks a stopped sample and is left out.
    """
    k = np.arange(history.shape[0])[:, None]
    running = k <= iterations[None, :]
    H = np.where(running & np.isnan(history), np.inf, history)
    return np.where(running, H, -np.inf).max(axis=1)


def _empirical_rate(h: np.ndarray) -> float:
    K = h.size - 1
    if K == 0 or not h[0] > 0:
        return float("nan")
    if not np.isfinite(h[K]):
        return float("inf")
    return float((h[K] / h[0]) ** (1.0 / K))


def compare_methods(
    A,
    W,
    methods=None,
    activation="relu",
    atol: float = 1e-8,
    max_iter: int = 5000,
    engine: str = "numba",
    repeats: int = 3,
) -> list[MethodComparison]:
    """Solve ``x = σ(Ax + w)`` with each method and measure iterations, time and rate.

    Parameters
    ----------
    A : array_like, shape (n, n)
    W : array_like, shape (n,) or (batch, n)
    methods : sequence of str, optional
        Names from :data:`SCHEMES`: :data:`solvers.METHODS` and ``"average_per_unit"`` (the
        averaged iteration with ``alpha="per_unit"``); default all of them, in that order.
    activation : str, (str, float) or Activation
    atol : float
        Absolute tolerance on the ℓ∞ fixed-point residual (``rtol = 0``).
    max_iter : int
    engine : {"numba", "numpy", "cuda"}
    repeats : int
        Timed solves per method; the row reports their median.

    Returns
    -------
    list of MethodComparison
        One row per method, in the order given.

    Notes
    -----
    Every method runs at its default step :func:`contraction.optimal_alpha`, even outside
    its guarantee (``picard`` with a negative diagonal): the :class:`NotGuaranteedWarning`
    is caught and reported as ``guaranteed=False`` instead of being shown. Per method, one
    untimed warm-up solve (``max_iter=1``) compiles the kernels and runs the guarantee
    check; then ``repeats`` timed solves with ``record=False, check=False``; then one
    ``record=True`` solve for the history. The time therefore includes each method's setup
    (the resolvent inverse of the splittings) but neither compilation nor the check.

    For the averaged iteration ``r(x_k) ≤ ρ^k r(x_0)`` (DESIGN.md section 4), so its
    ``empirical_rate`` is at most ``theoretical_factor``; for the other methods the residual
    is only bounded by ``C ρ^k``, so the rate is at most ``ρ C^(1/K)``, which tends to ``ρ``
    as ``K`` grows. The factor is a worst case over all activation slopes; a run usually
    does better.
    """
    names = _methods(methods)
    repeats = _check_int(repeats, "repeats", 1)
    kwargs = dict(activation=activation, atol=atol, rtol=0.0, engine=engine)
    rows = []
    for method in names:
        step = dict(alpha="per_unit") if method == PER_UNIT else {}
        solver = "average" if method == PER_UNIT else method
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NotGuaranteedWarning)
            warm = solve(A, W, solver, max_iter=1, **step, **kwargs)
        notes = [str(w.message) for w in caught if issubclass(w.category, NotGuaranteedWarning)]
        for w in caught:  # anything else is not ours to swallow
            if not issubclass(w.category, NotGuaranteedWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = solve(A, W, solver, max_iter=max_iter, check=False, **step, **kwargs)
            times.append(time.perf_counter() - start)
        recorded = solve(A, W, solver, max_iter=max_iter, check=False, record=True, **step, **kwargs)
        history = _batch_max_history(recorded.history, np.atleast_1d(recorded.iterations))
        base = "average" if solver == "anderson" else solver
        row = MethodComparison(
            method=method,
            alpha=warm.alpha,
            iterations_mean=float(np.mean(result.iterations)),
            iterations_max=int(np.max(result.iterations)),
            seconds=statistics.median(times),
            final_residual=float(np.max(result.residual)),
            status=Status(result.status).name,
            empirical_rate=_empirical_rate(history),
            theoretical_factor=contraction.contraction_factor(A, warm.alpha, base),
            guaranteed=not notes,
            history=history,
            atol=float(atol),
            note=notes[0] if notes else None,
        )
        logger.info(
            "%s: %s after %d iterations (max) in %.3g ms, rate %.4g vs factor %.4g%s",
            method, row.status, row.iterations_max, 1e3 * row.seconds, row.empirical_rate,
            row.theoretical_factor, "" if row.guaranteed else " (not guaranteed)",
        )
        rows.append(row)
    return rows


def _step(alpha) -> str:
    """A step for the table: ``0.3487``, or the range ``0.35-1`` of per-unit steps."""
    if np.ndim(alpha):
        return f"{np.min(alpha):.2g}-{np.max(alpha):.2g}"
    return f"{alpha:.4g}"


def format_table(rows) -> str:
    """A fixed-width text table of :func:`compare_methods` rows.

    Columns: method, alpha, iterations (mean/max), median time in ms, largest final
    residual, status, empirical rate,
    theoretical factor, guaranteed.
    """
    header = (
        f"{'method':<18} {'alpha':>8} {'iters (mean/max)':>17} {'time ms':>9} {'residual':>9} "
        f"{'status':<9} {'rate':>7} {'factor':>7} {'guaranteed':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        iters = f"{r.iterations_mean:.1f}/{r.iterations_max}"
        lines.append(
            f"{r.method:<18} {_step(r.alpha):>8} {iters:>17} {1e3 * r.seconds:>9.3g} {r.final_residual:>9.2e} "
            f"{r.status:<9} {r.empirical_rate:>7.4f} {r.theoretical_factor:>7.4f} {'yes' if r.guaranteed else 'NO':>10}"
        )
    return "\n".join(lines)


def _label(r: MethodComparison) -> str:
    text = f"{r.method} (α={_step(r.alpha)}, {r.iterations_max} it., rate {r.empirical_rate:.3f} / factor {r.theoretical_factor:.3f})"
    if r.status != Status.SUCCESS.name:
        text += f" {r.status}"
    if not r.guaranteed:
        text += ", not guaranteed"
    return text


def plot_comparison(rows, path, title: str = "") -> Path:
    """Residual (batch max) against iteration and against wall time, one line per method.

    Parameters
    ----------
    rows : sequence of MethodComparison
    path : str or Path
        Output file (its parent directory is created); the format follows the suffix.
    title : str

    Returns
    -------
    Path
        ``path``.

    Notes
    -----
    The time axis is ``k · seconds / iterations_max``: each method's measured time spread
    evenly over its iterations. Methods outside their guarantee are dash-dotted; the
    tolerance is the dashed black line. The x-axes end a little after the slowest method
    that converged, so a method stuck at ``max_iter`` leaves the panel on the right instead
    of flattening the others; the y-axis stops at ``1e4`` times the largest start residual.
    """
    from matplotlib.figure import Figure  # an explicit figure: no pyplot state, no backend choice

    rows = list(rows)
    if not rows:
        raise ValueError("rows must hold at least one MethodComparison")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r.status == Status.SUCCESS.name] or rows
    iter_end = max(max(r.iterations_max for r in done), 1) * (1 + _X_MARGIN)
    time_end = max(max(1e3 * r.seconds for r in done), 1e-6) * (1 + _X_MARGIN)
    positive = np.concatenate([r.history[np.isfinite(r.history) & (r.history > 0)] for r in rows] + [[r.atol for r in rows]])
    y_low = max(positive.min() / 5, 1e-300) if positive.size else 1e-12
    start = max((r.history[0] for r in rows if np.isfinite(r.history[0])), default=1.0)
    visible = [r.history[: int(iter_end) + 1] for r in rows]
    peak = max((float(v[np.isfinite(v)].max()) for v in visible if np.isfinite(v).any()), default=start)
    y_high = 3 * min(max(peak, start), start * _Y_CAP)

    fig = Figure(figsize=(15, 6.2))
    axes = fig.subplots(1, 2, sharey=True)
    for i, r in enumerate(rows):
        k = np.arange(r.history.size)
        h = np.where(r.history > 0, r.history, np.nan)  # log scale: an exact zero is not drawn
        # Markers, staggered between methods, keep curves that coincide (average and
        # forward_backward often do) apart.
        every = max(len(rows), int(min(r.history.size, iter_end)) // _MARKERS)
        style = dict(
            color=_COLOURS.get(r.method), lw=2.0, ls="-" if r.guaranteed else "-.",
            marker=_MARKER_SHAPES.get(r.method, "o"), ms=7, mfc="none", mew=1.6, markevery=(i * every // len(rows), every),
        )
        axes[0].plot(k, h, label=_label(r), **style)
        axes[1].plot(1e3 * k * r.seconds_per_iteration if r.iterations_max else k * 0.0, h, **style)
    tol = rows[0].atol
    for ax in axes:
        if tol > 0:
            ax.axhline(tol, color="k", ls="--", lw=1.2)
        ax.set_yscale("log")
        ax.set_ylim(y_low, y_high)
        ax.grid(alpha=0.3, which="both")
    if tol > 0:
        axes[0].plot([], [], color="k", ls="--", lw=1.2, marker="", label=f"tolerance atol = {tol:.0e}")
    axes[0].set_xlim(0, iter_end)
    axes[1].set_xlim(0, time_end)
    axes[0].set_xlabel("iteration k")
    axes[0].set_ylabel(r"fixed-point residual $\max_{\mathrm{batch}} \|\sigma(Ax+w)-x\|_\infty$")
    axes[1].set_xlabel("wall time [ms]  (k × median solve time / iterations: the per-iteration average)")
    axes[0].set_title("residual against iterations")
    axes[1].set_title("residual against wall time")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    return path
