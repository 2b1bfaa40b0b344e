"""Checkpoints: exact round trip, atomic writes, and strict reading (every kind of bad file
is a :class:`CheckpointError`, never a pickle load)."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from solvers._activations import Activation
from solvers.training import (
    CheckpointError,
    ImplicitNetwork,
    SolverConfig,
    load,
    load_training,
    save,
    train,
)


# -- helpers ----------------------------------------------------------------------------------
def read_npz(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop("header").tobytes().decode())
    return header, arrays


def encode(header) -> np.ndarray:
    return np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)


def rewrite(path, edit_header=None, edit_arrays=None):
    """Rewrite the checkpoint at ``path`` after editing its header dict and/or its arrays."""
    header, arrays = read_npz(path)
    if edit_header is not None:
        edit_header(header)
    arrays["header"] = encode(header)
    if edit_arrays is not None:
        edit_arrays(arrays)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def assert_same_network(a: ImplicitNetwork, b: ImplicitNetwork):
    for name in ImplicitNetwork.PARAMS:
        pa, pb = getattr(a, name), getattr(b, name)
        assert pa.dtype == pb.dtype, name
        np.testing.assert_array_equal(pa, pb, err_msg=name)
    assert a.dtype == b.dtype
    assert a.activation == b.activation
    assert a.solver == b.solver
    assert a.seed == b.seed


def same_value(x, y):
    return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))


@pytest.fixture(scope="module")
def trained(digits):
    """A tiny network after 1 epoch (and an interrupted-looking mid-epoch state)."""
    X, y, _, _ = digits
    net = ImplicitNetwork(64, 6, 10, activation="tanh", seed=3)
    history = train(net, X[:120], y[:120], epochs=1, batch_size=40, lr=1e-2, gamma=0.7, progress=False)
    return net, history


@pytest.fixture
def checkpoint(trained, tmp_path) -> Path:
    net, history = trained
    return save(net, tmp_path / "model.npz", history=history, metrics={"accuracy": 0.5})


# -- round trip -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("activation", ["relu", ("leaky_relu", 0.25), "softplus"])
def test_round_trip_is_exact(dtype, activation, tmp_path, rng):
    solver = SolverConfig(method="anderson", adjoint_method="picard", atol=1e-7, adjoint_atol=3e-6, max_iter=77,
                          engine="numpy")
    net = ImplicitNetwork(5, 4, 3, activation=activation, seed=11, dtype=dtype, solver=solver)
    for name, p in net.parameters().items():  # generic values in every parameter, biases included
        p[...] = rng.standard_normal(p.shape).astype(dtype) * 0.1
    path = save(net, tmp_path / "net.npz")
    assert path == tmp_path / "net.npz" and path.is_file()
    loaded = load(path)
    assert_same_network(loaded, net)
    assert isinstance(loaded.activation, Activation)
    net2, history, metrics = load_training(path)
    assert history is None and metrics == {}
    assert_same_network(net2, net)
    U = rng.random((3, 5))
    np.testing.assert_array_equal(loaded.forward(U), net.forward(U))


def test_round_trip_with_history_and_metrics(trained, checkpoint):
    net, history = trained
    loaded, h, metrics = load_training(checkpoint)
    assert_same_network(loaded, net)
    assert metrics == {"accuracy": 0.5}
    assert h.config == history.config
    assert h.interrupted == history.interrupted
    assert len(h.epochs) == len(history.epochs)
    for ra, rb in zip(h.epochs, history.epochs):
        assert ra.keys() == rb.keys()
        assert all(same_value(ra[k], rb[k]) for k in ra), (ra, rb)
    st, ref = h.state, history.state
    assert (st.epoch, st.batch, st.partial) == (ref.epoch, ref.batch, ref.partial)
    assert st.raw.keys() == ref.raw.keys()
    for k in ref.raw:
        np.testing.assert_array_equal(st.raw[k], ref.raw[k])
        assert st.raw[k].dtype == ref.raw[k].dtype
    assert st.optimizer.t == ref.optimizer.t
    for k in ref.optimizer.m:
        np.testing.assert_array_equal(st.optimizer.m[k], ref.optimizer.m[k])
        np.testing.assert_array_equal(st.optimizer.v[k], ref.optimizer.v[k])


def test_loaded_arrays_are_independent_copies(checkpoint):
    net, h, _ = load_training(checkpoint)
    assert net.A.flags.writeable and not np.shares_memory(net.A, h.state.raw["A"])


@pytest.mark.parametrize("name, expected", [("model", "model.npz"), ("model.ckpt", "model.npz"),
                                            ("sub/dir/model.npz", "sub/dir/model.npz")])
def test_save_path_gets_npz_suffix_and_parent_folders(name, expected, tmp_path):
    path = save(ImplicitNetwork(3, 2, 2), tmp_path / name)
    assert path == tmp_path / expected and path.is_file()
    assert load(path).n_hidden == 2


def test_header_is_self_describing(checkpoint):
    header, arrays = read_npz(checkpoint)
    assert header["format"] == "nemon-checkpoint" and header["format_version"] == 1
    assert header["network"]["n_hidden"] == 6 and header["network"]["activation"][0] == "tanh"
    assert header["training"]["config"]["constraint"] == "mu_inf"
    assert {"net.A", "net.B", "net.b", "net.C", "net.c", "raw.A"} <= set(arrays)
    assert all(a.dtype != object for a in arrays.values())


# -- atomic write -----------------------------------------------------------------------------
def test_save_leaves_no_temporary_files(trained, tmp_path):
    net, history = trained
    save(net, tmp_path / "m.npz", history=history)
    save(ImplicitNetwork(3, 2, 2), tmp_path / "m.npz")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    assert load(tmp_path / "m.npz").n_hidden == 2


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["OSError", "KeyboardInterrupt"])
def test_failed_save_keeps_the_previous_checkpoint(error, checkpoint, trained, monkeypatch):
    before = checkpoint.read_bytes()

    def broken_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip archive")  # a partial write, then the failure
        raise error

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(type(error)):
        save(ImplicitNetwork(64, 3, 10), checkpoint)
    monkeypatch.undo()
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in checkpoint.parent.iterdir()) == [checkpoint.name]
    assert_same_network(load(checkpoint), trained[0])


# -- file modes -------------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_saved_checkpoint_honours_the_umask(umask, trained, tmp_path):
    net, history = trained
    previous = os.umask(umask)
    try:
        first = save(net, tmp_path / "m.npz", history=history)
        again = save(net, tmp_path / "m.npz")  # an overwrite gets a new file's mode too
    finally:
        os.umask(previous)
    assert first == again
    assert (first.stat().st_mode & 0o777) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


# -- strict reading -----------------------------------------------------------------------------
#: What numpy says about bad files; a nemon message never repeats it (nor advises unpickling).
NUMPY_WORDS = ("allow_pickle", "pickle.load", "pickled", "numpy.ndarray", "context manager", "No data left")


def assert_not_a_checkpoint(path, reason, call=load):
    """``call(path)`` raises a CheckpointError that names the file, says what was expected and
    why this file is not it (``reason``, a regex), in nemon's words."""
    with pytest.raises(CheckpointError) as info:
        call(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a nemon checkpoint (expected an .npz archive written by `nemon train`")
    assert re.search(reason, message), message
    assert not any(w in message for w in NUMPY_WORDS), message
    return message


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found") as info:
        load(tmp_path / "nothing.npz")
    assert str(tmp_path / "nothing.npz") in str(info.value) and "expected an .npz archive" in str(info.value)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_a_directory_is_rejected(tmp_path):
    (tmp_path / "model.npz").mkdir()
    assert_not_a_checkpoint(tmp_path / "model.npz", "it is a directory")
    assert_not_a_checkpoint(tmp_path / "model.npz", "it is a directory", call=load_training)


def test_random_bytes_are_rejected(tmp_path, rng):
    path = tmp_path / "random.npz"
    data = rng.bytes(2000)
    assert not data.startswith(b"PK")
    path.write_bytes(data)
    assert_not_a_checkpoint(path, "not a zip archive")


def test_random_bytes_after_a_zip_signature_are_rejected(tmp_path, rng):
    path = tmp_path / "random.npz"
    path.write_bytes(b"PK\x03\x04" + rng.bytes(2000))
    assert_not_a_checkpoint(path, "damaged or truncated")


def test_a_pickle_is_rejected_without_unpickling(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps(Tripwire()))
    TRIPPED.clear()
    assert_not_a_checkpoint(path, "not a zip archive")
    assert TRIPPED == []


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    assert_not_a_checkpoint(path, "the file is empty")


def load_collecting_resource_warnings(path):
    """``load(path)`` expecting a CheckpointError; returns the ResourceWarnings it caused
    (collected here, so a leaked file handle cannot fail some later test at gc time)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(CheckpointError):
            load(path)
        gc.collect()
    return [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_a_truncated_checkpoint_is_rejected(keep, checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: int(len(data) * keep)])
    assert_not_a_checkpoint(checkpoint, "damaged or truncated")
    load_collecting_resource_warnings(checkpoint)


def test_a_corrupted_array_is_rejected(checkpoint):
    data = bytearray(checkpoint.read_bytes())
    start = data.index(b"\x93NUMPY")  # the first array inside the archive: flip bytes of its header
    data[start + 10 : start + 30] = b"\xff" * 20
    checkpoint.write_bytes(bytes(data))
    assert_not_a_checkpoint(checkpoint, "damaged or truncated", call=load_training)


def test_rejecting_a_truncated_checkpoint_closes_the_file(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    assert load_collecting_resource_warnings(checkpoint) == []


def test_plain_npy_file_is_rejected(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.eye(3))
    assert_not_a_checkpoint(path, r"a single numpy array \(a \.npy file\)")


def test_npz_without_header_is_rejected(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, A=np.eye(3))
    assert_not_a_checkpoint(path, r"no nemon header \(it holds the arrays \['A'\]\)")


def test_zip_of_other_files_is_rejected(tmp_path):
    path = tmp_path / "notes.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert_not_a_checkpoint(path, "'readme.txt', which is not a numpy array")


def test_other_format_name_is_rejected(checkpoint):
    rewrite(checkpoint, edit_header=lambda h: h.update(format="other-tool-checkpoint"))
    assert_not_a_checkpoint(checkpoint, "foreign file .format 'other-tool-checkpoint', expected 'nemon-checkpoint'")


def test_other_format_version_is_rejected(checkpoint):
    rewrite(checkpoint, edit_header=lambda h: h.update(format_version=2))
    with pytest.raises(CheckpointError, match="version"):
        load(checkpoint)


@pytest.mark.parametrize("text", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"nemon-checkpoint"'])
def test_corrupt_header_json_is_rejected(text, checkpoint):
    rewrite(checkpoint, edit_arrays=lambda a: a.update(header=np.frombuffer(text, dtype=np.uint8)))
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(checkpoint))}: corrupt header"):
        load(checkpoint)


def test_metrics_that_are_not_a_mapping_are_rejected(checkpoint):
    rewrite(checkpoint, edit_header=lambda h: h.update(metrics=[0.5]))
    with pytest.raises(CheckpointError, match="'metrics' is a JSON list"):
        load_training(checkpoint)


@pytest.mark.parametrize("key, shape", [("net.A", (5, 5)), ("net.B", (6, 63)), ("net.b", (6, 1)), ("net.C", (6, 10)),
                                        ("net.c", (9,))])
def test_wrong_shapes_are_rejected(key, shape, checkpoint):
    rewrite(checkpoint, edit_arrays=lambda a: a.update({key: np.zeros(shape)}))
    expected = f"{checkpoint}: {key.split('.')[1]} has shape {shape}, expected"
    with pytest.raises(CheckpointError, match="^" + re.escape(expected)):
        load(checkpoint)


def test_header_sizes_inconsistent_with_arrays_are_rejected(checkpoint):
    rewrite(checkpoint, edit_header=lambda h: h["network"].update(n_hidden=7))
    with pytest.raises(CheckpointError, match="shape"):
        load(checkpoint)


def test_missing_array_is_rejected(checkpoint):
    rewrite(checkpoint, edit_arrays=lambda a: a.pop("net.c"))
    with pytest.raises(CheckpointError, match="missing"):
        load(checkpoint)


@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.complex128])
def test_wrong_dtype_is_rejected(dtype, checkpoint):
    rewrite(checkpoint, edit_arrays=lambda a: a.update({"net.B": a["net.B"].astype(dtype)}))
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(checkpoint))}: B has dtype {np.dtype(dtype)}, "
                                              "expected float64"):
        load(checkpoint)


@pytest.mark.parametrize("key", ["net.A", "net.B", "net.b", "net.C", "net.c"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_parameters_are_rejected(key, bad, checkpoint):
    def poison(a):
        v = a[key].copy()
        v.flat[0] = bad
        a[key] = v

    rewrite(checkpoint, edit_arrays=poison)
    with pytest.raises(CheckpointError, match="non-finite"):
        load(checkpoint)


def test_A_violating_its_constraint_is_rejected(checkpoint):
    def ill_posed(a):
        a["net.A"] = 2.0 * np.eye(6)
        a["raw.A"] = 2.0 * np.eye(6)  # consistent raw parameters: only the constraint is wrong

    rewrite(checkpoint, edit_arrays=ill_posed)
    header, _ = read_npz(checkpoint)
    assert header["training"]["config"]["constraint"] == "mu_inf"
    with pytest.raises(CheckpointError, match="mu_inf"):
        load(checkpoint)


def test_A_not_matching_its_raw_parameters_is_rejected(checkpoint):
    rewrite(checkpoint, edit_arrays=lambda a: a.update({"net.A": 0.5 * a["net.A"]}))  # still feasible
    with pytest.raises(CheckpointError, match="does not match"):
        load(checkpoint)


def test_incomplete_training_state_is_rejected(checkpoint):
    rewrite(checkpoint, edit_arrays=lambda a: a.pop("opt_v.B"))
    with pytest.raises(CheckpointError, match="training state"):
        load_training(checkpoint)


def test_unknown_training_config_field_is_rejected(checkpoint):
    rewrite(checkpoint, edit_header=lambda h: h["training"]["config"].update(momentum_schedule="warp"))
    with pytest.raises(CheckpointError):
        load_training(checkpoint)


def test_missing_network_header_is_rejected(checkpoint):
    rewrite(checkpoint, edit_header=lambda h: h.pop("network"))
    with pytest.raises(CheckpointError, match="invalid network header: 'network' is missing"):
        load(checkpoint)


def test_unknown_training_config_field_is_named(checkpoint):
    rewrite(checkpoint, edit_header=lambda h: h["training"]["config"].update(momentum_schedule="warp"))
    with pytest.raises(CheckpointError, match=r"unknown TrainConfig fields \['momentum_schedule'\]"):
        load_training(checkpoint)


@pytest.mark.parametrize("field, value", [("n_hidden", 6.0), ("n_hidden", "6"), ("n_hidden", True), ("seed", 3.5)])
def test_non_integer_sizes_in_the_header_are_rejected(field, value, checkpoint):
    rewrite(checkpoint, edit_header=lambda h: h["network"].update({field: value}))
    with pytest.raises(CheckpointError, match=f"invalid network header: {field} must be an integer"):
        load(checkpoint)


def _bad_activation(h):
    h["network"]["activation"] = ["swish", 0.01]


def _bad_slope(h):
    h["network"]["activation"] = ["leaky_relu", 2.0]


def _bad_dtype(h):
    h["network"]["dtype"] = "int32"


def _bad_size(h):
    h["network"]["n_hidden"] = 0


def _bad_constraint(h):
    h["training"]["config"]["constraint"] = "bogus"


def _bad_gamma(h):
    h["training"]["config"]["gamma"] = 1.5


def _bad_partial(h):
    h["training"]["partial"] = 5


def _bad_epoch(h):
    h["training"]["epoch"] = "x"


HEADER_CORRUPTIONS = [
    pytest.param(_bad_activation, id="unknown-activation"),
    pytest.param(_bad_slope, id="bad-slope"),
    pytest.param(_bad_dtype, id="int-dtype"),
    pytest.param(_bad_size, id="zero-hidden"),
    pytest.param(_bad_constraint, id="unknown-constraint"),
    pytest.param(_bad_gamma, id="gamma-above-one"),
    pytest.param(_bad_partial, id="partial-not-a-dict"),
    pytest.param(_bad_epoch, id="epoch-not-an-int"),
]


@pytest.mark.parametrize("corrupt", HEADER_CORRUPTIONS)
def test_corrupt_header_fields_raise_checkpoint_error(corrupt, checkpoint):
    rewrite(checkpoint, edit_header=corrupt)
    with pytest.raises(CheckpointError):
        load_training(checkpoint)


def test_raw_parameters_of_the_wrong_shape_are_rejected(checkpoint):
    rewrite(checkpoint, edit_arrays=lambda a: a.update({"raw.A": np.zeros((2, 2))}))
    with pytest.raises(CheckpointError):
        load_training(checkpoint)


def test_optimizer_moments_of_the_wrong_shape_are_rejected(checkpoint):
    rewrite(checkpoint, edit_arrays=lambda a: a.update({"opt_m.B": np.zeros(3)}))
    with pytest.raises(CheckpointError):
        load_training(checkpoint)


# -- no pickle, ever ------------------------------------------------------------------------------
TRIPPED = []


def _trip():
    TRIPPED.append(True)
    return "unpickled"


class Tripwire:
    """Unpickling this object records that a pickle was executed."""

    def __reduce__(self):
        return (_trip, ())


@pytest.mark.parametrize("key", ["net.A", "header", "raw.A"])
def test_object_arrays_are_rejected_without_unpickling(key, checkpoint):
    def plant(a):
        a[key] = np.array([Tripwire(), 1], dtype=object)

    rewrite(checkpoint, edit_arrays=plant)
    TRIPPED.clear()
    with pytest.raises(CheckpointError, match=f"array '{key}' holds Python objects") as info:
        load_training(checkpoint)
    assert TRIPPED == []
    assert str(checkpoint) in str(info.value)
    assert not any(w in str(info.value) for w in NUMPY_WORDS)


def test_saved_checkpoint_loads_with_allow_pickle_false(checkpoint):
    with np.load(checkpoint, allow_pickle=False) as z:
        for k in z.files:
            assert z[k].dtype != object


def test_resaving_a_loaded_checkpoint_is_identical(checkpoint, tmp_path):
    net, h, metrics = load_training(checkpoint)
    again = save(net, tmp_path / "again.npz", history=h, metrics=metrics)
    header_a, arrays_a = read_npz(checkpoint)
    header_b, arrays_b = read_npz(again)
    assert json.dumps(header_a, sort_keys=True) == json.dumps(header_b, sort_keys=True)
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k])
    assert dataclasses.asdict(h.config) == header_b["training"]["config"]
