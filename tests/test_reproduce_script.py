"""End-to-end runs of experiments/reproduce.py at a tiny --epochs-scale on a slice of the data.

The presets' dataset is binarized MNIST; these runs use the embedded digits data (--set
dataset=digits) so that they run everywhere; the binarized-MNIST loader has its own tests."""
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import reproduce
from vi_jax import data, streams

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
    # --num-test 40: a seeded random 40 of digits' 300 test rows, not the first 40
    rows = metrics["test_rows"]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), streams.HELD_OUT_ROWS), 0)
    assert (rows["choice"], rows["n"], rows["of"], metrics["n_test"]) == ("random", 40, 300, 40)
    assert rows["indices"] == np.sort(np.asarray(jax.random.permutation(key, 300))[:40]).tolist()
    # resuming is train_vae's (tests/test_scale.py kills a run and resumes it bit for bit)


@pytest.mark.slow
def test_cremer_preset_runs_the_gap_protocol_on_first_train_and_random_test_points(tmp_path, killed_in_the_last_gap_stage):
    gap_quick = ["protocol.local_fit.max_steps=300", "protocol.local_fit.check_every=20", "protocol.elbo_samples=20",
                 "protocol.iwae_samples=50", "protocol.refine_steps=0,2", "protocol.ais.num_steps=5",
                 "protocol.ais.num_chains=2", "protocol.ais.leapfrog_steps=2", "protocol.ais.adapt_chains=1"]
    extra = ["--preset", "cremer_ffg", "--gap-points", "10", "--authors-points", "4"]
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
        result = json.load(f)
    assert (result["config"]["rows"], result["config"]["train_rows"]) == ("random", "first")
    assert [result["splits"][split]["rows"]["choice"] for split in ("train", "test")] == ["first", "random"]
    np.testing.assert_array_equal(np.load(tmp_path / "gap" / "gap_train.npz")["rows"], np.arange(10))
    assert not np.array_equal(np.load(tmp_path / "gap" / "gap_test.npz")["rows"], np.arange(10))
    # the authors' local fit on a subset of the same rows, from the prior, with 100 draws per step
    with open(tmp_path / "gap_authors" / "gap.json") as f:
        authors = json.load(f)
    assert authors["config"]["protocol"]["local_init"] == "prior"
    assert authors["config"]["protocol"]["local_fit"]["num_samples"] == 100
    assert authors["config"]["protocol"]["ais_proposal"] == "" and "log_px_ais" not in authors["splits"]["train"]
    for split in ("train", "test"):
        assert authors["splits"][split]["n_eval"] == 4
        rows = np.load(tmp_path / "gap_authors" / f"gap_{split}.npz")["rows"]
        assert set(rows) <= set(np.load(tmp_path / "gap" / f"gap_{split}.npz")["rows"])
    # published, the protocols' difference is a paired figure over the common rows
    reproduce.main(["--publish", str(tmp_path), "--to", str(tmp_path / "artifact")])
    with open(tmp_path / "artifact" / "artifact.json") as f:
        figures = {fig["name"]: fig for fig in json.load(f)["figures"]}
    name = "protocols train: elbo_local_ffg, gap_authors - gap"
    a, b = (np.load(tmp_path / folder / "gap_train.npz") for folder in ("gap_authors", "gap"))
    difference = a["elbo_local_ffg"] - b["elbo_local_ffg"][np.searchsorted(b["rows"], a["rows"])]
    assert figures[name]["mean"] == pytest.approx(difference.mean())
    paired = b["amortization_gap_ffg"] - b["approximation_gap_ffg"]
    figure = figures["gap train: amortization_minus_approximation_ffg"]
    assert (figure["mean"], figure["stderr"]) == pytest.approx((paired.mean(), paired.std(ddof=1) / np.sqrt(10)))
    assert reproduce.verify(str(tmp_path / "artifact"), data_dir=None, fresh_points=20, fresh_seed=1)
    # interrupted in the gap protocol's last stage of its first split, then resumed: the training from
    # its checkpoint, the gap protocol from the stages it finished (WORKDIR/gap/checkpoints), to the
    # same numbers
    with killed_in_the_last_gap_stage():
        run_script(tmp_path / "resumed", *extra)
    assert "local_fit_ffg.npz" in os.listdir(tmp_path / "resumed" / "gap" / "checkpoints" / "gap_train")
    resumed = run_script(tmp_path / "resumed", *extra, "--resume")
    assert resumed["gap"]["train"].pop("resumed_stages") == ["elbo_amortized", "local_fit_ffg", "iwae_ffg",
                                                             "local_fit_flow", "iwae_flow", "ais"]
    assert metrics["gap"]["train"].pop("resumed_stages") == []
    for folder in ("gap", "gap_authors"):
        assert resumed[folder] == metrics[folder]
    assert not os.path.exists(tmp_path / "resumed" / "gap" / "checkpoints")


@pytest.mark.parametrize("flag", ["--num-train", "--num-test", "--num-valid", "--gap-points"])
def test_negative_counts_are_usage_errors(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--preset", "iwae_k1", flag, "-1"])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be an integer >= " in capsys.readouterr().err


def test_cremer_gap_rows_first_on_the_sorted_test_split_refused_before_training(monkeypatch, tmp_path):
    data_dir = Path(os.environ.get(data.DATA_DIR_ENV) or Path(__file__).parents[2] / "shared" / "data")
    try:
        data.load_dataset("binarized_mnist", data_dir=str(data_dir))
    except FileNotFoundError as err:
        pytest.skip(f"real binarized MNIST not found ({err}); set {data.DATA_DIR_ENV} to run this test")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing the row choice")

    monkeypatch.setattr(reproduce, "train_vae", no_training)
    with pytest.raises(ValueError, match=r"binarized_mnist test: rows='first' refused: the split is sorted by digit"):
        reproduce.main(["--preset", "cremer_ffg", "--workdir", str(tmp_path / "run"), "--data-dir", str(data_dir),
                        "--gap-set", "rows=first", "--no-progress"])
    assert not (tmp_path / "run").exists()
