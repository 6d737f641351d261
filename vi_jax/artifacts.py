"""Published run artifacts: the evidence behind the figures of REPRODUCTION.md (results/NAME).

An artifact is a folder holding
  artifact.json      what ran: name, preset, the VAEConfig, the run's options, provenance, and
                     `figures`: every published figure as {"name", "source", "mean", "stderr"}
  params.msgpack.gz  the trained encoder and decoder (flax msgpack, gzip-compressed)
  *.npz              the per-datapoint arrays the figures are means over
  MANIFEST.json      size and sha256 of every other file

A figure's source is "FILE.npz:ARRAY", the mean and standard error over datapoints of that
array, or "FILE.npz:A-B", those of the per-datapoint difference A - B (a paired standard
error). `verify` checks the manifest and that the config still matches the code, recomputes
every figure from the arrays exactly (the arithmetic of `vi_jax.stats.mean_and_stderr`), and
re-estimates the test log-likelihood with a fresh key on a random subset of the test split.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import tempfile
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax import data, rundir, storage
from vi_jax.config import from_dict
from vi_jax.stats import mean_and_stderr
from vi_jax.vae import VAEConfig, build_vae, load_training_data, make_evaluator

INFO_FILE = "artifact.json"
MANIFEST_FILE = "MANIFEST.json"
PARAMS_FILE = "params.msgpack.gz"
TEST_LOG_PX = "test_log_px"  # the figure the fresh-key re-estimate is compared with
MAX_ARTIFACT_BYTES = 5 * 2 ** 20
FRESH_TOLERANCE_STDERRS = 4.0


class ArtifactError(ValueError):
    """A missing, damaged, mixed or stale artifact; the message starts with the file's path."""


class Check(NamedTuple):
    name: str
    ok: bool
    detail: str


def read_json(path: str) -> dict:
    """storage.read_json, its errors as ArtifactError."""
    try:
        return storage.read_json(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except ValueError as err:
        raise ArtifactError(str(err)) from None


def compute_figure(directory: str, source: str) -> dict:
    """{"mean", "stderr"} of the figure `source` ("FILE.npz:ARRAY" or "FILE.npz:A-B") over the
    arrays in `directory`."""
    file_name, _, expression = source.partition(":")
    path = os.path.join(directory, file_name)
    names = expression.split("-")
    if not file_name.endswith(".npz") or not expression or len(names) > 2:
        raise ArtifactError(f"{source!r}: a figure's source is 'FILE.npz:ARRAY' or 'FILE.npz:A-B'")
    try:
        with np.load(path) as arrays:
            values = [np.asarray(arrays[name], np.float64) for name in names]
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing") from None
    except KeyError as err:
        raise ArtifactError(f"{path}: has no array {err}") from None
    except (ValueError, OSError) as err:  # zipfile.BadZipFile is an OSError
        raise ArtifactError(f"{path}: not a readable npz file ({err})") from None
    return mean_and_stderr(values[0] if len(values) == 1 else values[0] - values[1])


def publish(dest: str, *, name: str, vae_config: VAEConfig, params_path: str, arrays: dict[str, str],
            figures: list[tuple[str, str]], info: dict, data_dim: int) -> dict:
    """Write the artifact `dest` from a finished run: `arrays` maps each artifact file name
    (FILE.npz) to the run file it copies, `figures` lists (name, source). Built in a staging
    folder beside dest and renamed into place, so dest is either absent or complete; an
    existing dest is refused. Returns the artifact's info."""
    if os.path.exists(dest):
        raise ArtifactError(f"{dest}: already exists; remove it to publish again")
    for path in (params_path, *arrays.values()):
        if not os.path.isfile(path):
            raise ArtifactError(f"{path}: missing")
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".staging-{os.path.basename(dest)}-")
    try:
        with open(params_path, "rb") as f:
            storage.atomic_write_bytes(os.path.join(staging, PARAMS_FILE), gzip.compress(f.read(), mtime=0))
        for file_name, source in arrays.items():
            shutil.copyfile(source, os.path.join(staging, file_name))
        computed = [{"name": n, "source": s, **compute_figure(staging, s)} for n, s in figures]
        record = {"name": name, **info, "data_dim": int(data_dim),
                  "vae_config": dataclasses.asdict(vae_config), "figures": computed}
        storage.atomic_write_json(os.path.join(staging, INFO_FILE), record)
        _write_manifest(staging)
        size = sum(os.path.getsize(os.path.join(staging, f)) for f in os.listdir(staging))
        if size > MAX_ARTIFACT_BYTES:
            raise ArtifactError(f"{dest}: {size / 2**20:.1f} MiB is over the {MAX_ARTIFACT_BYTES / 2**20:.0f} MiB "
                                "an artifact may take")
        os.chmod(staging, 0o777 & ~_umask())
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_manifest(directory: str) -> None:
    files = sorted(f for f in os.listdir(directory) if f != MANIFEST_FILE)
    manifest = {f: {"bytes": os.path.getsize(os.path.join(directory, f)), "sha256": rundir.file_sha256(os.path.join(directory, f))}
                for f in files}
    storage.atomic_write_json(os.path.join(directory, MANIFEST_FILE), manifest)


