"""End-to-end run of the main job, experiments/gap.py, in a small configuration."""
import json
import os

import numpy as np
import pytest

from experiments import gap

SMALL = ["--quick", "--no-progress", "--set", "vae.num_epochs=15", "--set", "n_eval=20",
         "--set", "protocol.iwae_samples=200", "--set", "protocol.refine_steps=0,2"]
FILES = ["gap.json", "gap.md", "gap_bars.png", "gap_test.npz", "gap_train.npz", "local_vs_amortized.png",
         "refinement.png", "vae_params.msgpack"]


def run(workdir, *extra):
    gap.main(["--workdir", str(workdir)] + SMALL + list(extra))
    with open(os.path.join(workdir, "gap.json")) as f:
        return json.load(f)


def numbers(result):
    return {split: {k: v for k, v in r.items()} for split, r in result["splits"].items()}


@pytest.mark.slow
def test_gap_quick_end_to_end(tmp_path):
    result = run(tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a")) == FILES
    for split in ("train", "test"):
        r = result["splits"][split]
        assert r["n_eval"] == 20
        for q in gap.QUANTITIES:
            assert set(r[q]) == {"mean", "stderr"}
        # the decomposition adds up exactly in the report
        for family in ("ffg", "flow"):
            total = r[f"approximation_gap_{family}"]["mean"] + r[f"amortization_gap_{family}"]["mean"]
            assert abs(r["inference_gap"]["mean"] - total) < 1e-6
        # log p(x) >= L[q*_FFG] >= L[q_phi], within combined standard errors (4 SE of the paired gaps)
        for g in ("approximation_gap_ffg", "amortization_gap_ffg", "approximation_gap_flow"):
            assert r[g]["mean"] > -4 * r[g]["stderr"], (split, g, r[g])
        assert r["semi_amortized"]["k"] == [0, 2]
        # per-datapoint arrays reproduce every mean
        arrays = np.load(tmp_path / "a" / f"gap_{split}.npz")
        np.testing.assert_allclose(arrays["log_px"].mean(), r["log_px"]["mean"], rtol=1e-6)
    assert result["seed"] == 0 and result["environment"]["versions"]["jax"]
    assert result["local_fit_protocol"] == "custom"  # --quick loosens the reference fit
    assert set(result["wall_seconds"]) >= {"vae", "total"}
    # same seed, identical numbers; a run of one split draws that split's keys as the full run does
    again = run(tmp_path / "b", "--set", "splits=test")
    assert numbers(again) == {"test": numbers(result)["test"]}
    with pytest.raises(ValueError, match="splits must be"):
        run(tmp_path / "c", "--set", "splits=valid")
