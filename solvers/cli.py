"""The ``nemon`` command line: the only place where arguments are parsed."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

import contraction

from .engine import compilation

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


#: What each reader expects, for the messages.
_FORMATS = {".npy": "a NumPy array saved with numpy.save", ".csv": "comma-separated numbers, one row per line"}
_TEXT = "whitespace-separated numbers, one row per line"


def load_matrix(path: str, name: str = "matrix", kernel: bool = False) -> np.ndarray:
    """Read a 2-D array of real numbers from ``.npy``, ``.csv`` or whitespace-separated text
    (with ``kernel``, a 4-D ``.npy`` array too: a convolution kernel ``(C_out, C_in, k, k)``);
    every way the file can be wrong is a :class:`CLIError` naming the file and what was
    expected."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{name} file not found: {path}" if not p.exists() else f"{name}: {path} is not a file")
    expected = _FORMATS.get(p.suffix, _TEXT)
    try:
        with warnings.catch_warnings():  # numpy warns about an empty file: the size check below says it
            warnings.simplefilter("ignore")
            if p.suffix == ".npy":
                arr = np.load(p, allow_pickle=False)
            elif p.suffix == ".csv":
                arr = np.loadtxt(p, delimiter=",", ndmin=2)
            else:
                arr = np.loadtxt(p, ndmin=2)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as exc:
        if p.suffix == ".npy" and not _starts_with(p, b"\x93NUMPY") and not _starts_with(p, b"PK"):
            detail = "it is not a .npy file"
        elif "allow_pickle" in str(exc):
            detail = "it holds Python objects (not read: loading them could run code)"
        else:
            detail = "it could not be read as such"
        raise CLIError(f"{name} file {path}: expected {expected}, but {detail}") from None
    if not isinstance(arr, np.ndarray):
        raise CLIError(f"{name} file {path}: expected {expected}, got an archive of several arrays")
    if arr.dtype.kind == "c":
        raise CLIError(f"{name} file {path} holds complex numbers; expected real numbers")
    if arr.dtype.kind not in "biuf":
        what = {"U": "text", "S": "bytes", "O": "Python objects"}.get(arr.dtype.kind, f"{arr.dtype} values")
        raise CLIError(f"{name} file {path} holds {what}; expected real numbers")
    arr = arr.astype(np.float64)
    if arr.size == 0:
        raise CLIError(f"{name} file {path} is empty; expected a 2-D array of numbers"
                       + (" or a 4-D convolution kernel" if kernel and p.suffix == ".npy" else ""))
    if arr.ndim != 2 and not (kernel and arr.ndim == 4):
        if kernel:
            raise CLIError(f"{name} in {path} must be 2-dimensional (a matrix) or 4-dimensional (a convolution "
                           f"kernel (C_out, C_in, k, k)), got shape {arr.shape}")
        hint = "; a 4-D array is a convolution kernel: nemon check explains one (--image HxW)" if arr.ndim == 4 else ""
        raise CLIError(f"{name} in {path} must be 2-dimensional, got shape {arr.shape}{hint}")
    if not np.all(np.isfinite(arr)):
        raise CLIError(f"{name} in {path} has non-finite entries")
    return arr


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(magic)) == magic
    except OSError:
        return False


