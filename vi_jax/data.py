"""Datasets (scikit-learn digits, binarized MNIST, MNIST from IDX files or TFDS, TFDS Fashion-MNIST)
and input validation.

Everything here is plain numpy. Images are flattened to float32 rows [N, D]. Arrays of a loaded
`Dataset` are read-only: the MNIST files are cached per process and shared between loads.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import types
from pathlib import Path
from typing import Mapping, NamedTuple

import jax
import numpy as np

from vi_jax import storage

DATASETS = ("digits", "digits_continuous", "binarized_mnist", "mnist", "fashion_mnist")
LIKELIHOODS = ("bernoulli", "gaussian")
VALUE_RANGES = ("binary", "unit")
# the value range of each dataset's images, known before loading (a config is checked against it)
DATASET_VALUE_RANGES = {"digits": "binary", "digits_continuous": "unit", "binarized_mnist": "binary",
                        "mnist": "unit", "fashion_mnist": "unit"}

DATA_DIR_ENV = "VI_JAX_DATA_DIR"

DIGITS_NUM_TEST = 300  # 1797 images -> 1497 train / 300 test

# sha256 of the uncompressed Larochelle .amat files (the values tensorflow-datasets records).
BINARIZED_MNIST_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
# Label counts of digits 0-9 in MNIST's test split (shared/data/README.md). Larochelle's binarized
# test file holds the same 10000 images sorted by class (each row matches one MNIST test image;
# tests/test_data.py verifies it), so its labels are these counts' classes in order.
MNIST_TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
_MNIST_PIXELS = 28 * 28


class IdxFile(NamedTuple):
    """One IDX file of unsigned bytes: its canonical name, dimensions and uncompressed sha256."""

    name: str
    dims: tuple[int, ...]
    sha256: str

    @property
    def magic(self) -> int:
        """IDX magic number: two zero bytes, the type code 0x08 (unsigned byte), the number of dims
        (LeCun, Cortes & Burges, the MNIST page, "the IDX file format")."""
        return 0x0800 | len(self.dims)


# The canonical MNIST files; sha256 of the uncompressed files as in shared/data/README.md.
MNIST_IDX_FILES = {
    "train_images": IdxFile("train-images-idx3-ubyte", (60000, 28, 28),
                            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train_labels": IdxFile("train-labels-idx1-ubyte", (60000,),
                            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test_images": IdxFile("t10k-images-idx3-ubyte", (10000, 28, 28),
                           "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test_labels": IdxFile("t10k-labels-idx1-ubyte", (10000,),
                           "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
# Why a split's row order carries information, so that its first rows are not a fair sample.
BINARIZED_MNIST_ORDER = {"test": "sorted by digit class (rows 0-979 are zeros, then 1135 ones, and so on)"}
# LeCun, Cortes & Burges (the MNIST page): the first 5000 test images come from NIST SD-3 (Census
# Bureau employees), the last 5000 from SD-1 (high-school students), and the first 5000 are
# cleaner and easier. Mean ink per 1000-row block: 94-96 pixels in the first half, 107-116 in the
# second. Neither split is ordered by class; the training file's ink per 6000-row block is flat (100-105).
MNIST_ORDER = {"test": "in two halves by writer population (rows 0-4999 from NIST SD-3, the cleaner "
                       "and easier half; rows 5000-9999 from SD-1)"}
_TFDS_READ_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset of flattened images: float32 rows [N, D], values per `value_range`.

    value_range: "binary" (values exactly 0/1) or "unit" (continuous in [0, 1]).
    ordered_splits: split name -> why its row order is meaningful (e.g. sorted by class); its
      first N rows are then a biased sample, and experiments refuse rows="first" on it.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    valid: np.ndarray | None
    image_shape: tuple[int, int]
    value_range: str
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    ordered_splits: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.value_range not in VALUE_RANGES:
            raise ValueError(f"{self.name}: value_range must be one of {VALUE_RANGES}, got {self.value_range!r}")
        dims = {split: x.shape[1:] for split, x in
                (("train", self.train), ("test", self.test), ("valid", self.valid)) if x is not None}
        if len(set(dims.values())) != 1 or dims["train"] != (int(np.prod(self.image_shape)),):
            raise ValueError(f"{self.name}: splits must be [N, D] with D = prod(image_shape {self.image_shape}), "
                             f"got trailing shapes {dims}")
        for split, labels in (("train", self.train_labels), ("test", self.test_labels)):
            if labels is not None and labels.shape != (len(getattr(self, split)),):
                raise ValueError(f"{self.name}: {split}_labels must have shape ({len(getattr(self, split))},), "
                                 f"got {labels.shape}")
        unknown = set(self.ordered_splits) - set(dims)
        if unknown:
            raise ValueError(f"{self.name}: ordered_splits names splits it does not have: {sorted(unknown)}")
        # read-only, like the arrays: a Dataset is a fact about files, not a scratch space
        object.__setattr__(self, "ordered_splits", types.MappingProxyType(dict(self.ordered_splits)))

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
      Content is sha256-verified; parsed arrays are cached per process. The test file is sorted by
      class: test_labels = repeat(arange(10), MNIST_TEST_CLASS_COUNTS); train/valid have no labels.
    mnist: the four canonical IDX files (MNIST_IDX_FILES, plain or .gz) from `data_dir`, else
      $VI_JAX_DATA_DIR (directly or in its mnist/ subfolder), each checked for its magic number,
      dimensions, size and sha256; grey values x / 255 with int32 labels. With no IDX file there,
      a prepared TFDS copy (as fashion_mnist).
    fashion_mnist: a prepared TFDS copy read with `tfds.data_source` (no download); `data_dir`
      None means TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
    """
    if name == "digits":
        return _load_digits(name, binary=True, seed=seed)
    if name == "digits_continuous":
        return _load_digits(name, binary=False, seed=seed)
    if name == "binarized_mnist":
        return _load_binarized_mnist(data_dir)
    if name == "mnist":
        return _load_mnist(data_dir)
    if name == "fashion_mnist":
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
    test_labels = np.repeat(np.arange(10, dtype=np.int32), MNIST_TEST_CLASS_COUNTS)
    return Dataset(name="binarized_mnist", train=splits["train"], test=splits["test"], valid=splits["valid"],
                   image_shape=(28, 28), value_range="binary", test_labels=_read_only(test_labels),
                   ordered_splits=BINARIZED_MNIST_ORDER)


