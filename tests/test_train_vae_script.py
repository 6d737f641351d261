"""End-to-end run of experiments/train_vae.py with a tiny config."""
import json
import os

import pytest

from experiments import train_vae
from vi_jax.metrics import read_metrics

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
        "elbo_curve.png", "interpolation.png", "manifold.png", "metrics.json", "metrics.jsonl", "params.msgpack",
        "prior_samples.png", "reconstructions.png"]
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


def test_bad_dataset_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        run_script(tmp_path / "bad", "--dataset", "cifar")
    assert not os.path.exists(tmp_path / "bad" / "metrics.json")
