"""Datasets (scikit-learn digits, binarized MNIST, TFDS MNIST / Fashion-MNIST) and input validation.

Everything here is plain numpy. Images are flattened to float32 rows [N, D]. Arrays of a loaded
`Dataset` are read-only: binarized MNIST is cached per process and shared between loads.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path

import numpy as np

from vi_jax import io

DATASETS = ("digits", "digits_continuous", "binarized_mnist", "mnist", "fashion_mnist")
LIKELIHOODS = ("bernoulli", "gaussian")
VALUE_RANGES = ("binary", "unit")

DATA_DIR_ENV = "VI_JAX_DATA_DIR"

DIGITS_NUM_TEST = 300  # 1797 images -> 1497 train / 300 test

# sha256 of the uncompressed Larochelle .amat files (the values tensorflow-datasets records).
BINARIZED_MNIST_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
_MNIST_PIXELS = 28 * 28
_TFDS_READ_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset of flattened images: float32 rows [N, D], values per `value_range`.

    value_range: "binary" (values exactly 0/1) or "unit" (continuous in [0, 1]).
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    valid: np.ndarray | None
    image_shape: tuple[int, int]
    value_range: str
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None

    def __post_init__(self):
        if self.value_range not in VALUE_RANGES:
            raise ValueError(f"{self.name}: value_range must be one of {VALUE_RANGES}, got {self.value_range!r}")
        dims = {split: x.shape[1:] for split, x in
                (("train", self.train), ("test", self.test), ("valid", self.valid)) if x is not None}
        if len(set(dims.values())) != 1 or dims["train"] != (int(np.prod(self.image_shape)),):
            raise ValueError(f"{self.name}: splits must be [N, D] with D = prod(image_shape {self.image_shape}), "
                             f"got trailing shapes {dims}")

    @property
    def dim(self) -> int:
        """Number of features D per row."""
        return self.train.shape[1]


def load_dataset(name: str, *, data_dir: str | None = None, seed: int = 0) -> Dataset:
    """Load one of `DATASETS`.

    digits / digits_continuous: scikit-learn's 1797 8x8 digits, thresholded at 8/16 to {0, 1}
      or scaled to x / 16. The 1497/300 train/test split is the permutation
      `np.random.default_rng(seed).permutation(1797)`: deterministic given `seed` (used only here).
    binarized_mnist: Larochelle's binarized_mnist_{train,valid,test}.amat[.gz] from `data_dir`,
      else $VI_JAX_DATA_DIR (each searched directly and in its binarized_mnist/ subfolder).
      Content is sha256-verified; parsed arrays are cached per process.
    mnist / fashion_mnist: a prepared TFDS copy read with `tfds.data_source` (no download);
      `data_dir` None means TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    """
    if name == "digits":
        return _load_digits(name, binary=True, seed=seed)
    if name == "digits_continuous":
        return _load_digits(name, binary=False, seed=seed)
    if name == "binarized_mnist":
        return _load_binarized_mnist(data_dir)
    if name in ("mnist", "fashion_mnist"):
        return _load_tfds(name, data_dir)
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def validate_data(x: np.ndarray, *, likelihood: str, name: str = "data") -> np.ndarray:
    """Check that `x` is finite 2-D [N, D] data valid for `likelihood`; return it as float32.

    "bernoulli" needs values in [0, 1]; "gaussian" only needs finite values.
    Raises ValueError with a message that starts with `name`.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"{name}: unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name}: expected a 2-D array [N, D] with N >= 1 and D >= 1, got shape {x.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        num_nan = int(np.isnan(x).sum())
        num_inf = int(np.isinf(x).sum())
        first_row = int(np.argmin(finite.all(axis=1)))
        raise ValueError(f"{name}: non-finite values as float32: {num_nan} NaN and {num_inf} inf; "
                         f"first bad row index {first_row}")
    if likelihood == "bernoulli":
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{name}: likelihood 'bernoulli' needs values in [0, 1], found min {low}, max {high}")
    return x


def _read_only(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False
    return x


def _load_digits(name: str, *, binary: bool, seed: int) -> Dataset:
    from sklearn.datasets import load_digits  # deferred: slow import

    digits = load_digits()
    images = (digits.data >= 8) if binary else digits.data / 16.0
    images = images.astype(np.float32)
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(images))
    train_idx, test_idx = order[:-DIGITS_NUM_TEST], order[-DIGITS_NUM_TEST:]
    return Dataset(name=name, train=_read_only(images[train_idx]), test=_read_only(images[test_idx]), valid=None,
                   image_shape=(8, 8), value_range="binary" if binary else "unit",
                   train_labels=_read_only(labels[train_idx]), test_labels=_read_only(labels[test_idx]))


