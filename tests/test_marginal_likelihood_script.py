"""End-to-end run of experiments/marginal_likelihood.py in a tiny configuration."""
import json
import os

import numpy as np
import pytest
from scipy import stats

from experiments import marginal_likelihood

FILES = ["MANIFEST.json", "error_vs_dim.png", "marginal_likelihood.json", "marginal_likelihood.md", "marginal_likelihood.npz"]


@pytest.mark.slow
def test_marginal_likelihood_tiny_end_to_end(tmp_path, capsys):
    marginal_likelihood.main(["--workdir", str(tmp_path), "--quick", "--no-progress", "--set", "latent_dims=3",
                              "--set", "ais.num_steps=10"])
    assert "| d | exact log p(x) |" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == FILES
    with open(tmp_path / "marginal_likelihood.json") as f:
        result = json.load(f)
    assert result["seed"] == 0 and result["environment"]["versions"]["jax"] and result["wall_seconds"]["total"] > 0
    assert result["likelihood_evaluations"] == (8 + 4) * (1 + 9 * 11)
    row = result["dims"]["3"]
    assert set(row["methods"]) == set(marginal_likelihood.METHODS)
    saved = np.load(tmp_path / "marginal_likelihood.npz")
    # the exact log p(x) = log N(x; b, W W^T + diag(psi)), recomputed independently of vi_jax
    W, b, psi = (saved[f"d3/{k}"].astype(np.float64) for k in ("W", "b", "log_psi"))
    direct = stats.multivariate_normal(b, W @ W.T + np.diag(np.exp(psi))).logpdf(saved["d3/x"])
    np.testing.assert_allclose(saved["d3/exact"], direct, rtol=0, atol=1e-8)
    assert saved["d3/x"].shape == (5, 6)
    for method in marginal_likelihood.METHODS:
        error = saved[f"d3/{method}"] - saved["d3/exact"]
        assert row["methods"][method]["mean_error"] == pytest.approx(error.mean(), abs=1e-9)
    # IWAE with the near-exact q* is accurate to its standard error (and float32 rounding)
    iwae = row["methods"]["iwae_qstar"]
    assert abs(iwae["mean_error"]) <= 4 * iwae["stderr_of_mean_error"] + 1e-3