def _find_amat(split: str, root: str | None) -> Path:
    """Path of binarized_mnist_{split}.amat (plain preferred) or .amat.gz under root[/binarized_mnist]."""
    file_names = (f"binarized_mnist_{split}.amat", f"binarized_mnist_{split}.amat.gz")
    search_dirs = [] if root is None else [Path(root) / "binarized_mnist", Path(root)]
    path = _find_file(search_dirs, file_names)
    if path is not None:
        return path
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
        raw = storage.gunzip(raw, str(path))
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


def _load_mnist(data_dir: str | None) -> Dataset:
    """MNIST from its IDX files when any is found, else from TFDS; the error says what was looked for."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    search_dirs = [] if root is None else [Path(root) / "mnist", Path(root)]
    paths = {part: _find_file(search_dirs, (spec.name, spec.name + ".gz")) for part, spec in MNIST_IDX_FILES.items()}
    searched = ", ".join(str(d) for d in search_dirs) or f"none (no data_dir given and ${DATA_DIR_ENV} unset)"
    names = ", ".join(f"{spec.name}[.gz]" for spec in MNIST_IDX_FILES.values())
    missing = [MNIST_IDX_FILES[part].name for part, path in paths.items() if path is None]
    if len(missing) == len(paths):
        return _load_tfds("mnist", data_dir, also_tried=f"No MNIST IDX files ({names}) in: {searched}.")
    if missing:
        raise FileNotFoundError(f"mnist: found some IDX files but not {', '.join(missing)} (plain or .gz); "
                                f"all four are needed: {names}. Directories searched: {searched}.")
    return _mnist_from_idx(**paths)


@functools.lru_cache(maxsize=None)
def _mnist_from_idx(**paths: Path) -> Dataset:
    """The mnist Dataset of the four verified IDX files (MNIST_IDX_FILES' keys). Cached: loads share it."""
    arrays = {part: _read_idx(path, MNIST_IDX_FILES[part]) for part, path in paths.items()}
    images = {split: _read_only(arrays[f"{split}_images"].reshape(-1, _MNIST_PIXELS).astype(np.float32) / 255.0)
              for split in ("train", "test")}
    return Dataset(name="mnist", train=images["train"], test=images["test"], valid=None, image_shape=(28, 28),
                   value_range="unit", train_labels=_read_only(arrays["train_labels"].astype(np.int32)),
                   test_labels=_read_only(arrays["test_labels"].astype(np.int32)), ordered_splits=MNIST_ORDER)


def _find_file(search_dirs: list[Path], file_names: tuple[str, ...]) -> Path | None:
    """The first existing directory/file_name, directories in order, then names in order; else None."""
    for directory in search_dirs:
        for file_name in file_names:
            if (directory / file_name).is_file():
                return (directory / file_name).resolve()
    return None


def _read_idx(path: Path, spec: IdxFile) -> np.ndarray:
    """The uint8 array [*spec.dims] of an IDX file (gzipped if its name ends in .gz), read-only.

    IDX layout: a big-endian uint32 magic number (spec.magic), one big-endian uint32 per dimension,
    then the values row-major. Refuses, naming the file: a corrupt or truncated gzip stream, a
    wrong magic number, dimensions or size, and content whose sha256 is not spec.sha256.
    """
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = storage.gunzip(raw, str(path))
    header_bytes = 4 * (1 + len(spec.dims))
    if len(raw) < header_bytes:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than the {header_bytes}-byte IDX header of {spec.name}")
    magic, *dims = np.frombuffer(raw, dtype=">u4", count=1 + len(spec.dims)).tolist()
    if magic != spec.magic:
        raise ValueError(f"{path}: IDX magic number 0x{magic:08x}, expected 0x{spec.magic:08x} "
                         f"(unsigned bytes, {len(spec.dims)} dimensions) for {spec.name}")
    if tuple(dims) != spec.dims:
        raise ValueError(f"{path}: IDX dimensions {tuple(dims)}, expected {spec.dims} for {spec.name}")
    expected_size = header_bytes + int(np.prod(spec.dims))
    if len(raw) != expected_size:
        raise ValueError(f"{path}: {len(raw)} bytes of content, expected {expected_size} "
                         f"(header + {spec.dims} bytes) for {spec.name}: truncated or padded")
    actual_sha256 = hashlib.sha256(raw).hexdigest()
    if actual_sha256 != spec.sha256:
        raise ValueError(f"{path}: sha256 mismatch: expected {spec.sha256}, got {actual_sha256}")
    return _read_only(np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(spec.dims))


def _load_tfds(name: str, data_dir: str | None, also_tried: str = "") -> Dataset:
    """`name` from a prepared TFDS copy; `also_tried` (what else was looked for) joins the error."""
    try:
        import tensorflow_datasets as tfds  # deferred: slow import
    except ImportError:
        raise FileNotFoundError(f"{name}: tensorflow_datasets is not installed, so no TFDS copy can be read. "
                                f"{also_tried}".strip()) from None

    try:
        sources = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=False)
    except (KeyError, NotImplementedError) as err:
        tried = data_dir if data_dir is not None else tfds.core.constants.get_default_data_dir()
        raise FileNotFoundError(
            f"{name}: no prepared random-access (array_record) copy in TFDS data_dir {tried}. "
            f"Prepare it on a machine with network access, e.g. `tfds build {name} --data_dir={tried} "
            f"--file_format=array_record`, or in Python tfds.builder({name!r}, data_dir=..., "
            f"file_format='array_record').download_and_prepare(), then copy it there. TFDS said: {err}. "
            f"{also_tried}".strip()) from err
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


ROW_CHOICES = ("random", "first")


def subset(key, x: np.ndarray, n: int, rows: str = "random", *, order: str | None = None,
           name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """(sorted row indices, rows) of a seeded random subset of n rows, or of the first n rows
    (Cremer et al. evaluate the first 1000 training points); all rows if n >= len(x).

    order: why the row order of `x` is meaningful (Dataset.ordered_splits), or None; then its
    first n rows are a biased sample and rows="first" raises a ValueError starting with `name`.
    """
    if rows not in ROW_CHOICES:
        raise ValueError(f"{name}: unknown rows choice {rows!r}; known: {ROW_CHOICES}")
    if rows == "first" and order is not None and n < len(x):
        raise ValueError(f"{name}: rows='first' refused: the split is {order}, so its first {n} rows are not a "
                         f"fair sample of its {len(x)}; use rows='random' (a seeded random subset) or all rows")
    if rows == "first":
        index = np.arange(min(n, len(x)))
    else:
        index = np.sort(np.asarray(jax.random.permutation(key, len(x)))[:n])
    return index, x[index]
