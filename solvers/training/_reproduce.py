"""The seed paper's experiments end to end: every model trained over seeds, its settings
chosen on validation, the chosen ones certified and attacked on the test set."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import re
from pathlib import Path

import numpy as np

from contraction import Conv2d
from solvers.compare import compare_methods

from ._checkpoint import load_training, save
from ._files import atomic_write, json_safe
from ._data import load_dataset, split_validation
from ._conv_network import ConvImplicitNetwork
from ._network import ImplicitNetwork, SolverConfig
from ._report import evaluate
from ._robust import certified_accuracy, plot_robustness, robustness_table
from ._runner import read_records, run_jobs
from ._trainer import TrainConfig, train

__all__ = ["ModelSpec", "model_specs", "reproduce", "ReproduceInterrupted", "format_reproduce_table", "EPS_DEFAULT"]

logger = logging.getLogger(__name__)

EPS_DEFAULT = (0.01, 0.02, 0.05, 0.1)
#: Share of the training set every model of :func:`reproduce` holds out for validation.
VAL_FRACTION = 0.1
#: Validation samples certified per run to choose an interval-trained model's settings.
SELECT_SAMPLES = 1000
#: The settings each model chooses on validation: the learning rate, and the interval
#: weight of the interval-trained ones (at the learning rate of their spec).
LR_GRID = (1e-3, 3e-3)
INTERVAL_WEIGHT_GRID = (0.5, 0.65, 0.8)


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
    #: ``(name, value)`` pairs that replace CONV_ARCH's for this model (a conv model's own layer).
    arch: tuple = ()

    @property
    def interval(self) -> bool:
        return self.config.interval_eps > 0

    @property
    def grid(self) -> dict:
        """``TrainConfig`` field -> the values chosen among on validation: the interval
        weight for an interval-trained model, else the learning rate."""
        return {"interval_weight": INTERVAL_WEIGHT_GRID} if self.interval else {"lr": LR_GRID}

    @property
    def select(self) -> str:
        """The validation score that chooses: certified accuracy at the largest ε for an
        interval-trained model (the weight trades clean for certified accuracy), else accuracy."""
        return "val_certified" if self.interval else "val_accuracy"

    def candidates(self) -> list:
        """Every combination of :attr:`grid`, in its order."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.grid.values())]


#: The convolutional rows' layer: an input convolution of stride 2 onto 16 channels of half the
#: input's size (28x28 images: a 14x14 state), 3x3 kernels, a 2x2 average pool before the
#: readout (784 pooled features, as many as the dense rows' inputs).
CONV_ARCH = {"channels": 16, "kernel_size": 3, "pool": 2, "padding": "circular", "stride": 2}
#: Channels of the convolutional rows in a quick run.
QUICK_CHANNELS = 8
#: The hidden readout layer's width in a quick run (for the models that have one).
QUICK_READOUT_HIDDEN = 16
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
        # The README's interval command: 24 channels, the whole 14x14 state read out through a
        # hidden ReLU layer of 512 units, batch 50, per-unit steps, 16 epochs.
        ModelSpec("conv mu_inf + interval, hidden readout",
                  run(constraint="mu_inf", interval_eps=0.11, interval_weight=0.8, diag_min=-1.0, lr=2e-3,
                      batch_size=50, per_unit_steps=True),
                  conv=True, full_epochs=16, arch=(("channels", 24), ("pool", 1), ("readout_hidden", 512))),
        # The seed authors' convolutional layer; the table's mu_inf column shows its true value.
        ModelSpec("conv nemon_param", run(constraint="nemon_param", gamma=SEED_CONV_MARGIN), conv=True),
    ]


class ReproduceInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`reproduce`; every finished run is in ``results.jsonl``.

    A :class:`KeyboardInterrupt`, so code that does not catch it stops as on any Ctrl-C.
    ``str(exc)`` is :attr:`summary`, one line: how many runs are recorded, and that the same
    call again does the rest.
    """

    def __init__(self, summary: str, results: Path):
        super().__init__(summary)
        self.summary = summary
        self.results = results


@dataclasses.dataclass(frozen=True)
class _Settings:
    """What every run of one :func:`reproduce` call shares (the jobs' common part)."""

    dataset: str
    data_dir: str | None
    data_seed: int
    quick: bool
    epochs: int | None  # None: each spec's default
    engine: str
    eps: tuple
    eval_samples: int | None  # None: the whole test set
    pgd_steps: int

    def spec_epochs(self, spec: ModelSpec) -> int:
        if self.epochs is not None:
            return self.epochs
        return 6 if self.quick else (spec.full_epochs or 30)

    def data(self):
        """``(X, y, X_val, y_val, X_test, y_test)``: the split every run uses, the test set cut
        to ``eval_samples``."""
        X, y, Xt, yt = load_dataset(self.dataset, data_dir=self.data_dir, seed=self.data_seed)
        X, y, Xv, yv = split_validation(X, y, VAL_FRACTION, seed=self.data_seed)
        return X, y, Xv, yv, Xt[: self.eval_samples], yt[: self.eval_samples]


def reproduce(quick: bool = True, dataset: str | None = None, data_dir=None, out_dir="out/reproduce",
              eps=EPS_DEFAULT, seed: int = 0, seeds: int | None = None, epochs: int | None = None,
              eval_samples: int | None = None, pgd_steps: int | None = None, progress: bool = False,
              engine: str = "numba", log=None, models=None, scheduler: str | None = None,
              workers: int | None = None):
    """Train every model of :func:`model_specs`, choose its settings on validation, then
    certify and attack the chosen ones on the test set; mean ± std over ``seeds`` seeds.

    ``quick``: mnist5k, 6 epochs, 500 test samples, PGD with 10 steps, one seed. Otherwise
    Fashion-MNIST when installed (else MNIST files, else mnist5k), 30 epochs (a spec's
    ``full_epochs`` where set, unless ``epochs`` is given), the whole test set, PGD with 20
    steps, three seeds. ``models``: exact names from :func:`model_specs`; all by default.

    The runs: every model, every candidate of its :attr:`ModelSpec.grid`, seeds ``seed``,
    ``seed + 1``, ... (initialisation and batch order; the split is ``seed``'s, 10% of the
    training set held out, for every run). Each trains and scores its validation split; per
    model the candidate with the best mean validation score (:attr:`ModelSpec.select`) is
    chosen, and only its checkpoints are scored on the test set: clean accuracy, μ∞, the
    Lipschitz bounds, certified (interval, Lipschitz) and FGSM/PGD accuracy at each ε. The
    runs are jobs of :func:`._runner.run_jobs`: on a local Dask cluster (``workers`` processes,
    default one per core; ``0``: in this process), or on ``scheduler``'s.

    Written under ``out_dir``: ``results.jsonl`` (every finished run, as it finishes: a rerun
    of the same call skips them, so Ctrl-C -- :class:`ReproduceInterrupted` -- loses at most
    the runs under way), ``models/`` (their checkpoints), then ``results.csv`` and
    ``results.json`` (the table: per model the chosen settings, mean and std of every column,
    the validation scores of every candidate), ``robustness.png`` and ``iterations.png``.

    Returns ``(rows, figure paths)``; a row holds ``model``, ``chosen`` (the settings),
    ``seeds``, ``stats`` (column -> (mean, std)), ``values`` (column -> per-seed values),
    ``checkpoints`` and ``candidates`` (the validation table).
    """
    log = log if log is not None else logger.info
    names = [s.name for s in model_specs()]
    if models and (len(set(models)) != len(models) or any(m not in names for m in models)):
        raise ValueError(f"models must be distinct names from {names}, got {list(models)}")
    seeds = seeds if seeds is not None else (1 if quick else 3)
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be an integer >= 0 (0: in this process), got {workers!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    if (out / "results.json").exists() and not results.exists():
        raise ValueError(f"{out / 'results.json'} is not from a run of this nemon (it has no results.jsonl beside "
                         "it): pass another out_dir (--out) rather than overwrite it")
    done = read_records(results)  # before any data is loaded: a bad file is reported at once
    settings = _Settings(
        dataset=dataset or ("mnist5k" if quick else _best_available(data_dir)),
        data_dir=None if data_dir is None else str(data_dir), data_seed=int(seed), quick=bool(quick),
        epochs=epochs, engine=engine, eps=tuple(float(e) for e in eps),
        eval_samples=eval_samples if eval_samples is not None else (500 if quick else None),
        pgd_steps=pgd_steps if pgd_steps is not None else (10 if quick else 20))
    specs = [s for s in model_specs() if not models or s.name in models]
    seed_list = [int(seed) + i for i in range(int(seeds))]
    run = dict(scheduler=scheduler, workers=workers, progress=progress, log=log)
    try:
        trains = {_key("train", settings, spec, params, s): (spec, params, s)
                  for spec in specs for params in spec.candidates() for s in seed_list}
        todo = len([k for k in trains if k not in done])
        log(f"reproduce: {settings.dataset}, {len(specs)} models, {len(trains)} training runs ({len(trains) - todo} "
            f"already in {results}), seeds {seed_list}, eps {list(settings.eps)}, PGD {settings.pgd_steps} steps")
        jobs = [(k, _train_run, (settings, spec.name, params, s, str(out / "models" / f"{_slug(spec.name)}-{k}.npz")))
                for k, (spec, params, s) in trains.items()]
        failed = run_jobs(jobs, results, done, what="training", **run)
        chosen = {}
        for spec in specs:
            pick = _choose(spec, [(k, done.get(k)) for k, v in trains.items() if v[0] is spec], settings, log)
            if pick is not None:
                chosen[spec.name] = pick
        tests = {_key("test", settings, spec, chosen[spec.name][0], s, train_key=k): (spec.name, k)
                 for spec in specs if spec.name in chosen for k, s in chosen[spec.name][1]}
        jobs = [(k, _test_run, (settings, name, done[tk]["checkpoint"], done[tk]["seed"], done[tk]["metrics"]))
                for k, (name, tk) in tests.items()]
        failed.update(run_jobs(jobs, results, done, what="test", **run))
    except KeyboardInterrupt:
        n = len(read_records(results))
        raise ReproduceInterrupted(f"{n} finished runs recorded in {results}; the same command again does the rest",
                                   results) from None
    rows = []
    for spec in specs:
        if spec.name not in chosen:
            continue
        params, _, candidates = chosen[spec.name]
        records = [done[k] for k, (name, _) in tests.items() if name == spec.name and k in done]
        if records:
            rows.append(_row(spec, params, records, candidates))
    if failed:
        log(f"reproduce: {len(failed)} runs failed (not recorded; a rerun tries them again)")
    figures = _write_table(out, rows, settings, seed_list) if rows else []
    return rows, figures


def _key(phase: str, settings: _Settings, spec: ModelSpec, params: dict, seed: int, **more) -> str:
    """A run's identity: everything its result depends on (not where the data files are)."""
    identity = {"phase": phase, "model": spec.name, "params": params, "seed": seed,
                **{k: v for k, v in dataclasses.asdict(settings).items() if k != "data_dir"},
                "epochs": settings.spec_epochs(spec), **more}
    if phase == "train":  # a training run does not depend on how the test set is scored
        for k in ("eps", "eval_samples", "pgd_steps"):
            identity.pop(k)
        identity["select_eps"] = max(settings.eps)
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _spec(name: str) -> ModelSpec:
    return next(s for s in model_specs() if s.name == name)


def _train_run(settings: _Settings, name: str, params: dict, seed: int, checkpoint: str) -> dict:
    """One training run (a job): train, save the checkpoint, score the validation split."""
    spec = _spec(name)
    X, y, Xv, yv, _, _ = settings.data()
    n_out = int(y.max()) + 1
    net = _network(spec, X.shape[1], n_out, settings.quick, seed=seed, dtype=np.dtype(spec.dtype),
                   solver=SolverConfig(engine=settings.engine))
    n_epochs = settings.spec_epochs(spec)
    config = dataclasses.replace(spec.config, **params, epochs=n_epochs, interval_ramp=max(1, n_epochs // 3),
                                 seed=seed)
    history = train(net, X, y, config, X_val=Xv, y_val=yv, progress=False)
    if history.interrupted:  # the trainer caught Ctrl-C and stopped after a batch
        raise KeyboardInterrupt
    net.solver = history.solver  # evaluate and save with the solver it was trained with
    select_eps = max(settings.eps)
    metrics = {"val_accuracy": net.accuracy(Xv, yv), "epochs": len(history.epochs),
               "train_s": sum(r["seconds"] for r in history.epochs), "mu_inf": history.epochs[-1]["mu_inf"]}
    if spec.select == "val_certified":
        metrics["val_certified"] = certified_accuracy(net, Xv[:SELECT_SAMPLES], yv[:SELECT_SAMPLES], select_eps)
    save(net, checkpoint, history=history,
         metrics={"dataset": settings.dataset, "data_seed": settings.data_seed, "val_fraction": VAL_FRACTION,
                  "reproduce": {"model": name, "params": params, "seed": seed, **metrics}})
    return {"phase": "train", "model": name, "params": params, "seed": seed, "checkpoint": checkpoint,
            "metrics": metrics}


def _test_run(settings: _Settings, name: str, checkpoint: str, seed: int, trained: dict) -> dict:
    """One test run (a job): the chosen checkpoint scored, certified and attacked on the test set."""
    spec = _spec(name)
    net, history, _ = load_training(checkpoint)
    net.solver = dataclasses.replace(net.solver, engine=settings.engine)
    _, _, _, _, Xe, ye = settings.data()
    eta = history.config.make_constraint().weights(history.state.raw)
    m = evaluate(net, Xe, ye, eta=eta)
    robust = robustness_table(net, Xe, ye, settings.eps, attacks=True, eta=eta, pgd_steps=settings.pgd_steps,
                              seed=seed)
    metrics = {"params": net.parameter_count() - (net.n_hidden**2 if spec.config.constraint == "zero" else 0),
               **{k: m[k] for k in ("accuracy", "mu_inf", "lipschitz_tight", "lipschitz_paper",
                                    "forward_iterations_mean")},
               "val_accuracy": trained["val_accuracy"], "epochs": trained["epochs"], "train_s": trained["train_s"]}
    for r in robust:
        e = f"{r['eps']:g}"
        metrics.update({f"cert@{e}": max(r["certified_interval"], r["certified_lipschitz"]),
                        f"cert_interval@{e}": r["certified_interval"], f"cert_lipschitz@{e}": r["certified_lipschitz"],
                        f"fgsm@{e}": r["fgsm"], f"pgd@{e}": r["pgd"]})
    return {"phase": "test", "model": name, "seed": seed, "checkpoint": checkpoint, "samples": len(Xe),
            "metrics": metrics}


def _mean_std(values) -> tuple:
    """``(mean, sample std)``; the same value on every seed (one seed, or a bound that is
    infinite on every seed) has std 0, and a mix of infinite and finite values std NaN."""
    values = np.asarray(values, dtype=float)
    if (values == values[0]).all():
        return float(values[0]), 0.0
    with np.errstate(invalid="ignore"):
        return float(values.mean()), float(values.std(ddof=1))


def _choose(spec: ModelSpec, runs: list, settings: _Settings, log):
    """The candidate of ``spec`` with the best mean validation score over its seeds (the first
    in grid order on a tie), among those whose every seed finished; ``(params, [(train key,
    seed), ...], scores)`` or None."""
    by_params: dict = {}
    for key, record in runs:
        if record is not None:
            by_params.setdefault(json.dumps(record["params"], sort_keys=True), []).append((key, record))
    n_seeds = len(runs) // len(spec.candidates())
    complete = [(json.loads(p), members) for p, members in by_params.items() if len(members) == n_seeds]
    if not complete:
        log(f"reproduce: {spec.name}: no candidate finished every seed; not in the table")
        return None
    metric = spec.select
    scores = [(params, _mean_std([r["metrics"][metric] for _, r in members])) for params, members in complete]
    best = max(range(len(complete)), key=lambda i: (scores[i][1][0], -i))
    params, members = complete[best]
    what = metric.replace("_", " ") + (f" at eps {max(settings.eps):g}" if metric == "val_certified" else "")
    table = ", ".join(f"{_describe(p)}: {m:.4f} ± {s:.4f}" for p, (m, s) in scores)
    log(f"reproduce: {spec.name}: chose {_describe(params)} on {what} ({table})")
    candidates = [{"params": p, metric: {"mean": m, "std": s}} for p, (m, s) in scores]
    return params, [(k, r["seed"]) for k, r in members], candidates


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "(fixed)"


def _row(spec: ModelSpec, params: dict, records: list, candidates: list) -> dict:
    records = sorted(records, key=lambda r: r["seed"])
    columns = list(records[0]["metrics"])
    values = {c: [r["metrics"][c] for r in records] for c in columns}
    return {"model": spec.name, "chosen": params, "seeds": [r["seed"] for r in records],
            "stats": {c: _mean_std(v) for c, v in values.items()}, "values": values,
            "checkpoints": [r["checkpoint"] for r in records], "candidates": candidates}


def _write_table(out: Path, rows: list, settings: _Settings, seed_list) -> list:
    doc = {"settings": {**dataclasses.asdict(settings), "seeds": seed_list, "val_fraction": VAL_FRACTION},
           "rows": rows}
    _write_atomic(out / "results.json", json.dumps(json_safe(doc), indent=1, allow_nan=False) + "\n")
    _write_atomic(out / "results.csv", _csv_text(rows))
    figures = []
    curves = {r["model"]: [{"eps": e, "clean": r["stats"]["accuracy"][0],
                            **{name: r["stats"][f"{col}@{e:g}"][0] for name, col in _CURVES}}
                           for e in settings.eps] for r in rows}
    shown = {k: v for k, v in curves.items() if "interval" in k or k in ("implicit mu_inf", "feed-forward ReLU")}
    seeds = f", mean of {len(seed_list)} seeds" if len(seed_list) > 1 else ""
    figures.append(plot_robustness(shown or curves, out / "robustness.png",
                                   title=f"{settings.dataset}: certified (interval, Lipschitz) and PGD accuracy{seeds}"))
    implicit = {r["model"]: load_training(r["checkpoints"][0])[0] for r in rows
                if not r["model"].startswith("feed-forward")}
    if implicit:
        _, _, _, _, Xe, _ = settings.data()
        figures.append(_plot_iterations(implicit, Xe[:100], out / "iterations.png", settings.engine))
    return figures


#: The curves of the robustness figure: its row key, the table's column.
_CURVES = (("certified_interval", "cert_interval"), ("certified_lipschitz", "cert_lipschitz"), ("pgd", "pgd"))


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once: a reader never sees a half-written table, and an
    interrupted write leaves the previous one."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def _table_columns(rows: list) -> list:
    eps = sorted({c.split("@")[1] for c in rows[0]["stats"] if c.startswith("cert@")}, key=float)
    return (["params", "val_accuracy", "accuracy", "mu_inf", "lipschitz_tight", "lipschitz_paper"]
            + [f"cert@{e}" for e in eps] + [f"pgd@{e}" for e in eps] + [f"cert_interval@{e}" for e in eps]
            + [f"cert_lipschitz@{e}" for e in eps] + [f"fgsm@{e}" for e in eps]
            + ["forward_iterations_mean", "epochs", "train_s"])


def _csv_text(rows: list) -> str:
    """The table: one row per model, its chosen settings, the seeds, then the mean and the
    standard deviation over seeds of every column (``cert@ε`` the better of the interval and
    Lipschitz certified accuracies, as in :func:`format_reproduce_table`)."""
    cols = _table_columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "chosen", "seeds"] + [f"{c}_{s}" for c in cols for s in ("mean", "std")]
                    + ["checkpoints"])
    for r in rows:
        cells = [r["model"], _describe(r["chosen"]), len(r["seeds"])]
        cells += [repr(float(v)) for c in cols for v in r["stats"][c]]
        writer.writerow(cells + [" ".join(r["checkpoints"])])
    return buf.getvalue()


def _network(spec: ModelSpec, n_in: int, n_out: int, quick: bool, **common):
    """The untrained network of a model: dense, or a conv layer on square one-channel images."""
    if not spec.conv:
        return ImplicitNetwork(n_in, spec.hidden, n_out, **common)
    arch = {**CONV_ARCH, **dict(spec.arch)}
    if quick:
        arch["channels"] = QUICK_CHANNELS
        if arch.get("readout_hidden"):
            arch["readout_hidden"] = QUICK_READOUT_HIDDEN
    side = int(round(np.sqrt(n_in)))
    step = arch["pool"] * arch["stride"]
    if side * side != n_in or side % step:
        raise ValueError(f"model '{spec.name}' needs square one-channel images whose side {step} (stride times "
                         f"pool) divides; the data set has {n_in} features per sample")
    return ConvImplicitNetwork((1, side, side), n_out=n_out, **arch, **common)


def _slug(name: str) -> str:
    """A file name for a model: 'implicit mu_inf + interval' -> 'implicit-mu_inf-interval'."""
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


def _best_available(data_dir):
    for name in ("fashion-mnist", "mnist"):
        try:
            load_dataset(name, data_dir=data_dir)
            return name
        except (FileNotFoundError, ValueError):
            continue
    logger.warning("no Fashion-MNIST or MNIST files found: the full run falls back to mnist5k")
    return "mnist5k"


def format_reproduce_table(rows) -> str:
    """The table: one line per model, mean ± std over its seeds (the mean alone with one seed);
    ``cert@ε`` is the better of the interval and Lipschitz certified accuracies."""
    eps = sorted({c.split("@")[1] for c in rows[0]["stats"] if c.startswith("cert@")}, key=float)
    spread = any(len(r["seeds"]) > 1 for r in rows)
    cols = [("params", "params", "{:.0f}"), ("val_accuracy", "val", "{:.4f}"), ("accuracy", "clean", "{:.4f}"),
            ("mu_inf", "mu_inf", "{:.3g}"), ("lipschitz_tight", "Lip.tight", "{:.3g}"),
            ("lipschitz_paper", "Lip.paper", "{:.3g}")]
    cols += [(f"cert@{e}", f"cert@{e}", "{:.4f}") for e in eps] + [(f"pgd@{e}", f"pgd@{e}", "{:.4f}") for e in eps]
    cols += [("forward_iterations_mean", "iters", "{:.1f}"), ("epochs", "epochs", "{:.0f}"),
             ("train_s", "train s", "{:.1f}")]

    def cell(stats, fmt):
        mean, std = stats
        return fmt.format(mean) + (f"±{fmt.format(std)}" if spread and fmt != "{:.0f}" and np.isfinite(mean) else "")

    table = [["model", "seeds"] + [h for _, h, _ in cols] + ["chosen"]]
    for r in rows:
        table.append([r["model"], str(len(r["seeds"]))] + [cell(r["stats"][c], f) for c, _, f in cols]
                     + [_describe(r["chosen"])])
    widths = [max(len(line[j]) for line in table) for j in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) if j in (0, len(widths) - 1) else c.rjust(w)
                                for j, (c, w) in enumerate(zip(line, widths))).rstrip() for line in table)


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
