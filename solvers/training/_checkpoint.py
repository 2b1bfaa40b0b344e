"""Checkpoints: one ``.npz`` of arrays plus a JSON header, written atomically, read strictly."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from ._files import atomic_write
from ._conv_network import ConvImplicitNetwork
from ._network import ImplicitNetwork, SolverConfig
from ._optim import OptimizerState
from ._trainer import History, TrainConfig, TrainerState

__all__ = ["save", "load", "load_training", "CheckpointError", "FORMAT", "FORMAT_VERSION"]

FORMAT = "nemon-checkpoint"
FORMAT_VERSION = 1

#: What every "not a checkpoint" message says was expected.
EXPECTED = "expected an .npz archive written by `nemon train` or solvers.training.save"


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
    so an interrupted save never leaves a half-written checkpoint; it gets the permissions
    of any new file (``0o666`` less the process umask).
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
            **net.architecture(),
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
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _not_a_checkpoint(path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a nemon checkpoint ({EXPECTED}): {reason}")


#: The .npy header versions :func:`numpy.savez` writes (3.0 is only for non-ASCII field names).
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_arrays(path: Path) -> dict:
    """Every array of the archive at ``path``, read without ever unpickling."""
    if path.is_dir():
        raise _not_a_checkpoint(path, "it is a directory")
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path} ({EXPECTED})") from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if not head:
        raise _not_a_checkpoint(path, "the file is empty")
    if head == b"\x93NUMPY":
        raise _not_a_checkpoint(path, "it holds a single numpy array (a .npy file), not an archive of arrays")
    if not head.startswith(b"PK"):
        raise _not_a_checkpoint(path, "the file is not a zip archive")
    arrays, member = {}, None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                member = info.filename
                if not member.endswith(".npy"):
                    raise _not_a_checkpoint(path, f"the archive holds {member!r}, which is not a numpy array")
                key = member[: -len(".npy")]
                with zf.open(info) as fh:  # the dtype first: an object array is never handed to numpy
                    version = np.lib.format.read_magic(fh)
                    if version not in _HEADER_READERS:
                        raise _not_a_checkpoint(path, f"array {key!r} is in .npy format {version}, which nemon "
                                                      "never writes")
                    _, _, dtype = _HEADER_READERS[version](fh)
                if dtype.hasobject:
                    raise CheckpointError(f"{path}: array {key!r} holds Python objects (dtype {dtype}); a nemon "
                                          "checkpoint holds numeric arrays only, and this one is not read")
                with zf.open(info) as fh:
                    arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
    except CheckpointError:
        raise
    except Exception:  # zipfile, zlib and numpy each have their own ways of saying "damaged"
        where = "" if member is None else f" (at {member!r})"
        raise _not_a_checkpoint(path, f"the archive is damaged or truncated{where}") from None
    return arrays


def _read(path):
    path = Path(path)
    arrays = _read_arrays(path)
    if "header" not in arrays:
        raise _not_a_checkpoint(path, f"it has no nemon header (it holds the arrays {sorted(arrays)})")
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise CheckpointError(f"{path}: corrupt header (not the JSON text a nemon checkpoint starts with)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt header (a JSON {type(header).__name__}, expected an object)")
    if header.get("format") != FORMAT:
        raise _not_a_checkpoint(path, f"foreign file (format {header.get('format')!r}, expected {FORMAT!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {header.get('format_version')} is not supported "
                              f"(this nemon reads version {FORMAT_VERSION})")
    return path, header, arrays


def _field_problem(exc: Exception) -> str:
    """A header error in words (a KeyError's text is just the key)."""
    if isinstance(exc, KeyError):
        return f"{exc.args[0]!r} is missing"
    return str(exc)


def _network_from(path, header, arrays) -> ImplicitNetwork:
    try:
        cfg = header["network"]
        if not isinstance(cfg, dict):
            raise TypeError(f"'network' must be an object, got {type(cfg).__name__}")
        solver = SolverConfig(**cfg["solver"])
        common = dict(activation=tuple(cfg["activation"]), seed=cfg.get("seed", 0), dtype=cfg["dtype"], solver=solver)
        kind = cfg.get("kind", "dense")
        if kind == "conv":
            net = ConvImplicitNetwork(tuple(cfg["in_shape"]), cfg["channels"], cfg["kernel_size"], cfg["n_out"],
                                      cfg["pool"], padding=cfg["padding"], stride=cfg.get("stride", 1),
                                      input_kernel=cfg.get("input_kernel"),
                                      readout_hidden=cfg.get("readout_hidden", 0), **common)
        elif kind == "dense":
            net = ImplicitNetwork(cfg["n_in"], cfg["n_hidden"], cfg["n_out"], **common)
        else:
            raise ValueError(f"unknown network kind {kind!r} (written by a newer nemon?)")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid network header: {_field_problem(exc)}") from None
    dtype = net.dtype
    expected = {k: getattr(net, k).shape for k in net.PARAMS}  # the shapes the header's architecture gives
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
    template = con.init(np.zeros_like(net.A), np.random.default_rng(0))
    if sorted(raw) != sorted(template):
        raise CheckpointError(f"{path}: constraint {con.name} expects parameters {sorted(template)}, got {sorted(raw)}")
    shapes = {k: a.shape for k, a in template.items()}
    shapes.update({k: getattr(net, k).shape for k in net.PARAMS if k != "A"})
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
            unknown = set(tr["config"]) - {f.name for f in dataclasses.fields(TrainConfig)}
            if unknown:
                raise ValueError(f"unknown TrainConfig fields {sorted(unknown)} (written by a newer nemon?)")
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
            raise CheckpointError(f"{path}: invalid training state: {_field_problem(exc)}") from None
        _check_training_arrays(path, net, con, raw, m, v)
        problem = con.violation(net.state_operator(), raw)
        if problem:
            raise CheckpointError(f"{path}: {problem}")
        if not np.allclose(con.matrix(raw), net.A, rtol=1e-5, atol=1e-6):
            raise CheckpointError(f"{path}: A does not match the saved constraint parameters")
    metrics = header.get("metrics", {})
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path}: corrupt header ('metrics' is a JSON {type(metrics).__name__}, "
                              "expected an object)")
    return net, history, metrics
