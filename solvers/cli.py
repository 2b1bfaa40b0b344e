"""The ``nemon`` command line: the only place where arguments are parsed."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np

import contraction

from .engine import compilation

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def load_matrix(path: str, name: str = "matrix") -> np.ndarray:
    """Read a 2-D array from ``.npy``, ``.csv`` or whitespace-separated text."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{name} file not found: {path}")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".csv":
            arr = np.loadtxt(p, delimiter=",", ndmin=2)
        else:
            arr = np.loadtxt(p, ndmin=2)
    except Exception as exc:
        raise CLIError(f"could not read {name} from {path}: {exc}") from None
    arr = np.asarray(arr, dtype=np.float64) if np.issubdtype(np.asarray(arr).dtype, np.number) else arr
    if arr.ndim != 2:
        raise CLIError(f"{name} in {path} must be 2-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise CLIError(f"{name} in {path} has non-finite entries")
    return arr


def _matrices(args):
    if args.example is not None:
        if args.matrix is not None:
            raise CLIError("give either MATRIX or --example, not both")
        A, B = contraction.example(args.example, n=args.n, seed=args.seed)
        source = f"example {args.example!r} (n={A.shape[0]}): {contraction.EXAMPLES[args.example][0]}"
    elif args.matrix is not None:
        A = load_matrix(args.matrix, "A")
        B = None
        source = f"file {args.matrix}"
    else:
        raise CLIError("give a MATRIX file or --example NAME (one of: " + ", ".join(contraction.EXAMPLES) + ")")
    if A.shape[0] != A.shape[1]:
        raise CLIError(f"A must be square, got shape {A.shape}")
    if getattr(args, "B", None):
        B = load_matrix(args.B, "B")
        if B.shape[0] != A.shape[0]:
            raise CLIError(f"B must have {A.shape[0]} rows to match A, got shape {B.shape}")
    return A, B, source


def cmd_check(args) -> int:
    A, B, source = _matrices(args)
    conditions = [c for c in contraction.CONDITIONS if not (args.no_lben and c == "lben")]
    report = contraction.wellposedness(A, conditions=conditions)
    print(f"Matrix: {source}")
    print()
    print("Well-posedness (each condition holds when value < 1):")
    print(report.table())
    eta, best = contraction.optimal_weights(A)
    print()
    print(f"Best diagonal weights: mu_inf,eta(A) = {best:.6g} (infimum alpha(ceil(A)) = "
          f"{report['nemon_weighted'].value:.6g}); eta ranges over [{eta.min():.3g}, {eta.max():.3g}]")
    print()
    print("Iterations (factor = worst-case l-inf Lipschitz constant of one step; < 1 contracts):")
    print(f"{'method':<18} {'alpha':>10} {'factor':>10} {'iters to 1e-8 from r=1':>24}")
    for method in contraction.METHODS:
        if method == "anderson":
            continue
        alpha = contraction.optimal_alpha(A, method)
        factor = contraction.contraction_factor(A, alpha, method)
        bound = contraction.iteration_bound(factor, 1.0, 1e-8)
        print(f"{method:<18} {alpha:>10.4g} {factor:>10.4g} {bound!s:>24}")
    if B is not None:
        tight = contraction.lipschitz_bound(A, B, form="tight")
        paper = contraction.lipschitz_bound(A, B, form="paper")
        print()
        print(f"Input-to-state l-inf Lipschitz bound: {tight:.6g} (tight, 1/(1-mu)), "
              f"{paper:.6g} (paper, 1/(1-max(0,mu)))")
    return 0 if report["nemon"].holds or report["nemon_weighted"].holds else 1


def cmd_solve(args) -> int:
    from . import solve

    A, _, source = _matrices(args)
    if args.W is not None:
        W = load_matrix(args.W, "W")
    else:
        W = np.random.default_rng(args.seed).standard_normal((args.batch, A.shape[0]))
    result = solve(A, W, method=args.method, atol=args.atol, max_iter=args.max_iter,
                   activation=args.activation, engine=args.engine)
    print(f"Matrix: {source}; inputs: {'file ' + args.W if args.W else f'{args.batch} Gaussian samples'}")
    print(f"method {result.method} (alpha {result.alpha:.4g}), engine {result.engine}: {result.status.name}: "
          f"{result.status.message}")
    print(f"iterations: mean {result.iterations.mean():.1f}, max {result.iterations.max()}; "
          f"residual max {result.residual.max():.3e}; error bound max {result.error_bound.max():.3e}")
    if args.out:
        np.save(args.out, result.x)
        print(f"wrote {args.out}")
    return 0 if result.success else 1


def cmd_compare(args) -> int:
    from .compare import compare_methods, format_table, instance, plot_comparison

    if args.matrix is not None:
        A = load_matrix(args.matrix, "A")
        if A.shape[0] != A.shape[1]:
            raise CLIError(f"A must be square, got shape {A.shape}")
        W = np.random.default_rng(args.seed).standard_normal((args.batch, A.shape[0]))
        source = f"file {args.matrix}"
    else:
        A, W = instance(args.family, n=args.n, batch=args.batch, seed=args.seed)
        source = f"family {args.family} (n={args.n})"
    rows = compare_methods(A, W, activation=args.activation, atol=args.atol, max_iter=args.max_iter,
                           engine=args.engine, repeats=args.repeats)
    print(f"Iteration schemes on {source}, batch {W.shape[0]}, {args.activation}, atol {args.atol:g}, "
          f"engine {args.engine}; mu_inf(A) = {contraction.mu_inf(A):.4g}, min a_ii = {np.diagonal(A).min():.4g}")
    print(format_table(rows))
    path = plot_comparison(rows, args.out, title=f"{source}, batch {W.shape[0]}")
    print(f"figure: {path}")
    return 0


DEFAULT_EPOCHS = 15


def train_config(args):
    """The :class:`TrainConfig` of ``nemon train``'s options."""
    from .training import TrainConfig

    return TrainConfig(epochs=DEFAULT_EPOCHS if args.epochs is None else args.epochs, batch_size=args.batch_size,
                       lr=args.lr, optimizer=args.optimizer, schedule=args.schedule, constraint=args.constraint,
                       gamma=args.gamma, lipschitz_weight=args.lipschitz_weight, atol=args.atol, seed=args.seed,
                       interval_eps=args.interval_eps, interval_weight=args.interval_weight,
                       interval_ramp=args.interval_ramp, forward_method=args.forward_method or "",
                       diag_min=args.diag_min)


def cmd_train(args) -> int:
    from . import training as tr
    from .training import evaluate, format_epoch_table, format_report, plot_history

    if args.resume:
        try:
            net, history, saved = tr.load_training(args.resume)
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from None
        _default_dataset(args, saved)
        if history is None:
            raise CLIError(f"{args.resume} holds no training state to resume")
        epochs = history.config.epochs if args.epochs is None else args.epochs
        config = dataclasses.replace(history.config, epochs=epochs)
        print(f"Resuming {args.resume}: epoch {history.state.epoch + 1}, batch {history.state.batch}")
    Xtr, ytr, Xte, yte = load_data(args)
    if not args.resume:
        net = tr.ImplicitNetwork(Xtr.shape[1], args.hidden, int(ytr.max()) + 1, activation=args.activation,
                                 seed=args.seed, dtype=np.dtype(args.dtype),
                                 solver=tr.SolverConfig(engine=args.engine))
        config, history = train_config(args), None
    net.solver = dataclasses.replace(net.solver, engine=args.engine)
    print(f"Training {net} on {args.dataset} ({len(Xtr)} train / {len(Xte)} test), "
          f"constraint {config.constraint} (gamma {config.gamma}"
          f"{'' if config.diag_min is None else ', diag_min %g' % config.diag_min}), {config.optimizer} lr {config.lr}, "
          f"{config.epochs} epochs")
    print(format_epoch_table([], header=True))

    def show(record):
        print(format_epoch_table([record], header=False), flush=True)

    hist = tr.train(net, Xtr, ytr, config, X_val=Xte, y_val=yte, progress=not args.no_progress, callback=show,
                    resume=history)
    net.solver = hist.solver  # evaluate and save with the solver it was trained with
    con = hist.config.make_constraint()
    metrics = {"dataset": args.dataset, "data_seed": args.data_seed}
    if hist.interrupted:  # saved at once (no evaluation: Ctrl-C means stop now)
        path = tr.save(net, args.out, history=hist, metrics=metrics)
        print(f"\nInterrupted: checkpoint saved to {path}; continue with: nemon train --resume {path}")
        return 130
    metrics = {**evaluate(net, Xte, yte, eta=con.weights(hist.state.raw)), **metrics}
    path = tr.save(net, args.out, history=hist, metrics=metrics)
    print()
    print(format_report(metrics, title=f"Final report ({args.dataset} test set)"))
    print(f"total training time         {sum(r['seconds'] for r in hist.epochs):.1f} s")
    print(f"checkpoint: {path}")
    if hist.epochs:
        fig = plot_history(hist, args.figure, title=f"{net} on {args.dataset}, constraint {hist.config.constraint}")
        print(f"figure: {fig}")
    return 0


def cmd_evaluate(args) -> int:
    from . import training as tr
    from .training import evaluate, format_report

    net, history, saved = _load_checkpoint(args)
    _, _, Xte, yte = load_data(args)
    if Xte.shape[1] != net.n_in:
        raise CLIError(f"{args.dataset} has {Xte.shape[1]} features but the network expects {net.n_in}")
    eta = None
    if history is not None:
        eta = history.config.make_constraint().weights(history.state.raw)
    print(format_report(evaluate(net, Xte, yte, eta=eta), title=f"{args.checkpoint} on {args.dataset} (test set)"))
    return 0


def _eps_list(text: str):
    try:
        eps = [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise CLIError(f"--eps must be comma-separated numbers, got {text!r}") from None
    if not eps or any(not np.isfinite(e) or e < 0 for e in eps):
        raise CLIError(f"--eps must hold finite radii >= 0, got {text!r}")
    return eps


def _robustness(args, attacks: bool) -> int:
    from . import training as tr
    from .training import format_robustness, plot_robustness, robustness_table

    net, history, saved = _load_checkpoint(args)
    eps = _eps_list(args.eps)
    _, _, Xte, yte = load_data(args)
    if Xte.shape[1] != net.n_in:
        raise CLIError(f"{args.dataset} has {Xte.shape[1]} features but the network expects {net.n_in}")
    if args.samples < 1 or args.steps < 1 or args.restarts < 1:
        raise CLIError(f"--samples, --steps and --restarts must be >= 1, got {args.samples}, {args.steps}, "
                       f"{args.restarts}")
    X, y = Xte[: args.samples], yte[: args.samples]
    eta = None
    if history is not None:
        eta = history.config.make_constraint().weights(history.state.raw)
    rows = robustness_table(net, X, y, eps, attacks=attacks, eta=eta, pgd_steps=args.steps,
                            pgd_restarts=args.restarts, seed=args.seed)
    kind = "certificates and attacks" if attacks else "certificates"
    print(f"{args.checkpoint} on {args.dataset} ({len(X)} test samples): {kind}; eps in pixel units of [0, 1] data")
    print(format_robustness(rows))
    path = plot_robustness({Path(args.checkpoint).stem: rows}, args.out)
    print(f"figure: {path}")
    return 0


def cmd_certify(args) -> int:
    return _robustness(args, attacks=False)


def cmd_attack(args) -> int:
    return _robustness(args, attacks=True)


def cmd_reproduce(args) -> int:
    from .training import format_reproduce_table, reproduce

    rows, figs = reproduce(quick=args.quick, dataset=args.dataset, data_dir=args.data_dir, out_dir=args.out,
                           eps=_eps_list(args.eps), seed=args.seed, epochs=args.epochs,
                           eval_samples=args.samples, progress=not args.no_progress, engine=args.engine,
                           log=lambda line: print(line, flush=True),
                           models=[m.strip() for m in args.models.split(",")] if args.models else None)
    print()
    print("Summary (cert = best of interval and Lipschitz certified accuracy; pgd = accuracy under PGD):")
    print(format_reproduce_table(rows))
    for f in figs:
        print(f"figure: {f}")
    return 0


def positive_int(text: str) -> int:
    """argparse type for counts >= 1 (shared with the example and benchmark scripts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _load_checkpoint(args):
    """``(net, history, saved)`` from ``args.checkpoint``, on ``args.engine``, with the
    checkpoint's data set as the default."""
    from . import training as tr

    try:
        net, history, saved = tr.load_training(args.checkpoint)
    except FileNotFoundError as exc:
        raise CLIError(str(exc)) from None
    _default_dataset(args, saved)
    net.solver = dataclasses.replace(net.solver, engine=args.engine)
    return net, history, saved


def _default_dataset(args, saved: dict) -> None:
    """Without --dataset, use the data set the checkpoint was trained on."""
    if args.dataset is None:
        args.dataset = saved.get("dataset", "mnist5k")
        if args.data_seed is None:
            args.data_seed = saved.get("data_seed", 0)


def load_data(args):
    args.dataset = args.dataset or "mnist5k"
    args.data_seed = 0 if args.data_seed is None else args.data_seed
    from .training import load_dataset

    try:
        return load_dataset(args.dataset, data_dir=args.data_dir, download=args.download, seed=args.data_seed)
    except (FileNotFoundError, ImportError) as exc:
        raise CLIError(str(exc)) from None


def _add_matrix_args(p):
    p.add_argument("matrix", nargs="?", help="A as .npy, .csv or whitespace-separated text")
    p.add_argument("--example", choices=list(contraction.EXAMPLES), help="a built-in example instead of a file")
    p.add_argument("--n", type=int, default=8, help="size of a built-in example (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of a built-in example (default 0)")
    p.add_argument("--B", help="input matrix B (n x m) for the Lipschitz bound")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemon",
        description="Implicit networks made well-posed by non-Euclidean contraction.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="well-posedness table, step sizes, contraction factors")
    _add_matrix_args(p)
    p.add_argument("--no-lben", action="store_true", help="skip the LBEN semidefinite program (large n)")
    p.set_defaults(func=cmd_check)

    from . import ACTIVATIONS, ENGINES, METHODS

    p = sub.add_parser("solve", help="solve x = sigma(Ax + w) for a batch and report the outcome")
    _add_matrix_args(p)
    p.add_argument("--W", help="inputs w, one row per sample (.npy/.csv/text); default Gaussian")
    p.add_argument("--batch", type=int, default=10, help="Gaussian samples when --W is not given")
    p.add_argument("--method", choices=METHODS, default="average")
    _add_solver_args(p, ENGINES, ACTIVATIONS)
    p.add_argument("--out", help="save the solution as .npy")
    p.set_defaults(func=cmd_solve)

    from .compare import FAMILIES

    p = sub.add_parser("compare", help="every iteration scheme on one instance: table and figure")
    p.add_argument("matrix", nargs="?", help="A as .npy, .csv or text (default: a built-in family)")
    p.add_argument("--family", choices=FAMILIES, default="negative-diagonal")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median)")
    p.add_argument("--out", default="out/compare.png", help="figure path")
    _add_solver_args(p, ENGINES, ACTIVATIONS, max_iter=5000)
    p.set_defaults(func=cmd_compare)

    from .training import CONSTRAINTS, DATASETS

    p = sub.add_parser("train", help="train an implicit network (default: mnist5k, n=100, gamma=0.9)")
    _add_data_args(p, DATASETS)
    p.add_argument("--hidden", type=int, default=100, help="hidden units n")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs (default {DEFAULT_EPOCHS}; with --resume, the checkpoint's own)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    p.add_argument("--constraint", choices=list(CONSTRAINTS), default="mu_inf")
    p.add_argument("--gamma", type=float, default=0.9, help="bound of the constraint (mu_inf(A) <= gamma)")
    p.add_argument("--diag-min", type=float, default=None,
                   help="mu_inf only: also keep a_ii >= DIAG_MIN, so alpha* >= 1/(1 - DIAG_MIN) and the solves stay "
                        "fast (interval training otherwise drives self-loops far negative)")
    p.add_argument("--lipschitz-weight", type=float, default=0.0, help="weight of the Lipschitz regulariser")
    p.add_argument("--atol", type=float, default=1e-4, help="forward and adjoint solver tolerance")
    p.add_argument("--interval-eps", type=float, default=0.0,
                   help="interval-bound (robust) training radius in pixel units; 0 = off")
    p.add_argument("--interval-weight", type=float, default=0.5, help="weight of the worst-case loss")
    p.add_argument("--interval-ramp", type=int, default=0, help="epochs over which eps grows from 0")
    p.add_argument("--forward-method", default=None, choices=METHODS,
                   help="forward (and embedded-network) solver; default the constraint's own (average; "
                        "peaceman_rachford for mon); anderson needs fewer iterations")
    p.add_argument("--activation", choices=list(ACTIVATIONS), default="relu")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--engine", choices=ENGINES, default="numba")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/model.npz", help="checkpoint path")
    p.add_argument("--figure", default="out/training.png", help="training-curve figure path")
    p.add_argument("--resume", help="continue from this checkpoint (same result as an uninterrupted run)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="report accuracy, well-posedness and bounds of a checkpoint")
    p.add_argument("checkpoint")
    _add_data_args(p, DATASETS)
    p.add_argument("--engine", choices=ENGINES, default="numba")
    p.set_defaults(func=cmd_evaluate)

    for name, func, helptext in (("certify", cmd_certify, "certified accuracy (interval and Lipschitz) per eps"),
                                 ("attack", cmd_attack, "certified and attacked (FGSM, PGD) accuracy per eps")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("checkpoint")
        _add_data_args(p, DATASETS)
        p.add_argument("--eps", default="0.01,0.05,0.1", help="comma-separated l-inf radii in pixel units")
        p.add_argument("--samples", type=int, default=1000, help="test samples to evaluate")
        p.add_argument("--steps", type=int, default=20, help="PGD steps")
        p.add_argument("--restarts", type=int, default=1, help="PGD random restarts")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--engine", choices=ENGINES, default="numba")
        p.add_argument("--out", default=f"out/{name}.png", help="robustness-curve figure path")
        p.set_defaults(func=func)

    p = sub.add_parser("reproduce", help="the seed paper's comparison end to end (train, certify, attack)")
    p.add_argument("--quick", action="store_true", help="mnist5k, few epochs, 500 test samples (minutes)")
    p.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="default: mnist5k with --quick, else fashion-mnist or mnist when installed")
    p.add_argument("--data-dir")
    p.add_argument("--eps", default="0.01,0.02,0.05,0.1")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--samples", type=int, default=None, help="test samples evaluated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=ENGINES, default="numba")
    p.add_argument("--out", default="out/reproduce", help="folder for the figures")
    p.add_argument("--models", help="comma-separated model names to run (default: all; see the table)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_reproduce)
    return parser


def _add_solver_args(p, engines, activations, max_iter=1000):
    p.add_argument("--activation", choices=list(activations), default="relu")
    p.add_argument("--atol", type=float, default=1e-8)
    p.add_argument("--max-iter", type=int, default=max_iter)
    p.add_argument("--engine", choices=engines, default="numba")


def _add_data_args(p, datasets):
    p.add_argument("--dataset", choices=list(datasets), default=None,
                   help="default mnist5k, or the data set a given checkpoint was trained on")
    p.add_argument("--data-dir", help="folder with the data files (IDX for mnist / fashion-mnist)")
    p.add_argument("--download", action="store_true", help="download MNIST (checksum-verified) if missing")
    p.add_argument("--data-seed", type=int, default=None, help="seed of the train/test split (default 0)")


class _Stderr(logging.Handler):
    """Writes records to the ``sys.stderr`` of the moment (tests and redirections replace it)."""

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # a closed stream must not break the command
            self.handleError(record)


def _show_compilation() -> None:
    """First compilations say so on stderr (what compiles, that it happens once, how long)."""
    log = logging.getLogger("nemon.compile")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("nemon: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _show_compilation()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"nemon {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except CLIError as exc:
        print(f"nemon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"nemon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # e.g. engine='cuda' without a GPU
        print(f"nemon {args.command}: error: {exc}", file=sys.stderr)
        return 2


#: Seconds after Ctrl-C by which the process is gone even if the interrupt was swallowed.
INTERRUPT_GRACE_SECONDS = 1.5


def _interrupt(signum, frame):
    """Ctrl-C: raise KeyboardInterrupt (``main`` turns it into exit code 130), and make sure
    it propagates and the process ends soon: raised inside a C callback (numba's compiler calls
    back into Python while it compiles) it would be printed and ignored, so it is repeated
    while a compilation lasts, and the process exits after a grace period whatever happens."""

    def force():
        sys.stderr.write("nemon: interrupted (Ctrl-C)\n")
        sys.stderr.flush()
        os._exit(130)

    timer = threading.Timer(INTERRUPT_GRACE_SECONDS, force)
    timer.daemon = True
    timer.start()
    if compilation.compiling():
        compilation.interrupt_compilation()
    raise KeyboardInterrupt


def entry() -> None:
    """The ``nemon`` command: :func:`main` with Ctrl-C handled as above."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
    sys.exit(main())


if __name__ == "__main__":
    entry()
