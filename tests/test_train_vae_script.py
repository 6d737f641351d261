"""End-to-end run of experiments/train_vae.py with a tiny config."""
import json
import os
import re
import shutil

import pytest

from experiments import train_vae
from experiments import workdir as workdir_cli
from vi_jax.metrics import read_metrics
from vi_jax import storage
from vi_jax.rundir import RunDirError
from vi_jax.vae import load_trained_vae

TINY = ["latent_dim=2", "encoder_hidden=16", "decoder_hidden=16", "num_epochs=2", "eval_every=1",
        "eval_elbo_samples=5", "eval_iwae_samples=5", "final_iwae_samples=20", "batch_size=100"]


def run_script(workdir, *extra):
    argv = ["--workdir", str(workdir), "--no-progress"]
    for assignment in TINY:
        argv += ["--set", assignment]
    train_vae.main(argv + list(extra))
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_train_vae_writes_results_and_reproduces(tmp_path):
    metrics = run_script(tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a")) == [
        "MANIFEST.json", "elbo_curve.png", "evaluation.npz", "interpolation.png", "manifold.png", "metrics.json",
        "metrics.jsonl", "params.msgpack", "prior_samples.png", "reconstructions.png"]
    for name in ("test_elbo", "test_iwae", "train_elbo"):
        assert set(metrics[name]) >= {"mean", "stderr"}
    assert metrics["test_iwae"]["k"] == 20
    assert metrics["seed"] == 0 and metrics["config"]["latent_dim"] == 2
    assert metrics["environment"]["versions"]["jax"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    # the live metrics file holds each epoch's train line and evaluation line, with the history's numbers
    lines = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [(line["kind"], line["epoch"]) for line in lines] == [("train", 1), ("eval", 1), ("train", 2), ("eval", 2)]
    assert [line["train_elbo"] for line in lines[::2]] == [h["train_elbo"] for h in metrics["history"]]
    assert [line["eval_iwae_5"] for line in lines[1::2]] == [h["eval_iwae_5"] for h in metrics["history"]]
    # IWAE_20 >= ELBO on the same test set, beyond the standard errors
    assert metrics["test_iwae"]["mean"] > metrics["test_elbo"]["mean"]
    again = run_script(tmp_path / "b")
    for name in ("test_elbo", "test_iwae", "train_elbo", "history"):
        assert again[name] == metrics[name]
    other = run_script(tmp_path / "c", "--seed", "1")
    assert other["test_elbo"] != metrics["test_elbo"]


def test_quick_is_a_small_valid_configuration():
    """--quick (the train_vae result benchmark's quick variant) parses to a small config that validates."""
    config, _, _ = train_vae.CLI.parse(["--quick", "--workdir", "w"])
    config.validate()
    assert config.num_epochs == 2 and config.final_iwae_samples == 20 and config.encoder_hidden == (16,)


def test_bad_dataset_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="VAEConfig.dataset must be one of .*, got 'cifar'"):
        run_script(tmp_path / "bad", "--dataset", "cifar")
    assert not os.path.exists(tmp_path / "bad" / "metrics.json")


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Two finished runs (seeds 0 and 1) with checkpoints, to copy and tamper with."""
    root = tmp_path_factory.mktemp("finished")
    for seed in (0, 1):
        run_script(root / str(seed), "--seed", str(seed), "--set", "checkpoint_every=1")
    return root


def copy_of(finished_runs, tmp_path, seed=0):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_runs / str(seed), workdir)
    return workdir


def test_a_crash_while_writing_leaves_nothing_inconsistent(finished_runs, tmp_path, monkeypatch):
    """The issue's case: a later run that dies after writing params.msgpack but before
    metrics.json. Its files never mix with the earlier run's: resuming keeps the earlier run
    loadable, overwriting leaves no loadable run at all."""
    workdir = copy_of(finished_runs, tmp_path)
    write_json = storage.atomic_write_json

    def dies_at_metrics(path, obj):
        if os.path.basename(path) == "metrics.json":
            raise KeyboardInterrupt("killed")
        write_json(path, obj)

    monkeypatch.setattr(storage, "atomic_write_json", dies_at_metrics)
    with pytest.raises(KeyboardInterrupt):
        train_vae.main(["--workdir", workdir, "--no-progress", "--resume"] + sum((["--set", a] for a in TINY), []))
    assert load_trained_vae(workdir)[0].seed == 0
    with pytest.raises(KeyboardInterrupt):
        run_script(workdir, "--overwrite", "--seed", "5")
    assert not any(name.startswith(".staging") or name == ".lock" for name in os.listdir(workdir))
    with pytest.raises(RunDirError, match="MANIFEST.json: missing"):
        load_trained_vae(workdir)


def flip_a_bit(path):
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 1
    open(path, "wb").write(bytes(raw))


MIXED = {
    "params_of_another_run": (lambda w, other: shutil.copy(os.path.join(other, "params.msgpack"), w),
                              r"params\.msgpack: damaged or replaced"),
    "bit_flip_in_params": (lambda w, other: flip_a_bit(os.path.join(w, "params.msgpack")),
                           r"params\.msgpack: damaged or replaced"),
    "picture_of_another_run": (lambda w, other: shutil.copy(os.path.join(other, "manifold.png"),
                                                            os.path.join(w, "old_manifold.png")),
                               r"old_manifold\.png: not in MANIFEST\.json"),
    "unfinished": (lambda w, other: os.unlink(os.path.join(w, "MANIFEST.json")), r"MANIFEST\.json: missing"),
}


@pytest.mark.parametrize("case", sorted(MIXED))
def test_loader_refuses_a_mixed_or_damaged_set_naming_the_file(finished_runs, tmp_path, case):
    workdir = copy_of(finished_runs, tmp_path)
    tamper, message = MIXED[case]
    tamper(workdir, str(finished_runs / "1"))
    with pytest.raises(RunDirError, match=message):
        load_trained_vae(workdir)


def test_an_older_versions_finished_workdir_is_adopted_after_checking(finished_runs, tmp_path, capsys):
    workdir = copy_of(finished_runs, tmp_path)
    os.unlink(os.path.join(workdir, "MANIFEST.json"))  # as an older version leaves it
    with pytest.raises(RunDirError, match=r"python -m experiments\.workdir adopt"):
        load_trained_vae(workdir)
    workdir_cli.main(["adopt", workdir])
    assert "adopted run, 8 files verified" in capsys.readouterr().out
    assert load_trained_vae(workdir)[0].seed == 0


LEGACY_MIXED = {
    "params_of_another_run": (lambda w, other: shutil.copy(os.path.join(other, "params.msgpack"), w),
                              r"params\.msgpack: newer than .*metrics\.json"),
    "params_of_another_run_older": (
        lambda w, other: (shutil.copy(os.path.join(other, "params.msgpack"), w),
                          os.utime(os.path.join(w, "metrics.json"))),
        r"params\.msgpack: differs from the final checkpoint .*checkpoints/2"),
    "training_not_finished": (lambda w, other: shutil.rmtree(os.path.join(w, "checkpoints", "2")),
                              r"checkpoints/1: the newest checkpoint is not of the final epoch 2"),
}


@pytest.mark.parametrize("case", sorted(LEGACY_MIXED))
def test_adopt_refuses_an_older_versions_mixed_workdir(finished_runs, tmp_path, capsys, case):
    workdir = copy_of(finished_runs, tmp_path)
    os.unlink(os.path.join(workdir, "MANIFEST.json"))
    tamper, message = LEGACY_MIXED[case]
    tamper(workdir, str(finished_runs / "1"))
    with pytest.raises(SystemExit):
        workdir_cli.main(["adopt", workdir])
    assert re.search(message, capsys.readouterr().err)
    assert not os.path.exists(os.path.join(workdir, "MANIFEST.json"))
