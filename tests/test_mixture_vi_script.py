"""End-to-end run of experiments/mixture_vi.py with --quick."""
import json
import os
import re

import pytest

from experiments import mixture_vi


@pytest.mark.slow
def test_mixture_vi_quick_run(tmp_path):
    mixture_vi.main(["--workdir", str(tmp_path), "--quick", "--set", "estimator=score_function"])
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["seed"] == 0 and metrics["config"]["estimator"] == "score_function"
    assert metrics["environment"]["versions"]["jax"]
    for method in mixture_vi.METHODS:
        m = metrics[method]
        # the tightness identity on the reported means, and the refit reaching the posterior
        assert abs(m["train_log_px"]["mean"] - m["train_elbo"]["mean"] - m["train_kl_to_posterior"]["mean"]) < 1e-4
        assert m["train_kl_to_posterior_refit"]["mean"] < 1e-4 < m["train_kl_to_posterior"]["mean"]


def test_bad_option_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match=re.escape("MixtureConfig.estimator must be one of ('enumeration', 'score_function'), got 'exact'")):
        mixture_vi.main(["--workdir", str(tmp_path), "--set", "estimator=exact"])
    with pytest.raises(ValueError, match="num_samples >= 2"):
        mixture_vi.main(["--workdir", str(tmp_path), "--set", "estimator=score_function", "--set", "num_samples=1"])
    assert not os.path.exists(tmp_path / "metrics.json")