def _unwritable(folder: Path, exc: OSError) -> str:
    """Why ``folder`` cannot be written: an ancestor that is a file, or the system's reason."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            return f"{parent} is a file, not a folder" if not parent.is_dir() else (exc.strerror or str(exc))
    return exc.strerror or str(exc)


def _output(path, what: str, *, suffix: str | None = None, force: bool = True, hint: str = "") -> Path:
    """The path ``path`` will be written to, checked before any work starts: ``suffix``
    appended the way the writer would (``np.save`` adds ``.npy``), its folder created, a file
    creatable there, not a folder, and, unless ``force``, not an existing file (finished work
    is never overwritten unasked)."""
    p = Path(path)
    if suffix and p.suffix != suffix:
        p = p.with_name(p.name + suffix) if suffix == ".npy" else p.with_suffix(suffix)
    if p.is_dir():
        raise CLIError(f"{what} {p} is a folder; expected a file path")
    if p.exists() and not force:
        raise CLIError(f"{what} {p} exists; pass --force to overwrite it{hint}, or --out for another path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p.parent):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write {what} {p}: {_unwritable(p.parent, exc)}") from None
    return p


def _figure_path(path, what: str = "figure") -> Path:
    """A figure path checked like :func:`_output` (figures are redrawn, so overwritten), with
    a format matplotlib can write (``.png`` added when there is no suffix)."""
    from matplotlib.figure import Figure

    p = Path(path)
    if not p.suffix:
        p = p.with_suffix(".png")
    formats = Figure().canvas.get_supported_filetypes()
    if p.suffix[1:].lower() not in formats:
        raise CLIError(f"{what} {p}: unknown image format {p.suffix!r}; use one of "
                       + ", ".join("." + f for f in sorted(formats)))
    return _output(p, what)


def _matrices(args, kernel: bool = False):
    """``(A, B, source)`` of the MATRIX / --example / --B options. With ``kernel``, a 4-D
    file (or any file when --image is given) comes back as it is, without B, for
    :func:`_check_convolution`."""
    if args.example is not None:
        if args.matrix is not None:
            raise CLIError("give either MATRIX or --example, not both")
        A, B = contraction.example(args.example, n=args.n, seed=args.seed)
        source = f"example {args.example!r} (n={A.shape[0]}): {contraction.EXAMPLES[args.example][0]}"
    elif args.matrix is not None:
        A = load_matrix(args.matrix, "A", kernel=kernel)
        B = None
        source = f"file {args.matrix}"
    else:
        raise CLIError("give a MATRIX file or --example NAME (one of: " + ", ".join(contraction.EXAMPLES) + ")")
    if kernel and (A.ndim == 4 or args.image is not None):
        return A, None, source
    if A.shape[0] != A.shape[1]:
        raise CLIError(f"A must be square, got shape {A.shape}")
    if getattr(args, "B", None):
        B = load_matrix(args.B, "B")
        if B.shape[0] != A.shape[0]:
            raise CLIError(f"B must have {A.shape[0]} rows to match A, got shape {B.shape}")
    return A, B, source


def cmd_check(args) -> int:
    A, B, source = _matrices(args, kernel=True)
    if A.ndim == 4 or args.image is not None:
        return _check_convolution(args, A, source)
    if "padding" in getattr(args, "given", ()):
        raise CLIError("--padding applies to a convolution kernel only (a 4-D .npy array, with --image HxW)")
    conditions = [c for c in contraction.CONDITIONS if not (args.no_lben and c == "lben")]
    report = contraction.wellposedness(A, conditions=conditions, lben_time_limit=args.lben_time_limit)
    print(f"Matrix: {source}")
    print()
    print("Well-posedness (each condition holds when value < 1):")
    print(report.table())
    eta, best = contraction.optimal_weights(A)
    print()
    print(f"Best diagonal weights: mu_inf,eta(A) = {best:.6g} (infimum alpha(ceil(A)) = "
          f"{report['nemon_weighted'].value:.6g}); eta ranges over [{eta.min():.3g}, {eta.max():.3g}]")
    print()
    _print_steps(A, B)
    return 0 if report["nemon"].holds or report["nemon_weighted"].holds else 1


def _print_steps(A, B) -> None:
    """The iteration table (step, factor, iterations per method) of a matrix or a convolution,
    and the Lipschitz bound when ``B`` is given; a factor ``contraction`` declines (the
    splittings of a large convolution) is shown as "-" with its reason."""
    print("Iterations (factor = worst-case l-inf Lipschitz constant of one step; < 1 contracts):")
    print(f"{'method':<18} {'alpha':>10} {'factor':>10} {'iters to 1e-8 from r=1':>24}")
    skipped = None
    for method in contraction.METHODS:
        if method == "anderson":
            continue
        alpha = contraction.optimal_alpha(A, method)
        try:
            factor = contraction.contraction_factor(A, alpha, method)
        except ValueError as exc:  # the splittings' factor needs the dense resolvent: small n only
            skipped = skipped or str(exc)
            print(f"{method:<18} {alpha:>10.4g} {'-':>10} {'-':>24}")
            continue
        bound = contraction.iteration_bound(factor, 1.0, 1e-8)
        print(f"{method:<18} {alpha:>10.4g} {factor:>10.4g} {bound!s:>24}")
        if method == "average":  # one step per unit (per channel): alpha_i = 1/(1 - min(0, a_ii))
            steps = contraction.optimal_alpha(A, per_unit=True)
            factor = contraction.contraction_factor(A, steps)
            bound = contraction.iteration_bound(factor, 1.0, 1e-8)
            span = f"{steps.min():.2g}-{steps.max():.2g}"
            print(f"{'average per unit':<18} {span:>10} {factor:>10.4g} {bound!s:>24}")
    if skipped:
        print(f"-: {skipped}")
    if B is not None:
        tight = contraction.lipschitz_bound(A, B, form="tight")
        paper = contraction.lipschitz_bound(A, B, form="paper")
        print()
        print(f"Input-to-state l-inf Lipschitz bound: {tight:.6g} (tight, 1/(1-mu)), "
              f"{paper:.6g} (paper, 1/(1-max(0,mu)))")


#: Largest n = C*H*W whose convolution ``nemon check`` also checks through its dense matrix.
CONV_DENSE_CHECK = 2000
#: Channels up to which ``nemon check`` lists every channel's row data (else the worst one only).
CONV_CHANNEL_TABLE = 16


def image_size(text: str) -> tuple:
    """argparse type for an image size ``HxW`` (two positive integers, e.g. ``28x28``)."""
    parts = text.lower().split("x")
    try:
        H, W = (int(v) for v in parts) if len(parts) == 2 else (0, 0)
    except ValueError:
        H, W = 0, 0
    if H < 1 or W < 1:
        raise argparse.ArgumentTypeError(f"expected HxW, two positive integers such as 28x28, got {text!r}")
    return H, W


def _convolution(args, K: np.ndarray, what: str) -> "contraction.Conv2d":
    """The square :class:`contraction.Conv2d` of kernel ``K`` on ``--image`` with ``--padding``;
    every way the kernel or the image can be wrong is a :class:`CLIError` naming them."""
    if K.ndim != 4:
        raise CLIError(f"--image is for a convolution kernel, a 4-D .npy array (C, C, k, k); {what} is a matrix of "
                       f"shape {K.shape} (drop --image to check it as a matrix)")
    if args.image is None:
        raise CLIError(f"{what} holds a 4-D convolution kernel of shape {K.shape}: give its image size with "
                       "--image HxW (e.g. --image 28x28)")
    C_out, C_in, k, k2 = K.shape
    if k != k2 or k % 2 == 0:
        raise CLIError(f"the kernel in {what} must have shape (C, C, k, k) with k odd (a centre tap), got {K.shape}")
    if C_out != C_in:
        raise CLIError(f"the kernel in {what} maps {C_in} input channels to {C_out} output channels (shape "
                       f"{K.shape}); check needs a square operator, C_out = C_in")
    H, W = args.image
    if H < k or W < k:
        raise CLIError(f"--image {H}x{W} is smaller than the {k}x{k} kernel in {what}; images must be at least "
                       f"{k}x{k} (a smaller one wraps several taps onto one pixel)")
    return contraction.Conv2d(K, (H, W), args.padding)


def _check_convolution(args, K: np.ndarray, source: str) -> int:
    """``nemon check`` of a convolution kernel: every quantity exact, from the kernel alone
    (DESIGN.md section 8b), and checked against the dense matrix on small images."""
    what = args.matrix if args.matrix is not None else f"--example {args.example}"
    op = _convolution(args, K, what)
    C, k, (H, W) = op.out_channels, op.kernel_size, op.image_shape
    B = None
    if args.B:  # read before anything is printed: a bad file is the only output
        B = load_matrix(args.B, "B", kernel=True)
        if B.ndim == 4:
            if B.shape[0] != C or B.shape[2] != B.shape[3] or B.shape[2] % 2 == 0 or B.shape[2] > min(H, W):
                raise CLIError(f"B in {args.B}: an input kernel must have shape ({C}, C_in, k, k) with k odd and at "
                               f"most {min(H, W)}, got {B.shape}")
            B = contraction.Conv2d(B, (H, W), op.padding)
        elif B.shape[0] != op.n:
            raise CLIError(f"B in {args.B} must have n = {op.n} rows to match the convolution, got shape {B.shape}")
    p = k // 2
    diag, off = op.row_data()
    rows = diag + off
    mu = contraction.mu_inf(op)
    worst = int(np.argmax(rows))
    print(f"Convolution: {source}: kernel {C}x{C}x{k}x{k} (C = {C} channels, k = {k}), {H}x{W} images, "
          f"{op.padding} padding; n = C*H*W = {op.n}")
    print()
    print(f"mu_inf(A) = {mu:.6g}: well-posed (< 1): {'yes' if mu < 1 else 'no'}")
    print(f"  exact, from the kernel: the diagonal entry is the centre tap K[c,c,{p},{p}]; mu_inf = max over "
          "channels c of K[c,c,p,p] + the sum of the other |taps| of K[c]")
    print(f"  worst channel c = {worst}: K[{worst},{worst},{p},{p}] = {diag[worst]:.6g}, other taps' mass "
          f"{off[worst]:.6g}, row value {rows[worst]:.6g}")
    print(f"||A||_inf = {op.norm_inf():.6g} (idl_norm, ||A||_inf < 1: {'yes' if op.norm_inf() < 1 else 'no'})")
    if op.n <= CONV_DENSE_CHECK:
        dense = contraction.mu_inf(op.to_dense())
        agree = "agrees" if abs(dense - mu) <= 1e-12 * max(1.0, abs(mu)) else "DISAGREES"
        print(f"dense cross-check: mu_inf of the {op.n}x{op.n} matrix = {dense:.6g}, {agree} with the kernel "
              f"formula (difference {abs(dense - mu):.1e})")
    else:
        print(f"dense cross-check: skipped (n = {op.n} > {CONV_DENSE_CHECK})")
    if C <= CONV_CHANNEL_TABLE:
        print()
        print("Per channel (every row of channel c; for zero padding, its interior rows):")
        print(f"{'channel':>7} {'K[c,c,p,p]':>12} {'other taps':>12} {'row value':>12}")
        for c in range(C):
            print(f"{c:>7} {diag[c]:>12.6g} {off[c]:>12.6g} {rows[c]:>12.6g}")
    print()
    _print_steps(op, B)
    return 0 if mu < 1 else 1


def cmd_solve(args) -> int:
    from . import solve
    from ._result import describe_alpha

    if args.atol == 0 and args.rtol == 0:
        raise CLIError("--atol and --rtol cannot both be 0: no sample would ever stop (give --atol > 0)")
    out = _output(args.out, "solution file", suffix=".npy", force=args.force) if args.out else None
    A, _, source = _matrices(args)
    if args.W is not None:
        W = load_matrix(args.W, "W")
        if W.shape[1] != A.shape[0]:
            raise CLIError(f"W in {args.W} must have {A.shape[0]} columns (one row per sample) to match A, "
                           f"got shape {W.shape}")
    else:
        W = np.random.default_rng(args.seed).standard_normal((args.batch, A.shape[0]))
    if args.per_unit_steps and args.method != "average":
        raise CLIError(f"--per-unit-steps is for --method average, got --method {args.method}")
    result = solve(A, W, method=args.method, alpha="per_unit" if args.per_unit_steps else None, atol=args.atol,
                   rtol=args.rtol, max_iter=args.max_iter, activation=args.activation, engine=args.engine)
    print(f"Matrix: {source}; inputs: {'file ' + args.W if args.W else f'{args.batch} Gaussian samples'}")
    print(f"method {result.method} ({describe_alpha(result.alpha)}), engine {result.engine}: {result.status.name}: "
          f"{result.status.message}")
    print(f"iterations: mean {result.iterations.mean():.1f}, max {result.iterations.max()}; "
          f"residual max {result.residual.max():.3e}; error bound max {result.error_bound.max():.3e}")
    if out is not None:
        np.save(out, result.x)
        print(f"wrote {out}")
    return 0 if result.success else 1


def cmd_compare(args) -> int:
    from .compare import compare_methods, format_table, instance, plot_comparison

    if args.atol == 0:
        raise CLIError("--atol must be > 0: no sample would ever stop")
    figure = _figure_path(args.out)
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
    path = plot_comparison(rows, figure, title=f"{source}, batch {W.shape[0]}")
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
                       interval_ramp=args.interval_ramp, interval_relax=args.interval_relax,
                       forward_method=args.forward_method or "",
                       diag_min=args.diag_min, shift=args.shift, flip=args.flip,
                       per_unit_steps=args.per_unit_steps, time_budget=args.time_budget or 0.0)


DEFAULT_CHECKPOINT = "out/model.npz"


def _config_field(name):
    return lambda net, config, saved: getattr(config, name)


#: ``nemon train`` options a resumed run takes from its checkpoint (option dest -> the
#: checkpoint's value): another value is an error. ``--epochs``, ``--engine``, ``--out``,
#: ``--figure``, ``--force``, ``--no-progress``, ``--data-dir`` and ``--download`` may change.
RESUME_FIXED = {
    "hidden": lambda net, config, saved: net.n_hidden,
    "model": lambda net, config, saved: net.architecture()["kind"],
    **{dest: (lambda net, config, saved, key=key: net.architecture().get(key))
       for dest, key in (("channels", "channels"), ("kernel", "kernel_size"), ("pool", "pool"), ("padding", "padding"),
                         ("stride", "stride"), ("input_kernel", "input_kernel"))},
    "readout_hidden": lambda net, config, saved: getattr(net, "readout_hidden", 0),
    "activation": lambda net, config, saved: net.activation.name,
    "dtype": lambda net, config, saved: net.dtype.name,
    "dataset": lambda net, config, saved: saved.get("dataset"),
    "data_seed": lambda net, config, saved: saved.get("data_seed"),
    "train_samples": lambda net, config, saved: saved.get("train_samples"),
    "val_fraction": lambda net, config, saved: saved.get("val_fraction"),
    **{name: _config_field(name) for name in (
        "batch_size", "lr", "optimizer", "schedule", "constraint", "gamma", "diag_min", "lipschitz_weight", "atol",
        "seed", "interval_eps", "interval_weight", "interval_ramp", "interval_relax", "forward_method", "shift", "flip",
        "per_unit_steps", "time_budget")},
}


def _resume_conflicts(args, net, config, saved) -> list[str]:
    """The options given on the command line that contradict the checkpoint being resumed."""
    conflicts = []
    for dest, read in RESUME_FIXED.items():
        if dest not in args.given:
            continue
        want, have = getattr(args, dest), read(net, config, saved)
        if have is None and dest in ("dataset", "data_seed", "val_fraction"):  # a checkpoint saved without them
            continue
        if want != have:
            conflicts.append(f"--{dest.replace('_', '-')} {want} (the checkpoint's: {have})")
    return conflicts


def cmd_train(args) -> int:
    from . import training as tr
    from .training import CERTIFIED_SAMPLES, LOCAL_RATE_SAMPLES, evaluate, format_epoch_table, format_report, plot_history

    # Every output is checked before any work: a run never fails after training.
    target = args.out or args.resume or DEFAULT_CHECKPOINT
    continuing = args.resume is not None and _same_file(target, args.resume)
    checkpoint = _output(target, "checkpoint", suffix=".npz", force=args.force or continuing,
                         hint=" or --resume it to train it further")
    figure = _figure_path(args.figure or checkpoint.with_suffix(".png"))
    if args.resume:
        try:
            net, history, saved = tr.load_training(args.resume)
        except FileNotFoundError as exc:
            raise CLIError(str(exc)) from None
        if history is None:
            raise CLIError(f"{args.resume} holds no training state to resume")
        conflicts = _resume_conflicts(args, net, history.config, saved)
        if conflicts:
            raise CLIError(f"--resume {args.resume}: " + ", ".join(conflicts) + ": a resumed run continues with "
                           "its checkpoint's settings (only --epochs, --engine, --out, --figure, --force, "
                           "--no-progress and --data-dir may change); start a new run with --out to change them")
        _default_dataset(args, saved)
        if "train_samples" not in args.given:
            args.train_samples = saved.get("train_samples")
        if "val_fraction" not in args.given and saved.get("val_fraction") is not None:
            args.val_fraction = saved["val_fraction"]
        done = history.state.epoch
        epochs = history.config.epochs if args.epochs is None else args.epochs
        if epochs < done or (epochs == done and not history.interrupted):
            more = f"give --epochs larger than {done} to train it further"
            if epochs < done:
                raise CLIError(f"--epochs {epochs} is fewer than the {done} epochs {args.resume} has trained; {more}")
            print(f"{args.resume} has trained all of its {done} epochs; {more}")
            return 0
        if not history.interrupted and history.epochs and history.epochs[-1].get("budget_spent", 0) >= 1:
            print(f"{args.resume} has spent its time budget of {history.config.time_budget:g} s (in epoch {done}); "
                  "a resumed run keeps its budget: start a new run with --out to train with another")
            return 0
        config = dataclasses.replace(history.config, epochs=epochs)
        print(f"Resuming {args.resume}: epoch {history.state.epoch + 1}, batch {history.state.batch}")
    Xtr, ytr, Xval, yval, Xte, yte = load_data(args, validation=True)
    if not args.resume:
        net = _new_network(args, Xtr.shape[1], int(ytr.max()) + 1)
        config, history = train_config(args), None
    elif Xtr.shape[1] != net.n_in:
        raise CLIError(f"{args.dataset} has {Xtr.shape[1]} features but the checkpoint's network expects {net.n_in}")
    net.solver = dataclasses.replace(net.solver, engine=args.engine)
    resolved = config.resolved()
    ramp = ""
    if resolved.interval_eps > 0:
        ramp = (f", eps ramped over {resolved.interval_ramp} epochs" if resolved.interval_ramp
                else ", eps at full radius from the first step")
        if resolved.interval_relax:
            ramp += f", the hidden layer relaxed for the {resolved.interval_relax} closest classes"
    held = f"{len(Xval)} validation" if Xval is not None else "no validation"
    print(f"Training {net} on {args.dataset} ({len(Xtr)} train / {held} / {len(Xte)} test), "
          f"constraint {config.constraint} (gamma {config.gamma}"
          f"{'' if config.diag_min is None else ', diag_min %g' % config.diag_min}), {config.optimizer} lr {config.lr}, "
          f"{config.epochs} epochs{'' if resolved.interval_eps == 0 else f', interval eps {resolved.interval_eps:g}'}"
          f"{ramp}{_augment_words(config)}{f', {config.forward_method} forward solves' if config.forward_method else ''}"
          f"{', per-unit steps' if config.per_unit_steps else ''}"
          f"{f', time budget {config.time_budget:g} s' if config.time_budget else ''}")
    certified = resolved.interval_eps > 0 and Xval is not None  # the epoch's certified validation accuracy
    if Xval is not None:
        print(f"local_rate: the averaged solve's local rate, median over the first {min(LOCAL_RATE_SAMPLES, len(Xval))} "
              "validation images (fwd_iters grows with it)")
    if certified:
        print(f"val_cert: certified accuracy at the epoch's eps on the first {min(CERTIFIED_SAMPLES, len(Xval))} "
              "validation images")
    print(format_epoch_table([], header=True, certified=certified))

    def show(record):
        print(format_epoch_table([record], header=False, certified=certified), flush=True)

    try:
        hist = tr.train(net, Xtr, ytr, config, X_val=Xval, y_val=yval, callback=show, resume=history,
                        progress=not args.no_progress and sys.stderr.isatty())
    except tr.TrainingCollapsed as exc:
        print(f"nemon train: error: {exc}; nothing was saved", file=sys.stderr)
        return 1
    net.solver = hist.solver  # evaluate and save with the solver it was trained with
    con = hist.config.make_constraint()
    metrics = {"dataset": args.dataset, "data_seed": args.data_seed, "train_samples": args.train_samples,
               "val_fraction": args.val_fraction}
    if hist.interrupted:  # saved at once (no evaluation: Ctrl-C means stop now)
        path = tr.save(net, checkpoint, history=hist, metrics=metrics)
        print(f"\nInterrupted: checkpoint saved to {path}; continue with: nemon train --resume {path}")
        return 130
    metrics = {**evaluate(net, Xte, yte, eta=con.weights(hist.state.raw)), **metrics}
    path = tr.save(net, checkpoint, history=hist, metrics=metrics)
    print()
    print(format_report(metrics, title=f"Final report ({args.dataset} test set)"))
    print(f"total training time         {sum(r['seconds'] for r in hist.epochs):.1f} s")
    if hist.config.time_budget and hist.epochs and hist.epochs[-1].get("budget_spent", 0) >= 1:
        last = hist.epochs[-1]
        print(f"time budget                 {hist.config.time_budget:g} s, spent in epoch {last['epoch']} of "
              f"{hist.config.epochs} (after {last['batches']} batches of it)")
    print(f"checkpoint: {path}")
    if hist.epochs:
        fig = plot_history(hist, figure, n_classes=net.n_out)
        print(f"figure: {fig}")
    return 0


def _augment_words(config) -> str:
    moves = [f"shifts up to {config.shift} px"] if config.shift else []
    moves += ["left-right flips"] if config.flip else []
    return f", augmented by {' and '.join(moves)}" if moves else ""


def _new_network(args, n_in: int, n_out: int):
    """The network ``nemon train`` starts from: dense (``--hidden``) or convolutional
    (``--channels``, ``--kernel``, ``--pool``, ``--padding``, on square one-channel images)."""
    from . import training as tr

    common = dict(activation=args.activation, seed=args.seed, dtype=np.dtype(args.dtype),
                  solver=tr.SolverConfig(engine=args.engine))
    if args.interval_relax and not args.readout_hidden:
        raise CLIError(f"--interval-relax {args.interval_relax} relaxes the hidden readout layer: it needs --model conv "
                       "--readout-hidden H (a linear readout's interval bound is exact)")
    if args.interval_relax and args.interval_eps == 0:
        raise CLIError(f"--interval-relax {args.interval_relax} tightens interval training: it needs --interval-eps > 0")
    if args.model == "dense":
        if args.readout_hidden:
            raise CLIError(f"--readout-hidden {args.readout_hidden} needs --model conv (a dense network reads out "
                           "linearly)")
        return tr.ImplicitNetwork(n_in, args.hidden, n_out, **common)
    if args.readout_hidden and args.lipschitz_weight > 0:
        raise CLIError("--lipschitz-weight penalises a linear readout's ||C||: use it without --readout-hidden")
    if args.constraint not in tr.CONV_CONSTRAINTS:
        raise CLIError(f"--constraint {args.constraint} is defined on matrices: --model conv trains with "
                       f"{', '.join(tr.CONV_CONSTRAINTS)}")
    side = math.isqrt(n_in)
    if args.input_kernel is not None and args.input_kernel % 2 == 0:
        raise CLIError(f"--input-kernel must be odd, got {args.input_kernel}")
    if side * side != n_in or side < args.kernel:
        raise CLIError(f"--model conv needs square one-channel images of at least {args.kernel}x{args.kernel} pixels; "
                       f"{args.dataset} has {n_in} features per sample")
    if side % args.stride:
        raise CLIError(f"--stride {args.stride} must divide the {side}x{side} images of {args.dataset}")
    if args.input_kernel is not None and args.input_kernel > side:
        raise CLIError(f"--input-kernel {args.input_kernel} is larger than the {side}x{side} images of {args.dataset}")
    state = side // args.stride
    if state % args.pool:
        raise CLIError(f"--pool {args.pool} must divide the {state}x{state} images of the state ({args.dataset}'s "
                       f"{side}x{side}" + (f" at stride {args.stride})" if args.stride > 1 else ")"))
    try:
        return tr.ConvImplicitNetwork((1, side, side), args.channels, args.kernel, n_out, args.pool,
                                      padding=args.padding, stride=args.stride, input_kernel=args.input_kernel,
                                      readout_hidden=args.readout_hidden, **common)
    except ValueError as exc:
        raise CLIError(f"--model conv: {exc}") from None


def _same_file(a, b) -> bool:
    """Whether two checkpoint paths name the same file (``.npz`` added as the writer does)."""
    def norm(p):
        p = Path(p)
        return (p if p.suffix == ".npz" else p.with_suffix(".npz")).resolve()

    return norm(a) == norm(b)


def cmd_evaluate(args) -> int:
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


def _eps_list(text: str, option: str = "--eps"):
    try:
        eps = [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise CLIError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not eps or any(not math.isfinite(e) or not 0 <= e <= 1 for e in eps):
        raise CLIError(f"{option} must hold radii in [0, 1] (pixel units of data in [0, 1]), got {text!r}")
    return eps


def _robustness(args, attacks: bool) -> int:
    from .training import format_robustness, plot_robustness, robustness_table

    eps = _eps_list(args.eps)
    figure = _figure_path(args.out)
    net, history, saved = _load_checkpoint(args)
    _, _, Xte, yte = load_data(args)
    if Xte.shape[1] != net.n_in:
        raise CLIError(f"{args.dataset} has {Xte.shape[1]} features but the network expects {net.n_in}")
    X, y = Xte[: args.samples], yte[: args.samples]
    eta = None
    if history is not None:
        eta = history.config.make_constraint().weights(history.state.raw)
    steps, restarts = (args.steps, args.restarts) if attacks else (1, 1)
    rows = robustness_table(net, X, y, eps, attacks=attacks, eta=eta, pgd_steps=steps, pgd_restarts=restarts,
                            seed=args.seed, progress=not args.no_progress and sys.stderr.isatty())
    kind = "certificates and attacks" if attacks else "certificates"
    print(f"{args.checkpoint} on {args.dataset} ({len(X)} test samples): {kind}; eps in pixel units of [0, 1] data")
    print(format_robustness(rows))
    path = plot_robustness({_model_name(args.checkpoint, history): rows}, figure,
                           title=f"{Path(args.checkpoint).name} on {args.dataset} ({len(X)} test images)")
    print(f"figure: {path}")
    return 0


def _model_name(checkpoint, history) -> str:
    """How a figure's legend names a checkpoint's model: its training run in words."""
    if history is None:
        return Path(checkpoint).stem
    c = history.config
    name = f"{c.constraint} (gamma {c.gamma:g})"
    if c.interval_eps > 0:
        name += f", interval-trained at eps {c.interval_eps:g}"
    if c.lipschitz_weight > 0:
        name += f", Lipschitz weight {c.lipschitz_weight:g}"
    return name


def cmd_certify(args) -> int:
    return _robustness(args, attacks=False)


def cmd_attack(args) -> int:
    return _robustness(args, attacks=True)


def cmd_reproduce(args) -> int:
    from .training import format_reproduce_table, reproduce

    eps = _eps_list(args.eps)
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    _check_cluster_options(args)
    out = _folder(args.out, "output folder")
    rows, figs = reproduce(quick=args.quick, dataset=args.dataset, data_dir=args.data_dir, out_dir=out, eps=eps,
                           seed=args.seed, seeds=args.seeds, epochs=args.epochs, eval_samples=args.samples,
                           progress=not args.no_progress and sys.stderr.isatty(), engine=args.engine,
                           log=lambda line: print(line, flush=True), models=models, scheduler=args.scheduler,
                           workers=args.workers)
    if not rows:
        raise CLIError(f"no model finished (see the lines above); {out / 'results.jsonl'} keeps what did")
    print()
    print("Summary (mean ± std over seeds; val = validation accuracy, on which the settings were chosen; "
          "cert = best of interval and Lipschitz certified accuracy; pgd = accuracy under PGD):")
    print(format_reproduce_table(rows))
    print(f"table: {out / 'results.csv'} and results.json; every run: {out / 'results.jsonl'}; "
          f"models: {out / 'models'}")
    for f in figs:
        print(f"figure: {f}")
    return 0


def _check_cluster_options(args) -> None:
    if args.scheduler and args.workers is not None:
        raise CLIError("--workers sizes the local cluster; with --scheduler the cluster's own workers do the runs")


def cmd_sweep(args) -> int:
    from . import sweep as sw

    _check_cluster_options(args)
    out = _folder(args.out, "--out")
    try:
        result = sw.sweep(args.spec, out, scheduler=args.scheduler, workers=args.workers,
                          progress=not args.no_progress and sys.stderr.isatty(), log=lambda line: print(line, flush=True))
    except sw.SweepError as exc:
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        done = len(sw.read_results(out / "results.jsonl"))
        raise KeyboardInterrupt(f"{out / 'results.jsonl'} holds {done} finished runs; run the same command again "
                                "to do the rest") from None
    print()
    print(sw.format_summary(result))
    for f in result.files:
        print(f"wrote {f}")
    if result.failed:
        n = len(result.failed)
        runs, them = ("runs", "them") if n != 1 else ("run", "it")
        print(f"{n} {runs} failed (not recorded; a rerun tries {them} again):", file=sys.stderr)
        for key, reason in result.failed.items():
            print(f"  {key}: {reason}", file=sys.stderr)
        return 1
    return 0


def _folder(path, what: str) -> Path:
    """An output folder checked before any work: created, and a file creatable in it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CLIError(f"{what} {p} is a file; expected a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write into {what} {p}: {_unwritable(p, exc)}") from None
    return p


