"""Sweeps: every combination of a grid of ``nemon train`` options, trained on Dask (issue 15).

A spec is a TOML file::

    eps = [0.05, 0.1]          # optional: certified and PGD accuracy on validation at these radii

    [base]                     # nemon train options (long names, underscores for dashes)
    dataset = "digits"
    epochs = 3
    hidden = 30

    [grid]                     # lists: every combination is one run
    gamma = [0.5, 0.9]
    seed = [0, 1]

Each run is one Dask task (:func:`run_one`): it loads its data set itself, holds out the
validation split (``val_fraction``, default 0.1), trains, saves its checkpoint under
``DIR/runs/`` (its epoch table, written as each epoch ends, beside it in ``KEY.log``) and
scores the *validation* split: clean accuracy, and interval-certified and
PGD accuracy at each ``eps``. The client appends each finished run to ``DIR/results.jsonl``
at once (one JSON object per line: ``key``, ``config`` -- the run's full options --,
``metrics``, ``checkpoint``, ``seconds``, ``versions``), never the same configuration twice,
so a rerun of the same command skips what is there and an interrupted sweep leaves a valid
file. ``DIR/summary.csv`` and ``DIR/summary.png`` give mean ± std over seeds per
configuration and mark the one chosen on validation; only that one is scored on the test set.

Without a scheduler address the runs go to a :class:`dask.distributed.LocalCluster` of one
single-threaded process per core (numba's cache is shared, so workers compile nothing twice);
with ``tcp://HOST:PORT`` to an existing cluster (``dask scheduler`` / ``dask worker``, or
dask-jobqueue's ``SLURMCluster``); with ``workers=0``, one after another in this process
(:func:`.training._runner.run_jobs`, which ``nemon reproduce`` shares). A worker that dies costs only its run, which Dask starts
again on another worker.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import logging
import tomllib
from pathlib import Path

import numpy as np

from .training._runner import RunError as SweepError, read_records as read_results, run_jobs

logger = logging.getLogger(__name__)

__all__ = ["SweepSpec", "SweepError", "load_spec", "expand", "run_one", "sweep", "summarise", "format_summary"]

#: ``nemon train`` options a spec may not set: the sweep owns the outputs and the progress.
RESERVED = ("out", "figure", "force", "resume", "no_progress", "download")
#: Validation samples scored per run for the certified and PGD columns (clean accuracy uses all).
ROBUST_SAMPLES = 500
#: PGD steps of the validation scores.
PGD_STEPS = 10


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    base: dict
    grid: dict
    eps: tuple = ()


# -- the spec ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _train_parser() -> argparse.ArgumentParser:
    """``nemon train``'s parser, built once (a spec is parsed run by run)."""
    from .cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def train_options() -> dict:
    """The options a spec may set, with their defaults (``nemon train``'s, less :data:`RESERVED`)."""
    defaults = vars(_train_parser().parse_args([]))
    return {k: v for k, v in defaults.items() if k not in RESERVED and k not in ("func",)}


def _argv(options: dict) -> list:
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def _parse(options: dict, where: str) -> argparse.Namespace:
    """``options`` parsed as ``nemon train`` would (its types and checks), or a SweepError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return _train_parser().parse_args(_argv(options))
    except SystemExit:
        message = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "invalid options"
        message = message.replace("nemon train: error: ", "").split(" (see ")[0]
        raise SweepError(f"{where}: {message}") from None


def load_spec(path) -> SweepSpec:
    """Read and check a spec (see the module docstring); a :class:`SweepError` names the file
    and the key at fault."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise SweepError(f"{path}: no such file (expected a TOML sweep spec)") from None
    except IsADirectoryError:
        raise SweepError(f"{path} is a folder, not a TOML sweep spec") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"base", "grid", "eps"}
    if unknown:
        raise SweepError(f"{path}: unknown top-level keys {sorted(unknown)} (expected [base], [grid] and eps)")
    base, grid = doc.get("base", {}), doc.get("grid", {})
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise SweepError(f"{path}: [base] and [grid] must be tables")
    allowed = train_options()
    for table, keys in (("base", base), ("grid", grid)):
        for key in keys:
            if key not in allowed:
                hint = " (the sweep sets it)" if key in RESERVED else ""
                raise SweepError(f"{path}: [{table}] {key} is not a nemon train option{hint}; options: "
                                 f"{', '.join(sorted(allowed))}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: [grid] {key} must be a non-empty list, got {values!r}")
        if len(set(map(json.dumps, values))) != len(values):
            raise SweepError(f"{path}: [grid] {key} lists a value twice: {values!r}")
        if key in base:
            raise SweepError(f"{path}: {key} is in both [base] and [grid]")
    eps = doc.get("eps", [])
    if not isinstance(eps, list) or not all(isinstance(e, (int, float)) and 0 <= e <= 1 for e in eps):
        raise SweepError(f"{path}: eps must be a list of radii in [0, 1] (pixel units), got {eps!r}")
    datasets = grid.get("dataset", [base.get("dataset", "mnist5k")])
    if "function" in datasets:
        raise SweepError(f"{path}: dataset 'function' is a regression; a sweep scores classification accuracy "
                         "on validation (use mnist5k, digits, fashion-mnist or mnist)")
    spec = SweepSpec(dict(base), {k: list(v) for k, v in grid.items()}, tuple(float(e) for e in eps))
    for run in expand(spec):  # every combination parses (types, ranges) before anything starts
        _parse(run, f"{path}: run {_describe(run, spec)}")
    return spec