def check_manifest(directory: str) -> None:
    """ArtifactError naming the first file that is missing, extra, or of another size or sha256."""
    manifest = read_json(os.path.join(directory, MANIFEST_FILE))
    present = set(os.listdir(directory)) - {MANIFEST_FILE}
    for extra in sorted(present - set(manifest)):
        raise ArtifactError(f"{os.path.join(directory, extra)}: not in {MANIFEST_FILE} (a mixed set)")
    for file_name, expected in manifest.items():
        path = os.path.join(directory, file_name)
        if file_name not in present:
            raise ArtifactError(f"{path}: missing")
        if os.path.getsize(path) != expected["bytes"] or rundir.file_sha256(path) != expected["sha256"]:
            raise ArtifactError(f"{path}: damaged (size or sha256 differs from {MANIFEST_FILE})")


def load(directory: str) -> tuple[dict, VAEConfig, object, dict]:
    """(info, config, vae, params) of a verified-intact artifact."""
    check_manifest(directory)
    info = read_json(os.path.join(directory, INFO_FILE))
    try:
        config = from_dict(VAEConfig, info["vae_config"])
        config.validate()
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{os.path.join(directory, INFO_FILE)}: its vae_config does not fit this code "
                            f"({err})") from None
    vae = build_vae(config, info["data_dim"])
    template = vae.algorithm.init(jax.random.PRNGKey(0), jnp.zeros(info["data_dim"])).params
    path = os.path.join(directory, PARAMS_FILE)
    try:
        with open(path, "rb") as f:
            params = storage.params_from_bytes(storage.gunzip(f.read(), path), template, path)
    except ValueError as err:
        raise ArtifactError(str(err)) from None
    return info, config, vae, params


def verify(directory: str, *, data_dir: Optional[str] = None, fresh_points: int = 500, fresh_seed: int = 1,
           expected_config: Optional[Callable[[dict], VAEConfig]] = None) -> list[Check]:
    """Every check of the artifact, one Check per figure (plus the config and the fresh-key
    test log-likelihood). Raises ArtifactError for a missing, damaged or mixed artifact.

    expected_config(info): the config today's code builds for this run (e.g. its preset); a
    difference fails the config check. The fresh estimate: IWAE with the run's
    final_iwae_samples on `fresh_points` test points drawn with PRNGKey(fresh_seed), passing
    when within FRESH_TOLERANCE_STDERRS of its own standard error of the published figure."""
    if fresh_points < 2:
        raise ValueError(f"fresh_points must be >= 2 (a standard error needs two points), got {fresh_points}")
    info, config, vae, params = load(directory)
    checks = []
    if expected_config is not None:
        expected = dataclasses.asdict(expected_config(info))
        differ = {k: (v, expected.get(k)) for k, v in info["vae_config"].items() if expected.get(k) != _plain(v)}
        detail = "matches the code" if not differ else "differs from the code: " + ", ".join(
            f"{k} artifact {a!r}, code {b!r}" for k, (a, b) in differ.items())
        checks.append(Check("config", not differ, detail))
    for figure in info["figures"]:
        again = compute_figure(directory, figure["source"])
        ok = again["mean"] == figure["mean"] and _same(again["stderr"], figure["stderr"])
        checks.append(Check(figure["name"], ok, f"{again['mean']:.4f} ± {again['stderr']:.4f} recomputed from "
                                                f"{figure['source']}, published {figure['mean']:.4f} ± "
                                                f"{figure['stderr']:.4f}"))
    published = {f["name"]: f for f in info["figures"]}.get(TEST_LOG_PX)
    if published is not None:
        _, _, test = load_training_data(config, data_dir)
        rows, fresh_test = data.subset(jax.random.PRNGKey(fresh_seed), test, fresh_points)
        bounds = make_evaluator(vae, config, config.final_iwae_samples).iwae(
            jax.random.fold_in(jax.random.PRNGKey(fresh_seed), 1), params, jnp.asarray(fresh_test)).bound
        fresh = mean_and_stderr(bounds)
        distance = abs(fresh["mean"] - published["mean"]) / fresh["stderr"]
        checks.append(Check(f"{TEST_LOG_PX} (fresh key, {len(rows)} random test points)",
                            distance <= FRESH_TOLERANCE_STDERRS,
                            f"{fresh['mean']:.3f} ± {fresh['stderr']:.3f} against {published['mean']:.3f}: "
                            f"{distance:.2f} standard errors (pass <= {FRESH_TOLERANCE_STDERRS:g})"))
    return checks


def _plain(value):
    """JSON's lists as the tuples dataclasses.asdict gives."""
    return tuple(value) if isinstance(value, list) else value


def _same(a: float, b: float) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))


def figures_table(directories: list[str]) -> str:
    """A Markdown table of every figure (rows) of the artifacts (columns), mean ± stderr."""
    infos = [read_json(os.path.join(d, INFO_FILE)) for d in directories]
    names = list(dict.fromkeys(f["name"] for info in infos for f in info["figures"]))
    cells = [{f["name"]: f"{f['mean']:.2f} ± {f['stderr']:.2f}" for f in info["figures"]} for info in infos]
    lines = ["| figure | " + " | ".join(f"`{info['name']}`" for info in infos) + " |",
             "| --- |" + " ---: |" * len(infos)]
    lines += [f"| {n} | " + " | ".join(c.get(n, "") for c in cells) + " |" for n in names]
    return "\n".join(lines) + "\n"
