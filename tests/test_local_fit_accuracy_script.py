"""End-to-end run of experiments/local_fit_accuracy.py --quick: files, schema, and the shortfalls
against the oracles' exact q*_FFG (a fit can never beat the optimum)."""
import json
import os

import pytest

from experiments import local_fit_accuracy
from vi_jax.local import LOCAL_FIT_PROTOCOLS

FILES = ["MANIFEST.json", "local_fit_accuracy.json", "local_fit_accuracy.md", "local_fit_accuracy.png"]


@pytest.mark.slow
def test_local_fit_accuracy_quick_end_to_end(tmp_path, capsys):
    local_fit_accuracy.main(["--workdir", str(tmp_path), "--quick", "--no-progress"])
    assert "| linear_gaussian_d4 (n = 5) | reference | encoder |" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == FILES
    with open(tmp_path / "local_fit_accuracy.json") as f:
        result = json.load(f)
    assert list(result["problems"]) == ["linear_gaussian_d4", "vae_digits_2d"]
    assert list(result["protocols"]) == list(LOCAL_FIT_PROTOCOLS) + list(local_fit_accuracy.CANDIDATES)
    for name, protocol in result["protocols"].items():  # --quick caps the steps: no longer the named settings
        assert protocol["name"] == ("custom" if name in LOCAL_FIT_PROTOCOLS else "candidate"), name
        assert protocol["settings"]["max_steps"] == 2000
        assert protocol["estimator"] == ("stl" if name in local_fit_accuracy.CANDIDATES else "reparam")
    for problem, p in result["problems"].items():
        for name, by_start in p["fits"].items():
            assert list(by_start) == ["encoder", "prior"]
            for start, r in by_start.items():
                where = (problem, name, start)
                # L(q*) is the maximum: exact for the linear oracle, within the quadrature's error for the VAE
                assert r["min"] >= -1e-6 - r["shortfall_error_max"], where
                assert r["min"] <= r["mean"] <= r["p90"] <= r["max"], where
                assert r["max"] < r["before_fit_max"], where  # every fit moved toward q*
                samples = result["protocols"][name]["settings"]["num_samples"]
                assert r["median_steps"] * samples <= r["max_steps"] * samples <= 2000 * samples, where
                assert 0.0 <= r["converged_share"] <= 1.0 and r["seconds"] > 0, where
    # the 100-draw authors' protocol from the encoder gets closer than the 1-draw reference
    d4 = result["problems"]["linear_gaussian_d4"]["fits"]
    assert d4["authors"]["encoder"]["mean"] < d4["reference"]["encoder"]["mean"]


def test_bad_config_is_refused_before_any_compute(tmp_path):
    with pytest.raises(ValueError, match="protocols must be a non-empty subset of"):
        local_fit_accuracy.main(["--workdir", str(tmp_path), "--set", "protocols=fast"])
    with pytest.raises(ValueError, match="LocalFitAccuracyConfig.linear_rows must be an integer >= 1, got 0"):
        local_fit_accuracy.main(["--workdir", str(tmp_path), "--set", "linear_rows=0"])
    with pytest.raises(ValueError, match="linear_data_dims"):
        local_fit_accuracy.main(["--workdir", str(tmp_path), "--set", "linear_latent_dims=4,8,16"])
    assert not os.listdir(tmp_path)
