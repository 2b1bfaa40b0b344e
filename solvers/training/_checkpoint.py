"""Checkpoints: one ``.npz`` of arrays plus a JSON header, written atomically, read strictly."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from solvers import get_activation

from ._network import ImplicitNetwork, SolverConfig
from ._optim import OptimizerState
from ._trainer import History, TrainConfig, TrainerState

__all__ = ["save", "load", "load_training", "CheckpointError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "nemon-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a valid nemon checkpoint (corrupt, foreign, inconsistent)."""


def _package_version() -> str:
    try:
        return metadata.version("nemon")
    except metadata.PackageNotFoundError:
        return "unknown"


def save(net: ImplicitNetwork, path, *, history: History | None = None, metrics: dict | None = None) -> Path:
    """Write ``net`` (and, with ``history``, the trainer state for ``--resume``) to ``path``.

    The file is written to a temporary name in the same directory and renamed into place,
    so an interrupted save never leaves a half-written checkpoint.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    arrays = {f"net.{k}": v for k, v in net.parameters().items()}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "network": {
            "n_in": net.n_in, "n_hidden": net.n_hidden, "n_out": net.n_out,
            "activation": [net.activation.name, net.activation.slope],
            "dtype": net.dtype.name, "seed": net.seed,
            "solver": dataclasses.asdict(net.solver),
        },
        "metrics": metrics or {},
        "training": None,
    }
    if history is not None:
        st = history.state
        header["training"] = {
            "config": dataclasses.asdict(history.config),
            "epochs": history.epochs,
            "interrupted": history.interrupted,
            "epoch": st.epoch, "batch": st.batch, "partial": st.partial,
            "optimizer_t": st.optimizer.t,
            "raw": sorted(st.raw), "moments": sorted(st.optimizer.m),
        }
        arrays.update({f"raw.{k}": v for k, v in st.raw.items()})
        arrays.update({f"opt_m.{k}": v for k, v in st.optimizer.m.items()})
        arrays.update({f"opt_v.{k}": v for k, v in st.optimizer.v.items()})
    arrays["header"] = np.frombuffer(json.dumps(header, default=_json_default).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _read(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable .npz checkpoint: {exc}") from None
    if "header" not in arrays:
        raise CheckpointError(f"{path} has no nemon header: not a nemon checkpoint")
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt header: {exc}") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: foreign file (format {header.get('format')!r}, expected {FORMAT!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {header.get('format_version')} is not supported "
                              f"(this nemon reads version {FORMAT_VERSION})")
    return path, header, arrays


def _network_from(path, header, arrays) -> ImplicitNetwork:
    try:
        cfg = header["network"]
        n, m, q = int(cfg["n_hidden"]), int(cfg["n_in"]), int(cfg["n_out"])
        dtype = np.dtype(cfg["dtype"])
        act = get_activation(tuple(cfg["activation"]))
        solver = SolverConfig(**cfg["solver"])
        net = ImplicitNetwork(m, n, q, activation=act, seed=int(cfg.get("seed", 0)), dtype=dtype, solver=solver)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid network header: {exc}") from None
    expected = {"A": (n, n), "B": (n, m), "b": (n,), "C": (q, n), "c": (q,)}
    for k, shape in expected.items():
        a = arrays.get(f"net.{k}")
        if a is None:
            raise CheckpointError(f"{path}: missing array {k}")
        if a.shape != shape:
            raise CheckpointError(f"{path}: {k} has shape {a.shape}, expected {shape}")
        if a.dtype != dtype:
            raise CheckpointError(f"{path}: {k} has dtype {a.dtype}, expected {dtype}")
        if not np.all(np.isfinite(a)):
            raise CheckpointError(f"{path}: {k} has non-finite entries")
        setattr(net, k, a.copy())
    return net


def _check_training_arrays(path, net, con, raw, m, v):
    """Raw parameters match the constraint's layout; moments match the parameters; all finite."""
    template = con.init(np.zeros((net.n_hidden, net.n_hidden), net.dtype), np.random.default_rng(0))
    if sorted(raw) != sorted(template):
        raise CheckpointError(f"{path}: constraint {con.name} expects parameters {sorted(template)}, got {sorted(raw)}")
    shapes = {k: a.shape for k, a in template.items()}
    shapes.update({k: getattr(net, k).shape for k in ("B", "b", "C", "c")})
    if sorted(m) != sorted(shapes) or sorted(v) != sorted(shapes):
        raise CheckpointError(f"{path}: optimiser moments for {sorted(m)}, expected {sorted(shapes)}")
    for label, group in (("raw", raw), ("opt_m", m), ("opt_v", v)):
        for k, a in group.items():
            if a.shape != shapes[k]:
                raise CheckpointError(f"{path}: {label}.{k} has shape {a.shape}, expected {shapes[k]}")
            if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
                raise CheckpointError(f"{path}: {label}.{k} must be finite floats")


def load(path) -> ImplicitNetwork:
    """Read a network; checks shapes, dtypes, finiteness and the constraint it was trained under."""
    return load_training(path)[0]


def load_training(path):
    """``(net, history_or_None, metrics)``; ``history`` carries the state for ``--resume``."""
    path, header, arrays = _read(path)
    net = _network_from(path, header, arrays)
    tr = header.get("training")
    history = None
    if tr is not None:
        try:
            config = TrainConfig(**tr["config"])
            con = config.make_constraint()
            raw = {k: arrays[f"raw.{k}"].copy() for k in tr["raw"]}
            m = {k: arrays[f"opt_m.{k}"].copy() for k in tr["moments"]}
            v = {k: arrays[f"opt_v.{k}"].copy() for k in tr["moments"]}
            partial = tr["partial"]
            if not isinstance(partial, dict):
                raise TypeError(f"partial must be a mapping, got {type(partial).__name__}")
            counters = [tr["epoch"], tr["batch"], tr["optimizer_t"]]
            if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in counters):
                raise TypeError(f"epoch, batch and optimizer_t must be integers >= 0, got {counters}")
            state = TrainerState(tr["epoch"], tr["batch"], raw, OptimizerState(tr["optimizer_t"], m, v), dict(partial))
            history = History(config, list(tr["epochs"]), state, bool(tr.get("interrupted", False)),
                              solver=config.solver(net.solver))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: invalid training state: {exc}") from None
        _check_training_arrays(path, net, con, raw, m, v)
        problem = con.violation(net.A, raw)
        if problem:
            raise CheckpointError(f"{path}: {problem}")
        if not np.allclose(con.matrix(raw), net.A, rtol=1e-5, atol=1e-6):
            raise CheckpointError(f"{path}: A does not match the saved constraint parameters")
    return net, history, header.get("metrics", {})