def _number(text: str, kind, test, expected: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type for counts >= 1 (shared with the example and benchmark scripts)."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def nonnegative_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def finite_float(text: str) -> float:
    return _number(text, float, math.isfinite, "a finite number")


def unit_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


#: Seconds per unit of a duration (``--time-budget 90m``).
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """argparse type for a duration: seconds, or a number followed by ``s``, ``m`` or ``h``."""
    unit = _DURATION_UNITS.get(text[-1:].lower())
    try:
        value = _number(text[:-1] if unit else text, float, lambda v: math.isfinite(v) and v > 0, "")
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a duration > 0 such as 3600, 90m or 1.5h, got {text!r}") from None
    return value * (unit or 1.0)


def validation_fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a number in [0, 1)")


#: Default share of the training set ``nemon train`` holds out for validation.
VAL_FRACTION = 0.1


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


def load_data(args, validation: bool = False):
    """``(X_train, y_train, X_test, y_test)`` of ``args.dataset``; with ``validation``,
    ``(X_train, y_train, X_val, y_val, X_test, y_test)``: ``--val-fraction`` of the training set
    held out first (:func:`training.split_validation`, seeded by ``--data-seed``), then the
    training part cut to ``--train-samples``."""
    args.dataset = args.dataset or "mnist5k"
    args.data_seed = 0 if args.data_seed is None else args.data_seed
    from .training import load_dataset

    try:
        Xtr, ytr, Xte, yte = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download,
                                          seed=args.data_seed)
    except (FileNotFoundError, ImportError) as exc:
        raise CLIError(str(exc)) from None
    Xval = yval = None
    if validation:
        from .training import split_validation

        try:
            Xtr, ytr, Xval, yval = split_validation(Xtr, ytr, args.val_fraction, seed=args.data_seed)
        except ValueError as exc:
            raise CLIError(f"--val-fraction {args.val_fraction:g}: {exc}") from None
    limit = getattr(args, "train_samples", None)
    if limit is not None:
        Xtr, ytr = Xtr[:limit], ytr[:limit]
    return (Xtr, ytr, Xval, yval, Xte, yte) if validation else (Xtr, ytr, Xte, yte)


