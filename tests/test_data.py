"""Tests for vi_jax.data: dataset loaders and validate_data."""

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from vi_jax import data

SKLEARN_DIGITS = load_digits()
DIGITS_TRANSFORMS = [  # (dataset name, expected image from sklearn's 0..16 pixel values)
    ("digits", lambda x: (x >= 8).astype(np.float32)),
    ("digits_continuous", lambda x: (x / 16).astype(np.float32)),
]


def _real_data_dir() -> Path:
    """$VI_JAX_DATA_DIR, else the shared data folder next to the repository."""
    return Path(os.environ.get(data.DATA_DIR_ENV) or Path(__file__).parents[2] / "shared" / "data")


@pytest.fixture
def bmnist_dir() -> Path:
    root = _real_data_dir()
    if not any((d / f"binarized_mnist_train.amat{ext}").is_file()
               for d in (root, root / "binarized_mnist") for ext in ("", ".gz")):
        pytest.skip(f"real binarized MNIST .amat files not found in {root}[/binarized_mnist]; "
                    f"set {data.DATA_DIR_ENV} to run this test")
    return root


@pytest.fixture
def mnist_dir() -> Path:
    root = _real_data_dir()
    names = [spec.name for spec in data.MNIST_IDX_FILES.values()]
    if not all(any((d / f"{name}{ext}").is_file() for d in (root, root / "mnist") for ext in ("", ".gz"))
               for name in names):
        pytest.skip(f"real MNIST IDX files ({', '.join(names)}, plain or .gz) not found in {root}[/mnist]; "
                    f"set {data.DATA_DIR_ENV} to run this test")
    return root


# Label counts of digits 0-9 (shared/data/README.md)
MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------- digits

@pytest.mark.parametrize("name, value_range", [("digits", "binary"), ("digits_continuous", "unit")])
def test_digits_shapes_and_metadata(name, value_range):
    ds = data.load_dataset(name)
    assert ds.train.shape == (1497, 64) and ds.test.shape == (300, 64) and ds.valid is None
    assert ds.train.dtype == ds.test.dtype == np.float32
    assert ds.train_labels.shape == (1497,) and ds.test_labels.shape == (300,)
    assert ds.train_labels.dtype == np.int32
    assert (ds.dim, ds.image_shape, ds.value_range) == (64, (8, 8), value_range)


@pytest.mark.parametrize("name, transform", DIGITS_TRANSFORMS, ids=["binary", "continuous"])
def test_digits_values_and_labels_follow_the_documented_permutation(name, transform):
    seed = 3
    ds = data.load_dataset(name, seed=seed)
    order = np.random.default_rng(seed).permutation(1797)
    train_idx, test_idx = order[:1497], order[1497:]
    np.testing.assert_array_equal(ds.train, transform(SKLEARN_DIGITS.data[train_idx]))
    np.testing.assert_array_equal(ds.test, transform(SKLEARN_DIGITS.data[test_idx]))
    np.testing.assert_array_equal(ds.train_labels, SKLEARN_DIGITS.target[train_idx])
    np.testing.assert_array_equal(ds.test_labels, SKLEARN_DIGITS.target[test_idx])


def test_digits_value_sets():
    assert set(np.unique(data.load_dataset("digits").train)) == {0.0, 1.0}
    continuous = data.load_dataset("digits_continuous")
    assert continuous.train.min() == 0.0 and continuous.train.max() == 1.0
    assert len(np.unique(continuous.train)) == 17  # the levels 0/16 ... 16/16


@pytest.mark.parametrize("name, transform", DIGITS_TRANSFORMS, ids=["binary", "continuous"])
def test_digits_split_is_a_partition_of_all_rows(name, transform):
    """Independent of how the split is drawn: train + test rows (with labels) are sklearn's, each once."""
    ds = data.load_dataset(name)
    ours = np.concatenate([np.column_stack([ds.train, ds.train_labels]), np.column_stack([ds.test, ds.test_labels])])
    reference = np.column_stack([transform(SKLEARN_DIGITS.data), SKLEARN_DIGITS.target])
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], reference[np.lexsort(reference.T)])


