"""End-to-end runs of experiments/reproduce.py at a tiny --epochs-scale on a slice of the data.

The presets' dataset is binarized MNIST; these runs use the embedded digits data (--set
dataset=digits) so that they run everywhere; the binarized-MNIST loader has its own tests."""
import json
import os

import pytest

from experiments import reproduce

TINY = ["--epochs-scale", "0.001", "--num-train", "200", "--num-test", "40", "--num-valid", "40",
        "--no-progress", "--set", "dataset=digits", "--set", "latent_dim=2", "--set", "encoder_hidden=16",
        "--set", "decoder_hidden=16", "--set", "final_iwae_samples=20", "--set", "eval_elbo_samples=5",
        "--set", "eval_iwae_samples=5"]


def run_script(workdir, *extra):
    reproduce.main(["--workdir", str(workdir)] + TINY + list(extra))
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_iwae_preset_runs_and_reports_against_the_paper(tmp_path):
    metrics = run_script(tmp_path / "a", "--preset", "iwae_k5")
    assert metrics["schedule"]["stage_epochs"] == [1, 1, 1, 1, 1, 1, 1, 2]
    assert metrics["config"]["objective"] == "iwae" and metrics["config"]["num_samples"] == 5
    assert metrics["preset"]["published"]["test_log_px"] == -87.63
    assert metrics["difference_to_published"] == pytest.approx(metrics["test_log_px"]["mean"] + 87.63)
    assert [h["stage"] for h in metrics["history"]] == [1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert any("eval_elbo" in h for h in metrics["history"])
    for name in ("metrics.json", "metrics.jsonl", "reproduce.md", "elbo_curve.png", "params.msgpack", "checkpoints"):
        assert os.path.exists(tmp_path / "a" / name), name
    # resuming is train_vae's (tests/test_scale.py kills a run and resumes it bit for bit)


@pytest.mark.slow
def test_cremer_preset_runs_the_gap_protocol_on_the_first_points(tmp_path):
    gap_quick = ["protocol.local_fit.max_steps=300", "protocol.local_fit.check_every=20", "protocol.elbo_samples=20",
                 "protocol.iwae_samples=50", "protocol.refine_steps=0,2", "protocol.ais.num_steps=5",
                 "protocol.ais.num_chains=2", "protocol.ais.leapfrog_steps=2", "protocol.ais.adapt_chains=1"]
    extra = ["--preset", "cremer_ffg", "--gap-points", "10"]
    for assignment in gap_quick:
        extra += ["--gap-set", assignment]
    metrics = run_script(tmp_path, *extra)
    for split in ("train", "test"):
        gaps = metrics["gap"][split]
        assert gaps["n_eval"] == 10
        assert "log_px_ais" in gaps  # the preset's AIS, next to IWAE
        assert gaps["inference_gap"]["mean"] == pytest.approx(
            gaps["approximation_gap_ffg"]["mean"] + gaps["amortization_gap_ffg"]["mean"], abs=1e-4)
    with open(tmp_path / "gap" / "gap.json") as f:
        assert json.load(f)["config"]["rows"] == "first"