def _add_matrix_args(p):
    p.add_argument("matrix", nargs="?", help="A as .npy, .csv or whitespace-separated text")
    p.add_argument("--example", choices=list(contraction.EXAMPLES), help="a built-in example instead of a file")
    p.add_argument("--n", type=positive_int, default=8, help="size of a built-in example")
    p.add_argument("--seed", type=int, default=0, help="seed of a built-in example (and of solve's Gaussian inputs)")
    p.add_argument("--B", help="input matrix B (n x m) for the Lipschitz bound")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, a flag)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Option errors in one line that names the option, pointing to ``--help`` (argparse's
    own prints the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nemon", allow_abbrev=False, formatter_class=_Help,
        description="Implicit networks made well-posed by non-Euclidean contraction.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, helptext):
        return sub.add_parser(name, help=helptext, description=helptext, allow_abbrev=False, formatter_class=_Help)

    p = command("check", "well-posedness table, step sizes, contraction factors (of a matrix or a convolution)")
    _add_matrix_args(p)
    p.add_argument("--image", type=image_size, metavar="HxW",
                   help="image size: MATRIX is then a convolution kernel, a 4-D .npy array (C, C, k, k) (stride 1, "
                        "'same' output), checked exactly from its taps")
    p.add_argument("--padding", choices=contraction.PADDINGS, default="circular",
                   help="the convolution's padding (with --image)")
    p.add_argument("--no-lben", action="store_true", help="skip the LBEN semidefinite program (slow for large n)")
    p.add_argument("--lben-time-limit", type=positive_float, default=contraction.LBEN_TIME_LIMIT, metavar="SECONDS",
                   help="give up the LBEN semidefinite program after this long (its row then says so)")
    p.set_defaults(func=cmd_check)

    from . import ACTIVATIONS, ENGINES, METHODS

    p = command("solve", "solve x = sigma(Ax + w) for a batch and report the outcome")
    _add_matrix_args(p)
    p.add_argument("--W", help="inputs w, one row per sample (.npy/.csv/text); default Gaussian")
    p.add_argument("--batch", type=positive_int, default=10, help="Gaussian samples when --W is not given")
    p.add_argument("--method", choices=METHODS, default="average", help="iteration scheme")
    p.add_argument("--per-unit-steps", action="store_true",
                   help="average only: one step per unit, 1/(1 - min(0, a_ii)), instead of the single alpha*")
    _add_solver_args(p, ENGINES, ACTIVATIONS)
    p.add_argument("--rtol", type=nonnegative_float, default=0.0,
                   help="relative tolerance: a sample stops when its residual <= atol + rtol * ||x||")
    p.add_argument("--out", help="save the solution as .npy (the suffix is added when missing)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=cmd_solve)

    from .compare import FAMILIES

    p = command("compare", "every iteration scheme on one instance: table and figure")
    p.add_argument("matrix", nargs="?", help="A as .npy, .csv or text (default: a built-in family)")
    p.add_argument("--family", choices=FAMILIES, default="negative-diagonal", help="built-in instance family")
    p.add_argument("--n", type=positive_int, default=100, help="size of the built-in instance")
    p.add_argument("--batch", type=positive_int, default=100, help="inputs per solve")
    p.add_argument("--seed", type=int, default=0, help="seed of the instance and its inputs")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per method (median)")
    p.add_argument("--out", default="out/compare.png", help="figure path")
    _add_solver_args(p, ENGINES, ACTIVATIONS, max_iter=5000)
    p.set_defaults(func=cmd_compare)

    from .training import CONSTRAINTS, DATASETS

    p = command("train", "train an implicit network (default: mnist5k, n=100, gamma=0.9)")
    _add_data_args(p, DATASETS, train=True)
    p.add_argument("--model", choices=("dense", "conv"), default="dense",
                   help="dense: x = relu(Ax + Bu + b); conv: A and B convolutions over the image, then an average pool")
    p.add_argument("--hidden", type=positive_int, default=100, help="hidden units n (dense)")
    p.add_argument("--channels", type=positive_int, default=16, help="hidden channels (conv)")
    p.add_argument("--kernel", type=positive_int, default=3,
                   help="odd kernel size k of the implicit convolution A, and of B unless --input-kernel (conv)")
    p.add_argument("--pool", type=positive_int, default=4, help="average pool before the readout (conv)")
    p.add_argument("--padding", choices=("circular", "zeros"), default="circular", help="convolution padding (conv)")
    p.add_argument("--stride", type=positive_int, default=1,
                   help="stride of the input convolution (conv): 2 maps 28x28 images to a 14x14 state")
    p.add_argument("--input-kernel", type=positive_int, default=None,
                   help="odd kernel size of the input convolution (conv; default: --kernel)")
    p.add_argument("--readout-hidden", type=nonnegative_int, default=0, metavar="H",
                   help="a hidden ReLU layer of H units in the readout, C relu(D pool(x) + d) + c (conv; default 0: "
                        "linear)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help=f"epochs (default {DEFAULT_EPOCHS}; with --resume, the checkpoint's own; may change on resume)")
    p.add_argument("--time-budget", type=duration, default=None, metavar="T",
                   help="end the run after T of training steps (seconds, or e.g. 90m, 1.5h; evaluation not counted), "
                        "mid-epoch if need be; the learning-rate schedule and the eps ramp follow whichever of "
                        "--epochs and T runs out first (default: no budget)")
    p.add_argument("--batch-size", type=positive_int, default=100, help="samples per step")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="optimiser")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine", help="learning-rate schedule")
    p.add_argument("--constraint", choices=list(CONSTRAINTS), default="mu_inf", help="how A is kept well-posed")
    p.add_argument("--gamma", type=finite_float, default=0.9, help="bound of the constraint (mu_inf(A) <= gamma)")
    p.add_argument("--diag-min", type=finite_float, default=None,
                   help="mu_inf only: also keep a_ii >= DIAG_MIN, so alpha* >= 1/(1 - DIAG_MIN) and the solves stay "
                        "fast (interval training otherwise drives self-loops far negative)")
    p.add_argument("--lipschitz-weight", type=nonnegative_float, default=0.0, help="weight of the Lipschitz regulariser")
    p.add_argument("--atol", type=positive_float, default=1e-4, help="forward and adjoint solver tolerance")
    p.add_argument("--interval-eps", type=unit_float, default=0.0,
                   help="interval-bound (robust) training radius in pixel units; 0 = off")
    p.add_argument("--interval-weight", type=unit_float, default=0.5,
                   help="weight of the worst-case loss (1: the worst-case loss alone; the clean gradient is not "
                        "computed, but a clean forward solve still gives the training accuracy)")
    p.add_argument("--interval-ramp", type=nonnegative_int, default=None,
                   help="epochs over which eps grows from 0 (default: a third of the epochs, at least 1; 0 = full "
                        "radius from the first step, which can leave every hidden unit dead)")
    p.add_argument("--interval-relax", type=nonnegative_int, default=0, metavar="K",
                   help="with --readout-hidden: also bound the worst-case margins of each sample's K closest classes "
                        "by the hidden layer's linear relaxation, and train on the larger bound (0: off)")
    p.add_argument("--forward-method", default=None, choices=METHODS,
                   help="forward (and embedded-network) solver; default the constraint's own (average; "
                        "peaceman_rachford for mon); anderson needs fewer iterations")
    p.add_argument("--per-unit-steps", action="store_true",
                   help="averaged solves take one step per unit, 1/(1 - min(0, a_ii)), instead of the single alpha*: "
                        "the same guarantee, fewer iterations when the self-loops differ")
    p.add_argument("--shift", type=nonnegative_int, default=0, metavar="PIXELS",
                   help="augment: move each training image by a random offset of up to PIXELS each way, "
                        "anew every epoch (0: off)")
    p.add_argument("--flip", action="store_true", help="augment: mirror each training image left-right with "
                                                         "probability 1/2, anew every epoch")
    p.add_argument("--activation", choices=list(ACTIVATIONS), default="relu", help="activation sigma")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="parameter dtype")
    p.add_argument("--engine", choices=ENGINES, default="numba", help="solver engine (may change on resume)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    p.add_argument("--out", default=None,
                   help=f"checkpoint path (default {DEFAULT_CHECKPOINT}, or the --resume checkpoint)")
    p.add_argument("--figure", default=None, help="training-curve figure (default: the checkpoint's path, .png)")
    p.add_argument("--resume", help="continue from this checkpoint (same result as an uninterrupted run)")
    p.add_argument("--force", action="store_true", help="overwrite an existing checkpoint at --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (never shown unless on a terminal)")
    p.set_defaults(func=cmd_train)

    p = command("evaluate", "report accuracy, well-posedness and bounds of a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint written by nemon train")
    _add_data_args(p, DATASETS)
    p.add_argument("--engine", choices=ENGINES, default="numba", help="solver engine")
    p.set_defaults(func=cmd_evaluate)

    for name, func, helptext in (("certify", cmd_certify, "certified accuracy (interval and Lipschitz) per eps"),
                                 ("attack", cmd_attack, "certified and attacked (FGSM, PGD) accuracy per eps")):
        p = command(name, helptext)
        p.add_argument("checkpoint", help="a checkpoint written by nemon train")
        _add_data_args(p, DATASETS)
        p.add_argument("--eps", default="0.01,0.05,0.1", help="comma-separated l-inf radii in pixel units, in [0, 1]")
        p.add_argument("--samples", type=positive_int, default=1000, help="test samples to evaluate")
        if name == "attack":
            p.add_argument("--steps", type=positive_int, default=20, help="PGD steps")
            p.add_argument("--restarts", type=positive_int, default=1, help="PGD random restarts")
            p.add_argument("--seed", type=int, default=0, help="seed of PGD's random starts")
        p.add_argument("--engine", choices=ENGINES, default="numba", help="solver engine")
        p.add_argument("--out", default=f"out/{name}.png", help="robustness-curve figure path")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (never shown unless on a terminal)")
        p.set_defaults(func=func, seed=0)

    p = command("reproduce", "the seed paper's comparison end to end (train, certify, attack)")
    p.add_argument("--quick", action="store_true", help="mnist5k, few epochs, 500 test samples (minutes)")
    p.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="default: mnist5k with --quick, else fashion-mnist or mnist when installed")
    p.add_argument("--data-dir", help="folder with the data files (IDX for mnist / fashion-mnist)")
    p.add_argument("--eps", default="0.01,0.02,0.05,0.1", help="comma-separated l-inf radii in pixel units, in [0, 1]")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs per model (default 6 with --quick, else 30, 45 for the interval model)")
    p.add_argument("--samples", type=positive_int, default=None,
                   help="test samples evaluated (default 500 with --quick, else the whole test set)")
    p.add_argument("--seed", type=int, default=0, help="the split's seed, and the first run seed")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="runs per model and setting, seeds --seed, --seed + 1, ... (default 1 with --quick, else 3)")
    p.add_argument("--engine", choices=ENGINES, default="numba", help="solver engine")
    p.add_argument("--out", default="out/reproduce", help="folder for every run (results.jsonl), the models, the "
                   "table and the figures; rerunning with the same folder skips the finished runs")
    p.add_argument("--models", help="comma-separated model names to run (default: all; see the table)")
    _add_cluster_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (never shown unless on a terminal)")
    p.set_defaults(func=cmd_reproduce)

    p = command("sweep", "every combination of a grid of nemon train options, on Dask (a local cluster or yours)")
    p.add_argument("spec", help="TOML file: [base] options, [grid] lists (every combination is a run), optional eps")
    p.add_argument("--out", required=True, help="folder for results.jsonl, runs/, summary.csv and summary.png; "
                   "rerunning with the same folder skips the finished runs")
    _add_cluster_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (never shown unless on a terminal)")
    p.set_defaults(func=cmd_sweep)
    return parser


