"""Result files on disk: atomic writes (a temporary name in the same directory, then a rename,
so an interrupted run never leaves a half-written file) with the modes the umask asks for, and
readers whose errors name the file (`path: what is wrong`)."""
from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import zlib
from typing import Any

import flax.serialization
import jax
import numpy as np


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        # mkstemp creates 0600 whatever the umask; a result file gets what open() would give
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    """JSON with NaN/inf refused (allow_nan=False): a non-finite result is an error, not a file."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npz(path: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())


def atomic_save_figure(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def gunzip(raw: bytes, path: str) -> bytes:
    """The decompressed bytes of gzip file `path`; ValueError naming it when it is damaged."""
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: damaged gzip file ({type(err).__name__}: {err or 'truncated'})") from err


def read_json(path: str) -> Any:
    """The JSON value in `path`; ValueError naming the file and position when it does not parse."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def read_params(path: str, template: Any) -> Any:
    """A flax msgpack file restored onto `template`: ValueError naming the file when it does not
    parse or when its arrays differ from the template's structure or shapes (from_bytes alone
    accepts any shapes, and the model then fails later inside flax)."""
    with open(path, "rb") as f:
        return params_from_bytes(f.read(), template, path)


def params_from_bytes(raw: bytes, template: Any, path: str) -> Any:
    """read_params' check on bytes already read (e.g. decompressed) from file `path`."""
    try:
        params = flax.serialization.from_bytes(template, raw)
    except Exception as err:  # msgpack raises several unrelated types for damaged bytes
        raise ValueError(f"{path}: not a parameter file of this network ({type(err).__name__}: {err})") from err
    expected = jax.tree_util.tree_flatten_with_path(template)[0]
    got = jax.tree.leaves(params)
    for (key_path, want), have in zip(expected, got):
        if np.shape(want) != np.shape(have):
            raise ValueError(f"{path}: {jax.tree_util.keystr(key_path)} has shape {np.shape(have)}, the network "
                             f"its config describes needs {np.shape(want)} (parameters of another architecture)")
    return params
