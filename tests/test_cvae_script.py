"""End-to-end run of experiments/cvae.py with --quick."""
import json
import os

import pytest

from experiments import cvae


@pytest.mark.slow
def test_cvae_quick_run_writes_results(tmp_path):
    cvae.main(["--workdir", str(tmp_path), "--quick", "--no-progress"])
    assert sorted(os.listdir(tmp_path)) == ["MANIFEST.json", "class_samples.png", "metrics.json"]
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        metrics = json.load(f)
    for name in ("test_elbo", "test_iwae", "train_elbo"):
        assert set(metrics[name]) >= {"mean", "stderr"}
    assert metrics["test_iwae"]["k"] == 20 and metrics["n_test"] == 300
    assert metrics["seed"] == 0 and metrics["config"]["latent_dim"] == 2
    assert metrics["environment"]["versions"]["jax"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["test_iwae"]["mean"] > metrics["test_elbo"]["mean"]


def test_labels_outside_num_classes_fail_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        cvae.main(["--workdir", str(tmp_path), "--set", "num_classes=5"])
    assert not os.path.exists(tmp_path / "metrics.json")
