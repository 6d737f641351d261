"""Reproduction artifacts (vi_jax.artifacts, experiments.reproduce --publish/--verify/--table):
a tiny reproduction on the digits data is published once, then verified, damaged and mixed."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments import reproduce
from vi_jax import artifacts, storage

TINY = ["--epochs-scale", "0.001", "--num-train", "200", "--num-test", "60", "--num-valid", "40",
        "--no-progress", "--set", "dataset=digits", "--set", "latent_dim=2", "--set", "encoder_hidden=16",
        "--set", "decoder_hidden=16", "--set", "final_iwae_samples=20", "--set", "eval_elbo_samples=5",
        "--set", "eval_iwae_samples=5"]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A published tiny iwae_k1 reproduction (tests/test_reproduce_script.py publishes one with
    gap runs)."""
    root = tmp_path_factory.mktemp("artifact")
    workdir = root / "run"
    reproduce.main(["--preset", "iwae_k1", "--workdir", str(workdir)] + TINY)
    dest = root / "results" / "tiny"
    reproduce.main(["--publish", str(workdir), "--to", str(dest)])
    return dest, workdir


def copy_of(artifact, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(artifact[0], dest)
    return dest


def test_verify_passes_every_check_and_figures_are_the_arrays_means(artifact, capsys):
    dest, workdir = artifact
    assert reproduce.verify(str(dest), data_dir=None, fresh_points=100, fresh_seed=1)
    out = capsys.readouterr().out
    assert "FAIL" not in out and "PASS  config" in out and "PASS  test_log_px (fresh key, 100 random" in out
    figures = {f["name"]: f for f in json.load(open(dest / artifacts.INFO_FILE))["figures"]}
    metrics = json.load(open(workdir / "metrics.json"))
    for name in ("test_log_px", "test_elbo", "train_elbo"):
        assert (figures[name]["mean"], figures[name]["stderr"]) == (metrics[name]["mean"], metrics[name]["stderr"])
    test_iwae = np.load(workdir / "evaluation.npz")["test_iwae"]
    assert len(test_iwae) == 60 and figures["test_log_px"]["mean"] == pytest.approx(test_iwae.mean())
    assert os.stat(dest / artifacts.PARAMS_FILE).st_size < artifacts.MAX_ARTIFACT_BYTES


def test_table_lists_every_figure(artifact):
    dest, _ = artifact
    table = artifacts.figures_table([str(dest)])
    info = json.load(open(dest / artifacts.INFO_FILE))
    assert len(table.splitlines()) == 2 + len(info["figures"])
    assert f"| test_log_px | {info['figures'][0]['mean']:.2f} ± " in table


def _flip_a_byte(path):
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 1
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("damage,message", [
    ("missing params", "params.msgpack.gz: missing"),
    ("flipped byte in an npz", "evaluation.npz: damaged"),
    ("extra file", "stray.npz: not in MANIFEST.json"),
    ("no manifest", "MANIFEST.json: missing"),
    ("manifest not json", "MANIFEST.json: not valid JSON"),
])
def test_a_damaged_or_mixed_artifact_is_refused_naming_the_file(artifact, tmp_path, damage, message):
    dest = copy_of(artifact, tmp_path)
    if damage == "missing params":
        os.remove(dest / artifacts.PARAMS_FILE)
    elif damage == "flipped byte in an npz":
        _flip_a_byte(dest / "evaluation.npz")
    elif damage == "extra file":
        shutil.copyfile(dest / "evaluation.npz", dest / "stray.npz")
    elif damage == "no manifest":
        os.remove(dest / artifacts.MANIFEST_FILE)
    else:
        open(dest / artifacts.MANIFEST_FILE, "w").write("{not json")
    with pytest.raises(artifacts.ArtifactError, match=message):
        reproduce.verify(str(dest), data_dir=None, fresh_points=10, fresh_seed=1)


def _rewrite_info(dest, change):
    info = json.load(open(dest / artifacts.INFO_FILE))
    change(info)
    storage.atomic_write_json(str(dest / artifacts.INFO_FILE), info)
    artifacts._write_manifest(str(dest))  # intact files, stale content: what an older version wrote


def test_an_artifact_whose_config_the_code_no_longer_builds_fails_its_config_check(artifact, tmp_path, capsys):
    dest = copy_of(artifact, tmp_path)
    _rewrite_info(dest, lambda info: info["vae_config"].update(adam_eps=1e-8))
    assert not reproduce.verify(str(dest), data_dir=None, fresh_points=10, fresh_seed=1)
    assert "FAIL  config: differs from the code: adam_eps artifact 1e-08, code 0.0001" in capsys.readouterr().out


def test_an_artifact_with_an_unknown_config_field_is_refused(artifact, tmp_path):
    dest = copy_of(artifact, tmp_path)
    _rewrite_info(dest, lambda info: info["vae_config"].update(warmup_kind="entropy"))
    with pytest.raises(artifacts.ArtifactError, match="artifact.json: its vae_config does not fit this code"):
        reproduce.verify(str(dest), data_dir=None, fresh_points=10, fresh_seed=1)


def test_a_figure_that_is_not_its_arrays_mean_fails(artifact, tmp_path, capsys):
    dest = copy_of(artifact, tmp_path)
    _rewrite_info(dest, lambda info: info["figures"][1].update(mean=info["figures"][1]["mean"] + 1e-9))
    assert not reproduce.verify(str(dest), data_dir=None, fresh_points=10, fresh_seed=1)
    assert "FAIL  test_elbo" in capsys.readouterr().out


def test_publishing_over_an_artifact_is_refused_and_leaves_no_staging(artifact):
    dest, workdir = artifact
    with pytest.raises(artifacts.ArtifactError, match="already exists"):
        reproduce.main(["--publish", str(workdir), "--to", str(dest)])
    assert [p for p in os.listdir(dest.parent) if p.startswith(".staging")] == []


RESULTS = Path(__file__).parents[1] / "results"
PUBLISHED = sorted(p for p in RESULTS.iterdir() if (p / artifacts.MANIFEST_FILE).exists()) if RESULTS.is_dir() else []


@pytest.mark.slow
@pytest.mark.parametrize("published", PUBLISHED or [None], ids=lambda p: p.name if p else "none")
def test_every_published_artifact_verifies(published, capsys):
    """Every artifact in results/ (the evidence behind REPRODUCTION.md): its files intact, its
    config what today's preset builds, every figure its arrays' mean, and a fresh-key test log
    p(x) on 100 random test points within 4 standard errors. Needs the real data."""
    if published is None:
        pytest.skip(f"no published artifact in {RESULTS}")
    data_dir = os.environ.get("VI_JAX_DATA_DIR") or str(Path(__file__).parents[2] / "shared" / "data")
    if not os.path.isdir(os.path.join(data_dir, "binarized_mnist")):
        pytest.skip(f"the real data is not in {data_dir}; set VI_JAX_DATA_DIR to verify {published.name}")
    ok = reproduce.verify(str(published), data_dir=data_dir, fresh_points=100, fresh_seed=1)
    assert ok, capsys.readouterr().out
    # REPRODUCTION.md quotes the artifact's figures as --table prints them
    table = artifacts.figures_table([str(published)])
    reproduction = (Path(__file__).parents[1] / "REPRODUCTION.md").read_text()
    missing = [line for line in table.splitlines()[2:] if line not in reproduction]
    assert not missing, f"REPRODUCTION.md lacks these rows of {published.name}'s table: {missing[:3]}"