def _add_cluster_args(p):
    p.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://HOST:PORT); default: a local "
                   "cluster of one single-threaded process per core")
    p.add_argument("--workers", type=nonnegative_int, default=None,
                   help="processes of the local cluster (0: every run in this process, one after another)")


def _add_solver_args(p, engines, activations, max_iter=1000):
    p.add_argument("--activation", choices=list(activations), default="relu", help="activation sigma")
    p.add_argument("--atol", type=nonnegative_float, default=1e-8,
                   help="absolute tolerance on each sample's l-inf residual")
    p.add_argument("--max-iter", type=positive_int, default=max_iter, help="iterations before giving up")
    p.add_argument("--engine", choices=engines, default="numba", help="solver engine")


def _add_data_args(p, datasets, train: bool = False):
    p.add_argument("--dataset", choices=list(datasets), default=None,
                   help="default mnist5k, or the data set a given checkpoint was trained on")
    p.add_argument("--data-dir", help="folder with the data files (IDX for mnist / fashion-mnist)")
    p.add_argument("--download", action="store_true", help="download MNIST (checksum-verified) if missing")
    p.add_argument("--data-seed", type=int, default=None, help="seed of the train/test split (default 0)")
    if train:
        p.add_argument("--train-samples", type=positive_int, default=None,
                       help="train on the first TRAIN_SAMPLES training images only (default: all)")
        p.add_argument("--val-fraction", type=validation_fraction, default=VAL_FRACTION,
                       help="share of the training set held out (stratified, seeded by --data-seed) for the "
                            "per-epoch validation metrics; 0: none. The test set is scored once, at the end")


