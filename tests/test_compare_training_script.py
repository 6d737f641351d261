"""End-to-end run of experiments/compare_training.py in a tiny configuration."""
import json
import os

import pytest

from experiments import compare_training


@pytest.mark.slow
def test_compare_training_tiny(tmp_path):
    compare_training.main(["--workdir", str(tmp_path), "--quick", "--no-progress", "--set", "vae.num_epochs=3",
                           "--set", "n_eval=10", "--set", "protocol.iwae_samples=50"])
    with open(tmp_path / "compare.json") as f:
        result = json.load(f)
    assert list(result["modes"]) == ["amortized", "non_amortized", "semi_amortized"]
    for mode, by_split in result["modes"].items():
        for split, r in by_split["splits"].items():
            assert r["n_eval"] == 10
            assert r["approximation_gap_ffg"]["mean"] > -4 * r["approximation_gap_ffg"]["stderr"]
            has_q = mode != "non_amortized" or split == "train"
            assert ("elbo_amortized" in r) == has_q and ("amortization_gap_ffg" in r) == has_q
            assert r["local_init"] == ("encoder" if has_q else "prior")
    assert os.path.exists(tmp_path / "compare.md")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".npz")]) == 6
    for mode in result["modes"]:
        assert os.path.getsize(tmp_path / f"metrics_{mode}.jsonl") > 0