def test_digits_split_deterministic_per_seed():
    first, again, other = (data.load_dataset("digits", seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(first.train, again.train)
    np.testing.assert_array_equal(first.test_labels, again.test_labels)
    assert not np.array_equal(first.test, other.test)


def test_loaded_arrays_are_read_only():
    ds = data.load_dataset("digits")
    with pytest.raises(ValueError, match="read-only"):
        ds.train[0, 0] = 5.0


# ---------------------------------------------------------------- binarized MNIST

def test_binarized_mnist_real_files(bmnist_dir):
    ds = data.load_dataset("binarized_mnist", data_dir=str(bmnist_dir))  # sha256-verified inside
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    for split in (ds.train, ds.valid, ds.test):
        assert split.dtype == np.float32
        assert set(np.unique(split)) == {0.0, 1.0}
    assert (ds.image_shape, ds.value_range, ds.dim) == ((28, 28), "binary", 784)
    assert ds.train_labels is None
    np.testing.assert_array_equal(np.bincount(ds.test_labels), MNIST_TEST_CLASS_COUNTS)
    assert list(ds.ordered_splits) == ["test"] and "sorted by digit class" in ds.ordered_splits["test"]


def test_binarized_mnist_test_labels_match_the_grey_scale_originals(bmnist_dir, mnist_dir):
    """The claim behind test_labels: Larochelle's test file is MNIST's test set sorted by class.
    Each binary row x is matched to the MNIST test image g maximising the Bernoulli log-likelihood
    sum_d x_d log g_d + (1 - x_d) log(1 - g_d), grey values clipped to [1e-3, 1 - 1e-3]; the
    matched images' labels must equal the claimed labels on every row."""
    binary = data.load_dataset("binarized_mnist", data_dir=str(bmnist_dir))
    grey = data.load_dataset("mnist", data_dir=str(mnist_dir))
    g = np.clip(grey.test, 1e-3, 1 - 1e-3)
    log_odds, log_off = np.log(g) - np.log1p(-g), np.log1p(-g)
    matched = np.concatenate([np.argmax(x @ log_odds.T + log_off.sum(axis=1), axis=1)
                              for x in np.array_split(binary.test, 10)])  # 1000 x 10000 scores at a time
    agree = int(np.sum(grey.test_labels[matched] == binary.test_labels))
    assert agree == len(binary.test), f"{agree} of {len(binary.test)} rows match a test image of the claimed class"


def test_binarized_mnist_found_through_env_var(bmnist_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(bmnist_dir))
    from_env = data.load_dataset("binarized_mnist")
    np.testing.assert_array_equal(from_env.test, data.load_dataset("binarized_mnist", data_dir=str(bmnist_dir)).test)


def test_binarized_mnist_plain_file_matches_gzipped(bmnist_dir, tmp_path):
    gz_path = data._find_amat("valid", str(bmnist_dir))
    if gz_path.suffix != ".gz":
        pytest.skip("the real valid file is not gzipped")
    plain_path = tmp_path / "binarized_mnist_valid.amat"
    with gzip.open(gz_path, "rb") as src, open(plain_path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = data._read_amat(plain_path, data.BINARIZED_MNIST_SHA256["valid"])
    np.testing.assert_array_equal(plain, data._read_amat(gz_path, data.BINARIZED_MNIST_SHA256["valid"]))
    assert plain.shape == (10000, 784)


def _canonical_amat(rows: np.ndarray) -> bytes:
    return b"".join(" ".join(str(int(v)) for v in row).encode() + b"\n" for row in rows)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzipped"])
def test_binarized_mnist_hash_mismatch_names_file_and_hashes(tmp_path, compress):
    content = _canonical_amat(np.zeros((2, 784)))
    for split in ("train", "valid", "test"):
        path = tmp_path / f"binarized_mnist_{split}.amat{'.gz' if compress else ''}"
        path.write_bytes(gzip.compress(content) if compress else content)
    expected = data.BINARIZED_MNIST_SHA256["train"]
    with pytest.raises(ValueError, match=rf"binarized_mnist_train\.amat.*sha256 mismatch: expected {expected}, got [0-9a-f]{{64}}"):
        data.load_dataset("binarized_mnist", data_dir=str(tmp_path))


def test_binarized_mnist_missing_dir_error_is_actionable(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"binarized_mnist_train\.amat") as err:
        data.load_dataset("binarized_mnist", data_dir=str(missing))
    message = str(err.value)
    assert str(missing / "binarized_mnist") in message and data.DATA_DIR_ENV in message
    assert "valid" in message and "test" in message


def test_binarized_mnist_without_dir_or_env_var(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=rf"\${data.DATA_DIR_ENV} unset"):
        data.load_dataset("binarized_mnist")


def test_parse_amat_canonical_rows():
    rows = np.random.default_rng(0).integers(0, 2, size=(3, 784))
    parsed = data._parse_amat(_canonical_amat(rows), "fake")
    assert parsed.dtype == np.float32
    np.testing.assert_array_equal(parsed, rows)


@pytest.mark.parametrize("raw, match", [
    (b"0 1\n", "not a multiple"),
    (_canonical_amat(np.zeros((1, 784))).replace(b"0\n", b"2\n"), "not in .amat layout"),
    (_canonical_amat(np.zeros((1, 784))).replace(b"0 0", b"0,0", 1), "not in .amat layout"),
    (_canonical_amat(np.zeros((2, 784)))[:-1] + b" ", "not in .amat layout"),
], ids=["short", "bad-digit", "bad-separator", "no-final-newline"])
def test_parse_amat_rejects_malformed(raw, match):
    with pytest.raises(ValueError, match=match):
        data._parse_amat(raw, "fake")


# ---------------------------------------------------------------- MNIST from IDX files

def test_mnist_idx_real_files(mnist_dir):
    ds = data.load_dataset("mnist", data_dir=str(mnist_dir))  # magic, dims, size, sha256 checked inside
    assert (ds.train.shape, ds.test.shape, ds.valid) == ((60000, 784), (10000, 784), None)
    assert ds.train.dtype == ds.test.dtype == np.float32 and ds.test_labels.dtype == np.int32
    for split in (ds.train, ds.test):
        assert split.min() == 0.0 and split.max() == 1.0
        np.testing.assert_array_equal(np.round(split[:100] * 255) / 255, split[:100])  # 256 grey levels
    np.testing.assert_array_equal(np.bincount(ds.train_labels), MNIST_TRAIN_CLASS_COUNTS)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), MNIST_TEST_CLASS_COUNTS)
    assert (ds.image_shape, ds.value_range, ds.dim) == ((28, 28), "unit", 784)
    assert list(ds.ordered_splits) == ["test"]


def test_mnist_idx_order_facts(mnist_dir):
    """Why MNIST's test split is recorded as ordered, and its train split not: mean ink (summed grey
    values) per half of the test split differs by far more than its standard error (the first half
    is NIST SD-3, the cleaner one), while neither split is sorted by class."""
    ds = data.load_dataset("mnist", data_dir=str(mnist_dir))
    ink = ds.test.sum(axis=1)
    first, second = ink[:5000], ink[5000:]
    stderr = np.sqrt(first.var() / 5000 + second.var() / 5000)
    assert second.mean() - first.mean() > 10 * stderr
    for labels in (ds.train_labels, ds.test_labels):
        assert np.mean(labels[1:] == labels[:-1]) < 0.2  # sorted by class would be > 0.99; iid about 0.1


def test_mnist_found_in_dir_and_its_mnist_subfolder(mnist_dir):
    if not (mnist_dir / "mnist").is_dir():
        pytest.skip(f"the real IDX files are not in a mnist/ subfolder of {mnist_dir}")
    for directory in (mnist_dir, mnist_dir / "mnist"):
        ds = data.load_dataset("mnist", data_dir=str(directory))
        np.testing.assert_array_equal(np.bincount(ds.test_labels), MNIST_TEST_CLASS_COUNTS)


def test_mnist_found_through_env_var(mnist_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(mnist_dir))
    assert data.load_dataset("mnist").train.shape == (60000, 784)


def test_mnist_damaged_real_file_is_refused(mnist_dir, tmp_path):
    """One flipped pixel of the real test-label file: header and size are right, only sha256 can tell."""
    spec = data.MNIST_IDX_FILES["test_labels"]
    found = data._find_file([mnist_dir / "mnist", mnist_dir], (spec.name, spec.name + ".gz"))
    raw = bytearray(gzip.decompress(found.read_bytes()) if found.suffix == ".gz" else found.read_bytes())
    plain = tmp_path / spec.name
    plain.write_bytes(raw)
    np.testing.assert_array_equal(np.bincount(data._read_idx(plain, spec)), MNIST_TEST_CLASS_COUNTS)
    raw[5000] ^= 1
    damaged = tmp_path / "damaged" / spec.name
    damaged.parent.mkdir()
    damaged.write_bytes(raw)
    with pytest.raises(ValueError, match=rf"{spec.name}: sha256 mismatch: expected {spec.sha256}"):
        data._read_idx(damaged, spec)


def _idx_bytes(values: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file of uint8 values: big-endian magic (0x0800 + ndim unless given), dims, values."""
    magic = 0x0800 | values.ndim if magic is None else magic
    return np.array([magic, *values.shape], dtype=">u4").tobytes() + values.astype(np.uint8).tobytes()


TOY_IMAGES = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
TOY_SPEC = data.IdxFile("toy-images-idx3-ubyte", (3, 2, 2), hashlib.sha256(_idx_bytes(TOY_IMAGES)).hexdigest())


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzipped"])
def test_read_idx_synthetic_file(tmp_path, compress):
    path = tmp_path / ("toy.gz" if compress else "toy")
    path.write_bytes(gzip.compress(_idx_bytes(TOY_IMAGES)) if compress else _idx_bytes(TOY_IMAGES))
    np.testing.assert_array_equal(data._read_idx(path, TOY_SPEC), TOY_IMAGES)


def _flip_last_byte(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])


@pytest.mark.parametrize("file_name, content, match", [
    ("toy", _flip_last_byte(_idx_bytes(TOY_IMAGES)),
     rf"sha256 mismatch: expected {TOY_SPEC.sha256}, got [0-9a-f]{{64}}"),
    ("toy", _idx_bytes(TOY_IMAGES, magic=0x0801), r"IDX magic number 0x00000801, expected 0x00000803"),
    ("toy", _idx_bytes(TOY_IMAGES[:2]), r"IDX dimensions \(2, 2, 2\), expected \(3, 2, 2\)"),
    ("toy", _idx_bytes(TOY_IMAGES)[:-1], r"27 bytes of content, expected 28 .*truncated"),
    ("toy", _idx_bytes(TOY_IMAGES)[:6], r"6 bytes, shorter than the 16-byte IDX header"),
    ("toy.gz", gzip.compress(_idx_bytes(TOY_IMAGES))[:-6], r"damaged gzip file"),
    ("toy.gz", _flip_last_byte(gzip.compress(_idx_bytes(TOY_IMAGES))), r"damaged gzip file"),  # its size field
    ("toy.gz", _idx_bytes(TOY_IMAGES), r"damaged gzip file"),
], ids=["flipped-byte", "wrong-magic", "wrong-dims", "truncated", "no-header", "truncated-gzip", "corrupt-gzip",
        "not-gzip"])
def test_read_idx_refuses_damaged_file_naming_it(tmp_path, file_name, content, match):
    path = tmp_path / file_name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{path}: {match}"):
        data._read_idx(path, TOY_SPEC)


def test_mnist_refuses_canonically_named_file_with_other_content(tmp_path):
    """A label file of the canonical name and size whose content is not MNIST's: only sha256 tells."""
    spec = data.MNIST_IDX_FILES["test_labels"]
    path = tmp_path / spec.name
    path.write_bytes(_idx_bytes(np.zeros(spec.dims, np.uint8)))
    assert path.stat().st_size == 10008  # the canonical size (shared/data/README.md)
    with pytest.raises(ValueError, match=rf"{spec.name}: sha256 mismatch"):
        data._read_idx(path, spec)


def test_mnist_load_names_the_bad_file(tmp_path):
    for spec in data.MNIST_IDX_FILES.values():  # right magic numbers, too few images
        (tmp_path / "mnist").mkdir(exist_ok=True)
        (tmp_path / "mnist" / f"{spec.name}.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros((2,) + spec.dims[1:]))))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: IDX dimensions \(2, 28, 28\), "
                                         r"expected \(60000, 28, 28\)"):
        data.load_dataset("mnist", data_dir=str(tmp_path))


def test_mnist_some_files_missing_names_them(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="not train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                                                "t10k-labels-idx1-ubyte") as err:
        data.load_dataset("mnist", data_dir=str(tmp_path))
    assert str(tmp_path / "mnist") in str(err.value)


# ---------------------------------------------------------------- TFDS (mnist, fashion_mnist)

@pytest.fixture
def tfds_mock(monkeypatch):
    """Returns mock_data(num_examples) for tfds; patches its batch read, which is broken in tfds 4.9.10."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.testing import mocking

    # The mock sets `source.__getitems__ = partial(_getitems, generator=...)` as a plain instance
    # attribute, so `self` is never passed and every batch read fails. data.py reads in batches.
    def getitems(*args, generator, serialized=False):
        return [generator[key] for key in args[-1]]

    monkeypatch.setattr(mocking, "_getitems", getitems)
    return lambda num_examples: tfds.testing.mock_data(num_examples=num_examples)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds_dataset_from_mock(name, tfds_mock, tmp_path):
    import tensorflow_datasets as tfds

    with tfds_mock(7):
        ds = data.load_dataset(name, data_dir=str(tmp_path))
        reference = tfds.data_source(name, split="train", data_dir=str(tmp_path), download=False)
        expected_images = np.stack([reference[i]["image"].reshape(784) for i in range(7)]) / 255.0
        expected_labels = [reference[i]["label"] for i in range(7)]
    assert ds.train.shape == ds.test.shape == (7, 784) and ds.valid is None
    assert ds.train.dtype == np.float32 and ds.train_labels.dtype == np.int32
    assert 0.0 <= ds.train.min() and ds.train.max() <= 1.0 and ds.train.max() > 0.5
    np.testing.assert_allclose(ds.train, expected_images, rtol=1e-6)
    np.testing.assert_array_equal(ds.train_labels, expected_labels)
    assert (ds.image_shape, ds.value_range, ds.dim) == ((28, 28), "unit", 784)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_tfds_not_prepared_error_is_actionable(name, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match=rf"{name}: no prepared .* data_dir {tmp_path}") as err:
        data.load_dataset(name, data_dir=str(tmp_path))
    assert f"tfds build {name}" in str(err.value)
    if name == "mnist":  # what the IDX path looked for
        assert "No MNIST IDX files (train-images-idx3-ubyte[.gz]" in str(err.value)
        assert str(tmp_path / "mnist") in str(err.value)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'") as err:
        data.load_dataset("cifar10")
    assert all(name in str(err.value) for name in data.DATASETS)


# ---------------------------------------------------------------- Dataset

@pytest.mark.parametrize("kwargs, match", [
    (dict(value_range="integer"), "value_range must be one of"),
    (dict(test=np.zeros((2, 5), np.float32)), "trailing shapes"),
    (dict(image_shape=(3, 3)), "trailing shapes"),
    (dict(test_labels=np.zeros(3, np.int32)), r"test_labels must have shape \(2,\), got \(3,\)"),
    (dict(ordered_splits={"valid": "sorted"}), r"ordered_splits names splits it does not have: \['valid'\]"),
], ids=["bad-value-range", "test-dim-mismatch", "image-shape-mismatch", "labels-length", "ordered-unknown-split"])
def test_dataset_rejects_inconsistent_fields(kwargs, match):
    fields = dict(name="toy", train=np.zeros((3, 4), np.float32), test=np.zeros((2, 4), np.float32),
                  valid=None, image_shape=(2, 2), value_range="unit") | kwargs
    with pytest.raises(ValueError, match=match):
        data.Dataset(**fields)


def test_dataset_ordered_splits_recorded_and_read_only():
    ds = data.Dataset(name="toy", train=np.zeros((3, 4), np.float32), test=np.zeros((2, 4), np.float32), valid=None,
                      image_shape=(2, 2), value_range="unit", ordered_splits={"test": "sorted by class"})
    assert dict(ds.ordered_splits) == {"test": "sorted by class"}
    with pytest.raises(TypeError):
        ds.ordered_splits["train"] = "sorted"
    assert dict(data.load_dataset("digits").ordered_splits) == {}  # a seeded permutation: no order


# ---------------------------------------------------------------- validate_data

def _with_nan_rows(rows):
    x = np.zeros((5, 3))
    x[rows, 1] = np.nan
    return x


@pytest.mark.parametrize("x, likelihood, match", [
    (_with_nan_rows([2]), "gaussian", r"1 NaN and 0 inf; first bad row index 2"),
    (_with_nan_rows([4, 1]), "bernoulli", r"2 NaN and 0 inf; first bad row index 1"),
    (np.array([[0.0, 1.0], [np.inf, -np.inf]]), "gaussian", r"0 NaN and 2 inf; first bad row index 1"),
    (np.array([[1e300, 0.0]]), "gaussian", r"0 NaN and 1 inf"),  # overflows float32
    (np.zeros(4), "gaussian", r"2-D array \[N, D\].*got shape \(4,\)"),
    (np.zeros((2, 2, 2)), "gaussian", r"got shape \(2, 2, 2\)"),
    (np.zeros((0, 3)), "gaussian", r"N >= 1.*got shape \(0, 3\)"),
    (np.array([[0.5, -0.5], [1.0, 0.0]]), "bernoulli", r"needs values in \[0, 1\], found min -0.5, max 1.0"),
    (np.array([[0.0, 2.0]]), "bernoulli", r"found min 0.0, max 2.0"),
    (np.array([["a", "b"]]), "gaussian", r"numeric array, got dtype <U1"),
    (np.zeros((2, 2)), "poisson", r"unknown likelihood 'poisson'.*'bernoulli', 'gaussian'"),
], ids=["nan", "nan-first-row", "inf", "float32-overflow", "1d", "3d", "empty", "below-0", "above-1",
        "strings", "unknown-likelihood"])
def test_validate_data_rejects(x, likelihood, match):
    with pytest.raises(ValueError, match="^x_train: .*" + match):
        data.validate_data(x, likelihood=likelihood, name="x_train")


@pytest.mark.parametrize("x, likelihood", [
    (np.array([[0, 1], [1, 0]], dtype=np.int64), "bernoulli"),
    (np.array([[True, False]]), "bernoulli"),
    (np.array([[0.25, 1.0]], dtype=np.float64), "bernoulli"),
    (np.array([[-3.5, 1e6]], dtype=np.float64), "gaussian"),
], ids=["int", "bool", "float64-unit", "gaussian-unbounded"])
def test_validate_data_accepts_and_returns_float32(x, likelihood):
    out = data.validate_data(x, likelihood=likelihood)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x.astype(np.float32))


def test_validate_data_default_name_in_message():
    with pytest.raises(ValueError, match="^data: "):
        data.validate_data(np.zeros(3), likelihood="gaussian")
