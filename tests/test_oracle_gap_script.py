"""End-to-end run of experiments/oracle_gap.py --quick: files, schema, every estimate against
its exact value, and bit-identical numbers when rerun with the same seed."""
import json
import os

import numpy as np
import pytest
from scipy import stats

from experiments import oracle_gap
from vi_jax.metrics import read_metrics

FILES = ["MANIFEST.json", "manifold.png", "metrics_linear_encoder.jsonl", "metrics_restricted_encoder.jsonl",
         "metrics_vae.jsonl", "oracle.json", "oracle.md", "oracle.npz", "posteriors.png"]
MODELS = ["linear_gaussian/linear_encoder", "linear_gaussian/restricted_encoder", "vae_digits_2d"]

# Bias allowances (nats) on top of 4 standard errors of the mean difference, for the --quick
# protocol. IWAE_500 with a fitted q* proposal is biased low by O(1/K); on these oracles it is
# within 0.005 nats of log p(x) on average, allowance 0.05. The quick local fit (Adam 3e-3,
# stops after 5 checks of 20 steps without improvement) ends 0.02-0.05 nats short of q*_FFG on
# average here, allowance 0.1; the gaps inherit the allowances of the terms they subtract.
# L[q_phi] is an unbiased Monte-Carlo average: no allowance.
ALLOWANCE = {"log_px": 0.05, "elbo_amortized": 0.0, "elbo_local_ffg": 0.1,
             "approximation_gap_ffg": 0.15, "amortization_gap_ffg": 0.1}


def run(workdir, *extra):
    oracle_gap.main(["--workdir", str(workdir), "--quick", "--no-progress"] + list(extra))
    with open(os.path.join(workdir, "oracle.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_oracle_gap_quick_end_to_end(tmp_path, capsys):
    result = run(tmp_path / "a")
    assert "| log p(x) |" in capsys.readouterr().out  # the table is printed
    assert sorted(os.listdir(tmp_path / "a")) == FILES
    epochs = [line["epoch"] for line in read_metrics(tmp_path / "a" / "metrics_restricted_encoder.jsonl")]
    assert epochs == list(range(1, result["config"]["linear"]["encoder_epochs"] + 1))
    assert list(result["models"]) == MODELS
    assert result["seed"] == 0 and result["environment"]["versions"]["jax"]
    assert result["config"]["protocol"]["iwae_samples"] == 500
    assert result["wall_seconds"]["total"] > 0
    for name in MODELS:
        section = result["models"][name]
        assert section["n"] == (20 if name == "vae_digits_2d" else 100)
        assert list(section["rows"]) == [q for q, _ in oracle_gap.QUANTITIES]
        for quantity, row in section["rows"].items():
            assert set(row) == {"exact", "estimate", "difference", "stderr", "z"}
            assert row["difference"] == pytest.approx(row["estimate"] - row["exact"], abs=1e-9)
            bound = 4 * row["stderr"] + ALLOWANCE[quantity]
            assert abs(row["difference"]) <= bound, (name, quantity, row)
        rows = section["rows"]  # exact decomposition: inference gap = approximation + amortization
        assert rows["approximation_gap_ffg"]["exact"] + rows["amortization_gap_ffg"]["exact"] == pytest.approx(
            rows["log_px"]["exact"] - rows["elbo_amortized"]["exact"], abs=1e-9)
    linear = result["models"]["linear_gaussian/linear_encoder"]
    assert linear["rows"]["amortization_gap_ffg"]["exact"] < 0.05  # trained linear encoder: gap ~0
    restricted = result["models"]["linear_gaussian/restricted_encoder"]
    assert restricted["rows"]["amortization_gap_ffg"]["exact"] == pytest.approx(
        restricted["notes"]["best_amortization_gap_of_this_encoder_class"], abs=0.05)
    accuracy = result["models"]["vae_digits_2d"]["quadrature_accuracy"]
    assert accuracy["log_px_max_abs_vs_brute_force_grid"] < 1e-2

    # oracle.npz recomputes the linear model's exact log p(x) independently of vi_jax
    saved = np.load(tmp_path / "a" / "oracle.npz")
    W, b, psi, x = saved["linear/W"], saved["linear/b"], saved["linear/psi"], saved["linear/x"]
    direct = stats.multivariate_normal(b.astype(np.float64), W.astype(np.float64) @ W.T + np.diag(psi)).logpdf(x)
    np.testing.assert_allclose(direct, saved["linear/exact_log_px"], rtol=0, atol=1e-8)
    assert np.mean(direct) == pytest.approx(linear["rows"]["log_px"]["exact"], abs=1e-8)
    assert saved["vae/x"].shape == (20, 64) and "vae/decoder/params/Dense_0/kernel" in saved.files

    again = run(tmp_path / "b")
    assert again["models"] == result["models"]
