"""The ``nemon`` command line: the only place where arguments are parsed."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

import contraction

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
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"nemon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"nemon {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
