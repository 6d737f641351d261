"""End-to-end run of experiments/estimator_variance.py in a tiny configuration: files, schema,
unbiased means, and the score function's larger variance."""
import json
import os

import numpy as np
import pytest

from experiments import estimator_variance

FILES = ["MANIFEST.json", "estimator_variance.json", "estimator_variance.md", "metrics.jsonl", "variance_vs_samples.png"]
# two estimators cover the script's plumbing (the reference and one compared with it); every
# estimator's unbiasedness against the closed form is tested in test_estimators.py
TINY = ["--quick", "--vae", "--no-progress", "--set", "estimators=reparam/analytic,score_function/mc",
        "--set", "num_samples=2,4", "--set", "vae.num_epochs=2"]


@pytest.mark.slow
def test_estimator_variance_tiny_end_to_end(tmp_path, capsys):
    estimator_variance.main(["--workdir", str(tmp_path)] + TINY)
    assert "| score_function/mc |" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == FILES
    with open(tmp_path / "estimator_variance.json") as f:
        result = json.load(f)
    assert result["seed"] == 0 and result["environment"]["versions"]["jax"] and result["wall_seconds"]["total"] > 0
    assert result["config"]["repetitions"] == 200
    assert list(result["settings"]) == ["linear_gaussian/prior", "linear_gaussian/q_star", "vae_digits"]
    for name, setting in result["settings"].items():
        rows = setting["rows"]
        assert [(r["estimator"], r["num_samples"]) for r in rows] == [
            (e, m) for m in (2, 4) for e in ("reparam", "score_function")]
        for r in rows:
            assert np.shape(r["mean"]) == (4, setting["params_per_datapoint"])
            assert r["total_variance"] > 0 and r["total_variance_stderr"] > 0
            # unbiased (the reference has no truth without an exact gradient); 4 SE over <= 64
            # coordinates: allow 5
            assert r["max_abs_z"] is None or r["max_abs_z"] < 5, (name, r)
            if r["estimator"] == "reparam":
                assert r["ratio_to_reference"] == 1.0
        cell = {(r["estimator"], r["num_samples"]): (r["total_variance"], r["total_variance_stderr"]) for r in rows}
        # M independent reparameterized draws: variance exactly proportional to 1/M
        (v2, se2), (v4, se4) = cell[("reparam", 2)], cell[("reparam", 4)]
        assert abs(v4 - v2 / 2) <= 4 * np.hypot(se4, se2 / 2), (name, cell)
    prior = result["settings"]["linear_gaussian/prior"]["rows"]
    cell = {(r["estimator"], r["num_samples"]): (r["total_variance"], r["total_variance_stderr"]) for r in prior}
    for m in (2, 4):  # the score function is noisier than the reparameterization, beyond 4 SE
        (v_sf, se_sf), (v_re, se_re) = cell[("score_function", m)], cell[("reparam", m)]
        assert v_sf - v_re > 4 * np.hypot(se_sf, se_re), cell