def expand(spec: SweepSpec) -> list:
    """Every run's options: ``base`` with one value of each grid key (in the file's order)."""
    keys = list(spec.grid)
    return [{**spec.base, **dict(zip(keys, combo))} for combo in itertools.product(*(spec.grid[k] for k in keys))]


def _describe(options: dict, spec: SweepSpec) -> str:
    return ", ".join(f"{k}={options[k]}" for k in spec.grid) or "(the base)"


def full_config(options: dict) -> dict:
    """The run's full options: every ``nemon train`` option, the defaults filled in (what
    ``results.jsonl`` records and matches on)."""
    args = vars(_parse(options, "run"))
    return {k: args[k] for k in sorted(train_options())}


def config_key(config: dict) -> str:
    """A short stable name of a full config (its checkpoint's file name)."""
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# -- one run (on a worker) ----------------------------------------------------------------
def run_one(config: dict, checkpoint: str, eps=()) -> dict:
    """Train one configuration and score it on its validation split (runs on a Dask worker).

    Returns the record :func:`sweep` appends to ``results.jsonl``; raises ``RuntimeError``
    with the reason when the run fails (bad data, a collapsed network)."""
    args = argparse.Namespace(**config, out=checkpoint, figure=None, force=True, resume=None, no_progress=True,
                              download=False, given=set())
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    with open(Path(checkpoint).with_suffix(".log"), "w", encoding="utf-8") as log:
        try:
            return _train_and_score(config, checkpoint, eps, args, log)
        except RuntimeError as exc:
            log.write(f"failed: {exc}\n")
            raise


def _train_and_score(config, checkpoint, eps, args, log) -> dict:
    """:func:`run_one`'s work; ``log`` receives the run's epoch table, one line per epoch as it
    finishes (``tail -f DIR/runs/KEY.log`` follows a long run)."""
    from . import cli
    from . import training as tr

    certified = config.get("interval_eps", 0) > 0

    def show(record):
        log.write(tr.format_epoch_table([record], header=False, certified=certified) + "\n")
        log.flush()

    log.write(f"{json.dumps(config, sort_keys=True)}\n{tr.format_epoch_table([], header=True, certified=certified)}\n")
    log.flush()
    try:
        Xtr, ytr, Xval, yval, _, _ = cli.load_data(args, validation=True)
        if Xval is None:
            raise RuntimeError("a sweep scores runs on validation: val_fraction must be > 0")
        net = cli._new_network(args, Xtr.shape[1], int(ytr.max()) + 1)
        net.solver = dataclasses.replace(net.solver, engine=args.engine)
        history = tr.train(net, Xtr, ytr, cli.train_config(args), X_val=Xval, y_val=yval, progress=False,
                           callback=show)
    except cli.CLIError as exc:
        raise RuntimeError(str(exc)) from None
    except tr.TrainingCollapsed as exc:
        raise RuntimeError(str(exc)) from None
    net.solver = history.solver
    metrics = {"val_accuracy": net.accuracy(Xval, yval), "val_samples": int(len(Xval)),
               "mu_inf": history.epochs[-1]["mu_inf"], "lipschitz": history.epochs[-1]["lipschitz"],
               "epochs": len(history.epochs), "train_seconds": sum(r["seconds"] for r in history.epochs)}
    metrics.update(_robust_scores(net, Xval, yval, eps, seed=config.get("seed", 0)))
    log.write(f"validation accuracy {metrics['val_accuracy']:.4f} ({metrics['val_samples']} samples), "
              f"{metrics['train_seconds']:.1f} s of training\n")
    tr.save(net, checkpoint, history=history,
            metrics={"dataset": args.dataset, "data_seed": args.data_seed, "train_samples": args.train_samples,
                     "val_fraction": args.val_fraction, "sweep": metrics})
    return {"config": config, "metrics": metrics, "checkpoint": str(checkpoint)}


