"""Result files: modes follow the umask; damaged files give errors naming the file."""
import gzip
import os
import stat

import flax.serialization
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest

from vi_jax import storage


@pytest.fixture
def umask():
    """Set the umask for one test, restore it afterwards."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


WRITERS = {
    "bytes": lambda path: storage.atomic_write_bytes(path, b"x"),
    "json": lambda path: storage.atomic_write_json(path, {"a": 1}),
    "text": lambda path: storage.atomic_write_text(path, "a"),
    "npz": lambda path: storage.atomic_save_npz(path, a=np.zeros(2)),
    "figure": lambda path: storage.atomic_save_figure(plt.figure(), path),
}


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_file_modes_follow_the_umask(tmp_path, umask, writer, mask, mode):
    umask(mask)
    path = str(tmp_path / f"out.{writer}")
    WRITERS[writer](path)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary file left


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        storage.atomic_write_json(str(tmp_path / "a.json"), {"x": float("nan")})
    assert os.listdir(tmp_path) == []


GZIP = gzip.compress(b"0 1\n" * 100)
GZIP_CASES = {
    "truncated": GZIP[:len(GZIP) // 2],
    "not_gzip": b"plain text",
    "bad_crc": GZIP[:-8] + bytes(8),
}


@pytest.mark.parametrize("case", sorted(GZIP_CASES))
def test_damaged_gzip_names_the_file(case):
    with pytest.raises(ValueError, match=r"^data/x\.amat\.gz: damaged gzip file"):
        storage.gunzip(GZIP_CASES[case], "data/x.amat.gz")


@pytest.mark.parametrize("content", [b"", b"{\"a\": ", b"\xff\xfe", b"{'a': 1}"], ids=["empty", "truncated",
                                                                                   "binary", "python_dict"])
def test_damaged_json_names_the_file(tmp_path, content):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{path}: not valid JSON"):
        storage.read_json(str(path))


TEMPLATE = {"dense": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
PARAMS_CASES = {
    "garbage": (b"\x93garbage", "not a parameter file of this network"),
    "truncated": (flax.serialization.to_bytes(TEMPLATE)[:20], "not a parameter file of this network"),
    "other_keys": (flax.serialization.to_bytes({"other": jnp.zeros(2)}), "not a parameter file of this network"),
    "other_shapes": (flax.serialization.to_bytes({"dense": {"kernel": jnp.zeros((4, 2)), "bias": jnp.zeros(2)}}),
                     r"\['dense'\]\['kernel'\] has shape \(4, 2\), the network its config describes needs \(3, 2\)"),
}


@pytest.mark.parametrize("case", sorted(PARAMS_CASES))
def test_damaged_or_foreign_params_name_the_file(tmp_path, case):
    content, message = PARAMS_CASES[case]
    path = tmp_path / "params.msgpack"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{path}: .*{message}"):
        storage.read_params(str(path), TEMPLATE)


def test_params_round_trip(tmp_path):
    path = str(tmp_path / "params.msgpack")
    storage.atomic_write_bytes(path, flax.serialization.to_bytes(TEMPLATE))
    restored = storage.read_params(path, TEMPLATE)
    assert restored["dense"]["kernel"].shape == (3, 2)
