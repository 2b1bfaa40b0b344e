"""The seed paper's experiments end to end: train every model on one split, certify, attack."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np

from contraction import Conv2d
from solvers.compare import compare_methods

from ._checkpoint import save
from ._files import atomic_write, json_safe
from ._data import load_dataset, split_validation
from ._conv_network import ConvImplicitNetwork
from ._network import ImplicitNetwork, SolverConfig
from ._report import evaluate
from ._robust import plot_robustness, robustness_table
from ._trainer import TrainConfig, train

__all__ = ["ModelSpec", "model_specs", "reproduce", "ReproduceInterrupted", "format_reproduce_table", "EPS_DEFAULT"]

logger = logging.getLogger(__name__)

EPS_DEFAULT = (0.01, 0.02, 0.05, 0.1)
#: Share of the training set every model of :func:`reproduce` holds out for validation.
VAL_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of the comparison: its architecture and its training run (``config``; the
    epochs, the ε ramp and the seed are set per invocation by :func:`reproduce`)."""

    name: str
    config: TrainConfig
    hidden: int = 100
    dtype: str = "float32"
    full_epochs: int | None = None  # epochs of the full run when it differs from the others
    conv: bool = False  # a ConvImplicitNetwork of CONV_ARCH (QUICK_CHANNELS channels with --quick)


#: The convolutional rows' layer: an input convolution of stride 2 onto 16 channels of half the
#: input's size (28x28 images: a 14x14 state), 3x3 kernels, a 2x2 average pool before the
#: readout (784 pooled features, as many as the dense rows' inputs).
CONV_ARCH = {"channels": 16, "kernel_size": 3, "pool": 2, "padding": "circular", "stride": 2}
#: Channels of the convolutional rows in a quick run.
QUICK_CHANNELS = 8
#: The seed authors' conv layer's margin m (the default of their code): it claims mu_inf <= m.
SEED_CONV_MARGIN = 0.05


def model_specs(hidden: int = 100, n_in: int = 784, n_out: int = 10) -> list:
    """The models of the comparison; the feed-forward baseline gets about the same parameter count."""
    implicit = hidden * hidden + hidden * n_in + hidden + n_out * hidden + n_out
    ff_hidden = int(round((implicit - n_out) / (n_in + 1 + n_out)))
    base = TrainConfig(lr=3e-3, schedule="cosine")

    def run(**fields) -> TrainConfig:
        return dataclasses.replace(base, **fields)

    return [
        ModelSpec("implicit mu_inf", run(constraint="mu_inf"), hidden),
        ModelSpec("implicit mu_inf + Lipschitz", run(constraint="mu_inf", lipschitz_weight=1e-4), hidden),
        # Trained at a slightly larger radius than the largest evaluated one (0.1), 45 epochs in
        # the full run (the seed authors trained theirs for 41), self-loops held at >= -1 (without
        # the floor they fall far below and alpha* with them), Adam at 2e-3.
        ModelSpec("implicit mu_inf + interval", run(constraint="mu_inf", interval_eps=0.11, interval_weight=0.65,
                                                    diag_min=-1.0, lr=2e-3), hidden, full_epochs=45),
        ModelSpec("implicit nemon_param", run(constraint="nemon_param"), hidden),
        # float64: MON's large ||A||_inf and state norms put float32's residual floor
        # (~eps32 ||A|| ||x||) near atol = 1e-4 late in training.
        ModelSpec("implicit mon", run(constraint="mon"), hidden, dtype="float64"),
        ModelSpec("implicit norm_inf", run(constraint="norm_inf"), hidden),
        ModelSpec("implicit none", run(constraint="none"), hidden),
        ModelSpec("feed-forward ReLU", run(constraint="zero", gamma=0.0), ff_hidden),
        ModelSpec("feed-forward ReLU + interval", run(constraint="zero", gamma=0.0, interval_eps=0.11), ff_hidden),
        ModelSpec("conv mu_inf", run(constraint="mu_inf"), conv=True),
        ModelSpec("conv mu_inf + interval", run(constraint="mu_inf", interval_eps=0.11, interval_weight=0.65,
                                                diag_min=-1.0, lr=2e-3), conv=True),
        # The seed authors' convolutional layer; the table's mu_inf column shows its true value.
        ModelSpec("conv nemon_param", run(constraint="nemon_param", gamma=SEED_CONV_MARGIN), conv=True),
    ]


class ReproduceInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`reproduce`; what was saved is on disk and in :attr:`summary`.

    A :class:`KeyboardInterrupt`, so code that does not catch it stops as on any Ctrl-C.
    ``str(exc)`` is :attr:`summary`, one line.

    Attributes
    ----------
    summary : str
        What was saved: the finished models' table and checkpoints, the interrupted model and
        its checkpoint (resumable with its training state), or that nothing was saved.
    rows : list of dict
        The finished models' rows (as :func:`reproduce` returns them).
    results : pathlib.Path or None
        ``results.json`` when the table was written.
    checkpoint : pathlib.Path or None
        The interrupted model's checkpoint, when it has one.
    model : str or None
        The model that was interrupted (``None`` when no model was under way).
    """

    def __init__(self, summary: str, *, rows=(), results=None, checkpoint=None, model=None):
        super().__init__(summary)
        self.summary = summary
        self.rows = list(rows)
        self.results = results
        self.checkpoint = checkpoint
        self.model = model


def reproduce(quick: bool = True, dataset: str | None = None, data_dir=None, out_dir="out/reproduce",
              eps=EPS_DEFAULT, seed: int = 0, epochs: int | None = None, eval_samples: int | None = None,
              pgd_steps: int | None = None, progress: bool = False, engine: str = "numba", log=None,
              models=None, force: bool = False):
    """Train, certify and attack every model of :func:`model_specs` on one split.

    ``quick``: mnist5k, 6 epochs, 500 evaluation samples, PGD with 10 steps. Otherwise
    Fashion-MNIST when installed (else MNIST files, else mnist5k), 30 epochs (a spec's
    ``full_epochs`` where set, unless ``epochs`` is given), the whole test set, PGD with 20
    steps. ``log`` receives progress lines (default: ``logging``).
    ``models``: exact names from :func:`model_specs` to run; all by default.
    ``force``: overwrite the results of a previous run in ``out_dir``; without it, an existing
    ``out_dir/results.json`` raises ``ValueError`` before anything is loaded or trained.

    Written under ``out_dir`` as each model finishes (each file replaced atomically):
    ``results.csv`` and ``results.json`` (one row per finished model; the JSON also holds the
    run's settings, its ``status`` -- "running", "finished", "interrupted" or "failed" -- and
    the ``unfinished`` model, if any: name, phase, epoch and batch reached, checkpoint) and
    ``models/<slug>.npz`` (the checkpoint, with its training state and, once evaluated, its
    metrics). Once every model has finished: ``robustness.png`` and ``iterations.png``.

    Ctrl-C anywhere (the trainer stops at the end of the current batch) stops the whole
    run: the interrupted model is not evaluated and is not a row of the table; its checkpoint
    is saved (resumable: ``load_training`` returns its state with ``interrupted`` set when
    training was cut short), the finished models' table is written and
    :class:`ReproduceInterrupted` is raised with a one-line summary of what was saved.

    Returns ``(rows, figure paths)``; a row's ``epochs`` is the number of epochs trained.
    """
    log = log if log is not None else logger.info
    out = Path(out_dir)
    results = out / "results.json"
    if results.exists() and not force:
        raise ValueError(f"{results} exists from a previous run: pass another --out (out_dir), or --force "
                         f"(force=True) to overwrite its results")
    names = [s.name for s in model_specs()]
    if models and (len(set(models)) != len(models) or any(m not in names for m in models)):
        raise ValueError(f"models must be distinct names from {names}, got {list(models)}")
    run = _Run(out, names if not models else [n for n in names if n in models])
    try:
        return _reproduce(run, quick=quick, dataset=dataset, data_dir=data_dir, eps=eps, seed=seed, epochs=epochs,
                          eval_samples=eval_samples, pgd_steps=pgd_steps, progress=progress, engine=engine, log=log)
    except KeyboardInterrupt:
        with _sigint_ignored():  # a second Ctrl-C must not cut the record of the first one short
            run.stop("interrupted")
        raise ReproduceInterrupted(run.summary(), rows=run.rows, results=run.results if run.written else None,
                                   checkpoint=run.checkpoint, model=run.model) from None
    except Exception as exc:
        run.stop(f"failed: {type(exc).__name__}: {exc}")
        raise


def _reproduce(run, *, quick, dataset, data_dir, eps, seed, epochs, eval_samples, pgd_steps, progress, engine, log):
    run.phase = "loading the data set"
    if dataset is None:
        dataset = "mnist5k" if quick else _best_available(data_dir)
    X, y, Xt, yt = load_dataset(dataset, data_dir=data_dir, seed=seed)
    X, y, Xv, yv = split_validation(X, y, VAL_FRACTION, seed=seed)
    fixed_epochs = epochs is not None
    epochs = epochs if fixed_epochs else (6 if quick else 30)
    eval_samples = eval_samples if eval_samples is not None else (500 if quick else len(Xt))
    pgd_steps = pgd_steps if pgd_steps is not None else (10 if quick else 20)
    Xe, ye = Xt[:eval_samples], yt[:eval_samples]
    out = run.out
    out.mkdir(parents=True, exist_ok=True)
    run.settings = {"dataset": dataset, "data_seed": seed, "train_samples": len(X), "val_samples": len(Xv),
                    "eval_samples": len(Xe),
                    "eps": [float(e) for e in eps], "epochs": epochs, "pgd_steps": pgd_steps, "seed": seed,
                    "engine": engine, "quick": quick, "models": run.planned}
    log(f"reproduce: {dataset} ({len(X)} train, {len(Xv)} validation, {len(Xe)} test samples evaluated), {epochs} "
        f"epochs per model, eps {list(eps)}, "
        f"PGD {pgd_steps} steps; results in {run.csv} and .json, models in {run.models_dir}/")
    curves, trained = {}, {}
    specs = [s for s in model_specs(n_in=X.shape[1], n_out=int(y.max()) + 1) if s.name in run.planned]
    for spec in specs:
        run.start(spec.name)
        net = _network(spec, X.shape[1], int(y.max()) + 1, quick, seed=seed, dtype=np.dtype(spec.dtype),
                       solver=SolverConfig(engine=engine))
        n_epochs = spec.full_epochs if (spec.full_epochs and not quick and not fixed_epochs) else epochs
        config = dataclasses.replace(spec.config, epochs=n_epochs, interval_ramp=max(1, n_epochs // 3), seed=seed)
        run.phase = "training"
        t0 = time.perf_counter()
        hist = train(net, X, y, config, X_val=Xv, y_val=yv, progress=progress)
        seconds = time.perf_counter() - t0
        net.solver = hist.solver  # evaluate and save with the solver it was trained with
        run.trained(net, hist, n_batches=-(-len(X) // config.batch_size))
        if hist.interrupted:  # the trainer caught Ctrl-C and stopped after a batch: stop the whole run
            raise KeyboardInterrupt
        run.save_checkpoint("trained")  # before evaluation, so an interrupt there keeps the trained model
        run.phase = "evaluating"
        eta = hist.config.make_constraint().weights(hist.state.raw)
        metrics = evaluate(net, Xe, ye, eta=eta)
        run.phase = "certifying and attacking"
        robust = robustness_table(net, Xe, ye, eps, attacks=True, eta=eta, pgd_steps=pgd_steps, seed=seed)
        params = net.parameter_count() - (net.n_hidden**2 if spec.config.constraint == "zero" else 0)  # A ≡ 0
        row = {"model": spec.name, "train_s": seconds, "epochs": len(hist.epochs), **metrics, "params": params,
               "val_accuracy": hist.epochs[-1]["val_acc"], "robust": robust}
        run.phase = "saving"
        run.finish(row)
        curves[spec.name] = robust
        trained[spec.name] = net
        log(format_reproduce_table([row], header=len(run.rows) == 1))
    run.start(None)
    run.phase = "drawing the figures"
    shown = {k: v for k, v in curves.items() if "interval" in k or k in ("implicit mu_inf", "feed-forward ReLU")}
    run.figures.append(plot_robustness(shown or curves, out / "robustness.png",
                                       title=f"{dataset}: certified (interval, Lipschitz) and PGD accuracy"))
    if any(not k.startswith("feed-forward") for k in trained):
        run.figures.append(_plot_iterations(trained, Xe[:100], out / "iterations.png", engine))
    run.write("finished")
    return run.rows, list(run.figures)


def _network(spec: ModelSpec, n_in: int, n_out: int, quick: bool, **common):
    """The untrained network of a model: dense, or a conv layer on square one-channel images."""
    if not spec.conv:
        return ImplicitNetwork(n_in, spec.hidden, n_out, **common)
    side = int(round(np.sqrt(n_in)))
    step = CONV_ARCH["pool"] * CONV_ARCH["stride"]
    if side * side != n_in or side % step:
        raise ValueError(f"model '{spec.name}' needs square one-channel images whose side {step} (stride times "
                         f"pool) divides; the data set has {n_in} features per sample")
    arch = {**CONV_ARCH, "channels": QUICK_CHANNELS} if quick else CONV_ARCH
    return ConvImplicitNetwork((1, side, side), n_out=n_out, **arch, **common)


def _slug(name: str) -> str:
    """A file name for a model: 'implicit mu_inf + interval' -> 'implicit-mu_inf-interval'."""
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


class _Run:
    """The record of one :func:`reproduce` run: finished rows, the model under way, the files.

    ``write`` rewrites ``results.csv`` and ``results.json`` (atomically); ``stop`` records why
    the run ended early and writes the table when this run saved anything.
    """

    def __init__(self, out: Path, planned: list):
        self.out, self.planned = out, planned
        self.csv, self.results, self.models_dir = out / "results.csv", out / "results.json", out / "models"
        self.settings: dict = {}
        self.rows: list = []
        self.figures: list = []
        self.phase = "starting"
        self.written = False
        self.model = None
        self.net = self.history = self.checkpoint = None
        self.n_batches = 0
        self.unfinished = None

    def start(self, name):
        self.model, self.net, self.history, self.checkpoint = name, None, None, None

    def trained(self, net, history, n_batches: int):
        self.net, self.history, self.n_batches = net, history, n_batches

    def save_checkpoint(self, status: str, metrics: dict | None = None) -> Path:
        info = {"model": self.model, "status": status, "epochs_trained": len(self.history.epochs),
                "epochs_planned": self.history.config.epochs}
        metrics = {**(metrics or {}), "dataset": self.settings["dataset"], "data_seed": self.settings["data_seed"],
                   "val_fraction": VAL_FRACTION, "reproduce": info}
        self.checkpoint = save(self.net, self.models_dir / f"{_slug(self.model)}.npz", history=self.history,
                               metrics=metrics)
        return self.checkpoint

    def finish(self, row: dict):
        metrics = {k: v for k, v in row.items() if k not in ("model", "epochs", "train_s", "params")}
        path = self.save_checkpoint("finished", metrics)
        self.rows.append({**row, "checkpoint": str(path)})
        self.start(None)  # finished before the table is written: an interrupt there rewrites it with this row
        self.write("running")

    def stop(self, reason: str):
        """Record the model under way as unfinished (saving its checkpoint if it was trained
        and has none yet) and write the table, when this run saved anything."""
        if self.model is not None and self.history is not None and self.checkpoint is None:
            self.save_checkpoint("interrupted" if self.history.interrupted else "trained")
        if self.model is not None or self.phase == "drawing the figures":
            st = self.history.state if self.history is not None else None
            self.unfinished = {
                "model": self.model, "reason": reason, "phase": self.phase,
                "epochs_trained": len(self.history.epochs) if self.history is not None else None,
                "epoch": st.epoch if st is not None else None, "batch": st.batch if st is not None else None,
                "checkpoint": str(self.checkpoint) if self.checkpoint is not None else None,
            }
        if self.rows or self.checkpoint is not None:
            self.write(reason.split(":")[0])

    def write(self, status: str):
        doc = {"status": status, **self.settings, "rows": self.rows, "unfinished": self.unfinished}
        _write_atomic(self.results, json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n")
        _write_atomic(self.csv, _csv_text(self.rows, self.settings.get("eps", [])))
        self.written = True

    def summary(self) -> str:
        """One line: what was saved, and where the run stopped."""
        n = f"{len(self.rows)} of {len(self.planned)} models finished"
        saved = (f"table in {self.csv} and .json, models in {self.models_dir}/" if self.written
                 else "nothing saved")
        if self.model is None:
            where = f"interrupted while {self.phase}" + (
                f" ({', '.join(map(str, self.figures))} written)" if self.figures else "")
            return f"{n}: {saved}; {where}"
        h = self.history
        if h is None:
            where = f"'{self.model}' interrupted while {self.phase}, before its first checkpoint"
        elif h.interrupted:
            st, total = h.state, h.config.epochs
            at = (f"in epoch {st.epoch + 1} of {total} (batch {st.batch} of {self.n_batches})" if st.batch
                  else f"after epoch {st.epoch} of {total}")
            where = f"'{self.model}' interrupted {at}, checkpoint {self.checkpoint}"
        else:
            where = (f"'{self.model}' trained ({len(h.epochs)} epochs) but interrupted while {self.phase}, "
                     f"checkpoint {self.checkpoint}")
        return f"{n}: {saved}; {where}"


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT for a short write (main thread only: signal handlers live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once: a reader never sees a half-written table, and an
    interrupted write leaves the previous one."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def _csv_text(rows: list, eps: list) -> str:
    """The summary table's columns, one row per finished model (``cert@ε`` the better of the
    interval and Lipschitz certified accuracies, as in :func:`format_reproduce_table`)."""
    cols = ["model", "params", "val_accuracy", "accuracy", "mu_inf", "lipschitz_tight", "lipschitz_paper"]
    cols += [f"cert@{e:g}" for e in eps] + [f"pgd@{e:g}" for e in eps]
    cols += [f"cert_interval@{e:g}" for e in eps] + [f"cert_lipschitz@{e:g}" for e in eps]
    cols += ["forward_iterations_mean", "epochs", "train_s", "checkpoint"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        robust = {f"{x['eps']:g}": x for x in r["robust"]}
        cells = [r["model"], r["params"], r["val_accuracy"], r["accuracy"], r["mu_inf"], r["lipschitz_tight"],
                 r["lipschitz_paper"]]
        cells += [max(robust[f"{e:g}"]["certified_interval"], robust[f"{e:g}"]["certified_lipschitz"]) for e in eps]
        cells += [robust[f"{e:g}"]["pgd"] for e in eps]
        cells += [robust[f"{e:g}"]["certified_interval"] for e in eps]
        cells += [robust[f"{e:g}"]["certified_lipschitz"] for e in eps]
        cells += [r["forward_iterations_mean"], r["epochs"], r["train_s"], r["checkpoint"]]
        writer.writerow([repr(float(c)) if isinstance(c, (float, np.floating)) else c for c in cells])
    return buf.getvalue()


def _best_available(data_dir):
    for name in ("fashion-mnist", "mnist"):
        try:
            load_dataset(name, data_dir=data_dir)
            return name
        except (FileNotFoundError, ValueError):
            continue
    logger.warning("no Fashion-MNIST or MNIST files found: the full run falls back to mnist5k")
    return "mnist5k"


def format_reproduce_table(rows, header: bool = True) -> str:
    eps = [r["eps"] for r in rows[0]["robust"]]
    cols = ["model".ljust(30), "params", " clean", "mu_inf", "Lip.tight", "Lip.paper"]
    cols += [f"cert@{e:g}" for e in eps] + [f"pgd@{e:g}" for e in eps] + [" iters", "epochs", "train s"]
    lines = ["  ".join(cols)] if header else []
    for r in rows:
        cells = [r["model"].ljust(30), f"{r['params']:>6d}", f"{r['accuracy']:.4f}", f"{r['mu_inf']:>6.3g}",
                 f"{r['lipschitz_tight']:>9.3g}", f"{r['lipschitz_paper']:>9.3g}"]
        for x in r["robust"]:
            best = max(x["certified_interval"], x["certified_lipschitz"])
            cells.append(f"{best:.4f}".rjust(len("cert@{:g}".format(x["eps"]))))
        for x in r["robust"]:
            cells.append(f"{x['pgd']:.4f}".rjust(len("pgd@{:g}".format(x["eps"]))))
        cells += [f"{r['forward_iterations_mean']:>6.1f}", f"{r.get('epochs', 0):>6d}", f"{r['train_s']:>7.1f}"]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _plot_iterations(trained: dict, U, path, engine):
    """Iterations to tolerance of every scheme on each trained model's equilibrium problem."""
    from matplotlib.figure import Figure  # an explicit figure: no pyplot state, no backend choice

    methods = ("average", "forward_backward", "peaceman_rachford", "douglas_rachford", "anderson")
    names, table = [], []
    for name, net in trained.items():
        if name.startswith("feed-forward"):
            continue
        W = net.injected(U).astype(np.float64)
        A = net.state_operator()  # a convolution's kernel is float64 already
        res = compare_methods(A if isinstance(A, Conv2d) else A.astype(np.float64), W, methods=methods,
                              activation=net.activation.name, atol=1e-6, max_iter=3000, engine=engine, repeats=1)
        names.append(name.replace("implicit ", ""))
        table.append([r.iterations_mean if r.status == "SUCCESS" else np.nan for r in res])
    table = np.array(table)
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        ax.bar(np.arange(len(names)) + j * width, table[:, j], width, label=m)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("mean iterations to atol 1e-6 (missing bar: not converged)")
    ax.set_title("iteration schemes on the trained implicit networks (100 test inputs)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