def _robust_scores(net, X, y, eps, seed: int, prefix: str = "val_") -> dict:
    from . import training as tr

    out = {}
    X, y = X[:ROBUST_SAMPLES], y[:ROBUST_SAMPLES]
    for e in eps:
        out[f"{prefix}certified@{e:g}"] = tr.certified_accuracy(net, X, y, e)
        out[f"{prefix}pgd@{e:g}"] = tr.robust_accuracy(net, X, y, e, steps=PGD_STEPS, seed=seed)
    return out


# -- the sweep (the client) --------------------------------------------------------------------
@dataclasses.dataclass
class SweepResult:
    records: list  # the spec's finished runs, in grid order
    failed: dict  # key -> reason, for runs that failed in this invocation
    skipped: int  # runs found in results.jsonl and not run again
    summary: list  # :func:`summarise`'s rows
    chosen: dict | None  # the row chosen on validation, with its test metrics
    files: list


def sweep(spec_path, out_dir, scheduler: str | None = None, workers: int | None = None, progress: bool = False,
          log=None) -> SweepResult:
    """Run every configuration of the spec not yet in ``out_dir/results.jsonl`` (see the module
    docstring), then write the summary and its figure."""
    log = log if log is not None else logger.info
    spec = load_spec(spec_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SweepError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    configs = [full_config(run) for run in expand(spec)]
    keys = [config_key(c) for c in configs]
    done = read_results(results)
    todo = [(k, c) for k, c in zip(keys, configs) if k not in done]
    skipped = len(configs) - len(todo)
    log(f"sweep: {len(configs)} runs in {spec_path} ({skipped} already in {results}, {len(todo)} to run)")
    failed = {}
    if todo:
        jobs = [(k, run_one, (c, str(out / "runs" / f"{k}.npz"), spec.eps)) for k, c in todo]
        failed = run_jobs(jobs, results, done, scheduler=scheduler, workers=workers, progress=progress, log=log)
    records = [done[k] for k in keys if k in done]
    rows = summarise(records, spec)
    chosen = _choose_and_test(rows, records, spec) if rows else None
    files = [results] * results.exists() + _write_summary(out, rows, chosen, spec)  # none if every run failed
    return SweepResult(records, failed, skipped, rows, chosen, files)


# -- the summary ------------------------------------------------------------------------------
def summarise(records: list, spec: SweepSpec) -> list:
    """One row per configuration (the config without its seed): mean and std over its seeds
    of every metric, in the grid's order."""
    groups: dict = {}
    for r in records:
        cfg = {k: v for k, v in r["config"].items() if k != "seed"}
        groups.setdefault(json.dumps(cfg, sort_keys=True), []).append(r)
    rows = []
    for members in groups.values():
        varied = {k: members[0]["config"][k] for k in spec.grid if k != "seed"}
        metrics = sorted({m for r in members for m, v in r["metrics"].items() if isinstance(v, (int, float))})
        stats = {}
        for m in metrics:
            values = np.array([float(r["metrics"][m]) for r in members if isinstance(r["metrics"].get(m), (int, float))])
            stats[m] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
        rows.append({"config": varied, "seeds": sorted(r["config"]["seed"] for r in members), "stats": stats,
                     "keys": [r["key"] for r in members]})
    return rows


def _choose_and_test(rows, records, spec) -> dict:
    """The row with the best mean validation accuracy, scored on the test set (each seed's
    checkpoint once)."""
    from . import cli
    from . import training as tr

    best = max(rows, key=lambda r: r["stats"]["val_accuracy"][0])
    by_key = {r["key"]: r for r in records}
    tests = []
    for key in best["keys"]:
        record = by_key[key]
        net, _, _ = tr.load_training(record["checkpoint"])
        args = argparse.Namespace(**record["config"], download=False)
        _, _, Xte, yte = cli.load_data(args)
        scores = {"test_accuracy": net.accuracy(Xte, yte)}
        scores.update(_robust_scores(net, Xte, yte, spec.eps, seed=record["config"]["seed"], prefix="test_"))
        tests.append(scores)
    test = {m: (float(np.mean([t[m] for t in tests])), float(np.std([t[m] for t in tests], ddof=1))
                if len(tests) > 1 else 0.0) for m in tests[0]}
    return {**best, "test": test}


def _write_summary(out: Path, rows, chosen, spec) -> list:
    from .training._files import atomic_write

    metrics = sorted({m for r in rows for m in r["stats"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    grid_keys = [k for k in spec.grid if k != "seed"]
    w.writerow(grid_keys + ["seeds", "chosen"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
               + ([f"{m}_{s}" for m in chosen["test"] for s in ("mean", "std")] if chosen else []))
    for r in rows:
        is_chosen = chosen is not None and r["keys"] == chosen["keys"]
        cells = [r["config"][k] for k in grid_keys] + [len(r["seeds"]), "yes" if is_chosen else ""]
        cells += [v for m in metrics for v in r["stats"].get(m, (float("nan"), float("nan")))]
        if chosen:
            cells += [v for m in chosen["test"] for v in chosen["test"][m]] if is_chosen else \
                ["" for _ in chosen["test"] for _ in range(2)]
        w.writerow(cells)
    path = out / "summary.csv"
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())
    return [path, _figure(out / "summary.png", rows, chosen, spec)]


def _figure(path: Path, rows, chosen, spec) -> Path:
    from matplotlib.figure import Figure

    from .training._files import atomic_write

    labels = [", ".join(f"{k}={v}" for k, v in r["config"].items()) or "base" for r in rows]
    mean = [r["stats"]["val_accuracy"][0] for r in rows]
    std = [r["stats"]["val_accuracy"][1] for r in rows]
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    ax = fig.subplots()
    colours = ["tab:orange" if chosen is not None and r["keys"] == chosen["keys"] else "tab:blue" for r in rows]
    ax.bar(np.arange(len(rows)), mean, yerr=std, color=colours, capsize=4)
    for e in spec.eps:
        m = f"val_certified@{e:g}"
        if all(m in r["stats"] for r in rows):
            ax.plot(np.arange(len(rows)), [r["stats"][m][0] for r in rows], "o--", label=f"certified at eps {e:g}")
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("validation accuracy (mean ± std over seeds)")
    title = "sweep: validation accuracy per configuration"
    if chosen is not None:
        acc = chosen["test"]["test_accuracy"]
        title += f"\nchosen (orange): test accuracy {acc[0]:.4f} ± {acc[1]:.4f}"
    ax.set_title(title, fontsize=10)
    if spec.eps:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    return path


def format_summary(result: SweepResult) -> str:
    """The summary as a table: one line per configuration, mean ± std over its seeds, the
    chosen one marked, and its test metrics."""
    if not result.summary:
        return "no finished runs"
    metrics = ["val_accuracy"] + sorted(m for m in result.summary[0]["stats"]
                                        if m.startswith(("val_certified", "val_pgd")))
    lines = ["  ".join(["configuration".ljust(32), "seeds"] + [m.rjust(20) for m in metrics])]
    for r in result.summary:
        label = ", ".join(f"{k}={v}" for k, v in r["config"].items()) or "(base)"
        mark = "*" if result.chosen is not None and r["keys"] == result.chosen["keys"] else " "
        cells = [f"{mark} {label}".ljust(32)[:32], f"{len(r['seeds']):>5d}"]
        cells += [f"{r['stats'][m][0]:.4f} ± {r['stats'][m][1]:.4f}".rjust(20) for m in metrics if m in r["stats"]]
        lines.append("  ".join(cells))
    if result.chosen is not None:
        test = ", ".join(f"{m} {v[0]:.4f} ± {v[1]:.4f}" for m, v in result.chosen["test"].items())
        lines.append(f"* chosen on validation accuracy; its test set, scored once: {test}")
    return "\n".join(lines)
