"""End-to-end run of experiments/cvae.py with --quick."""
import json
import os
from pathlib import Path

import pytest

from experiments import cvae
from vi_jax import data
from vi_jax.cvae import CVAEConfig
from vi_jax.metrics import read_metrics


@pytest.mark.slow
def test_cvae_quick_run_writes_results(tmp_path):
    cvae.main(["--workdir", str(tmp_path), "--quick", "--no-progress"])
    assert sorted(os.listdir(tmp_path)) == ["MANIFEST.json", "class_samples.png", "metrics.json", "metrics.jsonl"]
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        metrics = json.load(f)
    for name in ("test_elbo", "test_iwae", "train_elbo"):
        assert set(metrics[name]) >= {"mean", "stderr"}
    assert metrics["test_iwae"]["k"] == 20 and metrics["n_test"] == 300
    assert metrics["seed"] == 0 and metrics["config"]["latent_dim"] == 2
    assert metrics["environment"]["versions"]["jax"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [{"epoch": line["epoch"], "train_elbo": line["train_elbo"]} for line in lines] == metrics["history"]
    assert metrics["test_iwae"]["mean"] > metrics["test_elbo"]["mean"]


def test_labels_outside_num_classes_fail_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        cvae.main(["--workdir", str(tmp_path), "--set", "num_classes=5"])
    assert not os.path.exists(tmp_path / "metrics.json")


def test_dataset_without_training_labels_is_named(tmp_path):
    data_dir = Path(os.environ.get(data.DATA_DIR_ENV) or Path(__file__).parents[2] / "shared" / "data")
    try:
        data.load_dataset("binarized_mnist", data_dir=str(data_dir))
    except FileNotFoundError as err:
        pytest.skip(f"real binarized MNIST not found ({err}); set {data.DATA_DIR_ENV} to run this test")
    with pytest.raises(ValueError, match="dataset 'binarized_mnist' has no train labels to condition on"):
        cvae.run(CVAEConfig(dataset="binarized_mnist", likelihood="bernoulli"), str(tmp_path), data_dir=str(data_dir))
    assert not os.listdir(tmp_path)