def _load_binarized_mnist(data_dir: str | None) -> Dataset:
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    splits = {split: _read_amat(_find_amat(split, root), BINARIZED_MNIST_SHA256[split])
              for split in ("train", "valid", "test")}
    return Dataset(name="binarized_mnist", train=splits["train"], test=splits["test"], valid=splits["valid"],
                   image_shape=(28, 28), value_range="binary")


def _find_amat(split: str, root: str | None) -> Path:
    """Path of binarized_mnist_{split}.amat (plain preferred) or .amat.gz under root[/binarized_mnist]."""
    file_names = (f"binarized_mnist_{split}.amat", f"binarized_mnist_{split}.amat.gz")
    search_dirs = [] if root is None else [Path(root) / "binarized_mnist", Path(root)]
    for directory in search_dirs:
        for file_name in file_names:
            if (directory / file_name).is_file():
                return (directory / file_name).resolve()
    searched = ", ".join(str(d) for d in search_dirs) or f"none (no data_dir given and ${DATA_DIR_ENV} unset)"
    raise FileNotFoundError(
        f"binarized_mnist: cannot find {' or '.join(file_names)} (the dataset is the files "
        f"binarized_mnist_{{train,valid,test}}.amat, plain or .gz). Directories searched: {searched}. "
        f"Pass data_dir=... or set the environment variable {DATA_DIR_ENV} to a directory holding the "
        f"files (directly or in its binarized_mnist/ subfolder).")


@functools.lru_cache(maxsize=None)
def _read_amat(path: Path, expected_sha256: str) -> np.ndarray:
    """Read a (possibly gzipped) .amat file, verify the sha256 of its content, parse it. Cached."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = io.gunzip(raw, str(path))
    actual_sha256 = hashlib.sha256(raw).hexdigest()
    if actual_sha256 != expected_sha256:
        raise ValueError(f"{path}: sha256 mismatch: expected {expected_sha256}, got {actual_sha256}")
    return _read_only(_parse_amat(raw, path))


def _parse_amat(raw: bytes, source: Path | str) -> np.ndarray:
    """Parse canonical .amat bytes: rows of 784 space-separated 0/1 digits, each ending in a newline."""
    row_bytes = 2 * _MNIST_PIXELS
    if len(raw) % row_bytes:
        raise ValueError(f"{source}: size {len(raw)} is not a multiple of the {row_bytes}-byte .amat row")
    chars = np.frombuffer(raw, dtype=np.uint8).reshape(-1, row_bytes)
    digits = chars[:, 0::2]
    layout_ok = (chars[:, 1:-1:2] == ord(" ")).all() and (chars[:, -1] == ord("\n")).all()
    if not (layout_ok and ((digits == ord("0")) | (digits == ord("1"))).all()):
        raise ValueError(f"{source}: not in .amat layout ({_MNIST_PIXELS} space-separated 0/1 digits per line)")
    return (digits == ord("1")).astype(np.float32)


def _load_tfds(name: str, data_dir: str | None) -> Dataset:
    import tensorflow_datasets as tfds  # deferred: slow import

    try:
        sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
    except (KeyError, NotImplementedError) as err:
        tried = data_dir if data_dir is not None else tfds.core.constants.get_default_data_dir()
        raise FileNotFoundError(
            f"{name}: no prepared random-access (array_record) copy in TFDS data_dir {tried}. "
            f"Prepare it on a machine with network access, e.g. `tfds build {name} --data_dir={tried} "
            f"--file_format=array_record`, or in Python tfds.builder({name!r}, data_dir=..., "
            f"file_format='array_record').download_and_prepare(), then copy it there. TFDS said: {err}") from err
    (train, train_labels), (test, test_labels) = (_read_tfds_split(source) for source in sources)
    return Dataset(name=name, train=train, test=test, valid=None, image_shape=(28, 28), value_range="unit",
                   train_labels=train_labels, test_labels=test_labels)


def _read_tfds_split(source) -> tuple[np.ndarray, np.ndarray]:
    """All records of a TFDS data source as (float32 images [N, 784] in [0, 1], int32 labels [N])."""
    num = len(source)
    images = np.empty((num, _MNIST_PIXELS), dtype=np.uint8)
    labels = np.empty(num, dtype=np.int32)
    for start in range(0, num, _TFDS_READ_CHUNK):
        records = source.__getitems__(list(range(start, min(start + _TFDS_READ_CHUNK, num))))
        for i, record in enumerate(records, start):
            images[i] = record["image"].reshape(_MNIST_PIXELS)
            labels[i] = record["label"]
    return _read_only(images.astype(np.float32) / 255.0), _read_only(labels)