class _Stderr(logging.Handler):
    """Writes records to the ``sys.stderr`` of the moment (tests and redirections replace it),
    through ``tqdm.write`` so that a message never lands on a progress bar's line."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
            sys.stderr.flush()
        except Exception:  # a closed stream must not break the command
            self.handleError(record)


def _log_to_stderr(name: str | None, level: int, fmt: str) -> None:
    """Records of logger ``name`` (the root when ``None``) at ``level`` and above on stderr."""
    log = logging.getLogger(name)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(fmt))
        log.addHandler(handler)
    log.setLevel(level)
    if name is not None:
        log.propagate = False


def _given(parser: argparse.ArgumentParser, args, argv) -> set:
    """The dests of the options written on the command line (not left at their defaults)."""
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    tokens = {t.split("=", 1)[0] for t in argv if t.startswith("-")}
    return {a.dest for a in command._actions if any(o in tokens for o in a.option_strings)}


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parser.parse_args(argv)
    args.given = _given(parser, args, argv)
    _log_to_stderr(None, logging.INFO if args.verbose else logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    # First compilations say so (what compiles, that it happens once, how long).
    _log_to_stderr("nemon.compile", logging.INFO, "nemon: %(message)s")
    _log_to_stderr("nemon.lben", logging.INFO, "nemon: %(message)s")  # the slow semidefinite program's progress
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        print(f"nemon {args.command}: interrupted (Ctrl-C){': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    except (CLIError, ValueError, RuntimeError) as exc:  # RuntimeError: e.g. engine='cuda' without a GPU
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
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        code = main()
    except BrokenPipeError:  # the reader went away (``nemon ... | head``): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        code = 141  # 128 + SIGPIPE
    if main_thread:  # the work is done and reported: a Ctrl-C while Python shuts down changes nothing
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()
