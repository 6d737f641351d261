"""End-to-end run of experiments/gap_over_training.py in its --quick configuration."""
import dataclasses
import json
import os

import numpy as np
import pytest

from experiments import gap_over_training
from vi_jax.config import apply_overrides
from vi_jax.metrics import read_metrics
from vi_jax.vae import build_vae, load_training_data, train_vae


@pytest.mark.slow
def test_gap_over_training_quick_end_to_end(tmp_path):
    gap_over_training.main(["--workdir", str(tmp_path), "--quick", "--no-progress"])
    assert sorted(os.listdir(tmp_path)) == ["MANIFEST.json", "gap_over_training.json", "gap_over_training.md",
                                            "gap_over_training.png", "metrics.jsonl"]
    with open(tmp_path / "gap_over_training.json") as f:
        result = json.load(f)
    assert result["epochs"] == [2, 4] and result["seed"] == 0
    assert result["environment"]["versions"]["jax"] and result["wall_seconds"]["total"] > 0
    for split in ("train", "test"):
        r = result["splits"][split]
        assert r["n_eval"] == 10 and len(r["rows"]) == 10
        for q in ("log_px", "elbo_amortized", "elbo_local_ffg", *gap_over_training.GAPS):
            assert len(r[q]["mean"]) == len(r[q]["stderr"]) == 2
        # inference = approximation + amortization, datapoint by datapoint, hence in the means
        total = np.add(r["approximation_gap_ffg"]["mean"], r["amortization_gap_ffg"]["mean"])
        np.testing.assert_allclose(r["inference_gap"]["mean"], total, atol=1e-5)
    # training in segments through checkpoints is the uninterrupted run: same per-epoch ELBOs
    config = apply_overrides(gap_over_training.GapOverTrainingConfig(), gap_over_training.QUICK)
    dataset, train, _ = load_training_data(config.vae)
    vae = build_vae(config.vae, dataset.dim, steps_per_epoch=len(train) // config.vae.batch_size)
    history = train_vae(vae, config.vae, train, progress=False).history
    assert result["history"] == history
    # each segment appended its epochs to the metrics file
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [{"epoch": line["epoch"], "train_elbo": line["train_elbo"]} for line in lines] == history


def test_checkpoint_epochs_end_at_the_last_epoch():
    assert gap_over_training.checkpoint_epochs(10, 4) == [4, 8, 10]
    assert gap_over_training.checkpoint_epochs(6, 3) == [3, 6]
    with pytest.raises(ValueError, match="GapOverTrainingConfig.every must be an integer >= 1"):
        dataclasses.replace(gap_over_training.GapOverTrainingConfig(), every=0).validate()
