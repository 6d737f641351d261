"""End-to-end run of the main job, experiments/gap.py, in a small configuration."""
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

from experiments import gap
from vi_jax import data
from vi_jax.config import apply_overrides

SMALL = ["--quick", "--no-progress", "--set", "vae.num_epochs=15", "--set", "n_eval=20",
         "--set", "protocol.iwae_samples=200", "--set", "protocol.refine_steps=0,2"]
FILES = ["MANIFEST.json", "gap.json", "gap.md", "gap_bars.png", "gap_test.npz", "gap_train.npz",
         "local_vs_amortized.png", "metrics.jsonl", "refinement.png", "vae_params.msgpack"]


def run(workdir, *extra):
    gap.main(["--workdir", str(workdir)] + SMALL + list(extra))
    with open(os.path.join(workdir, "gap.json")) as f:
        return json.load(f)


def numbers(result):
    return {split: {k: v for k, v in r.items()} for split, r in result["splits"].items()}


@pytest.mark.slow
def test_gap_quick_end_to_end(tmp_path, killed_in_the_last_gap_stage):
    result = run(tmp_path / "a")
    assert sorted(os.listdir(tmp_path / "a")) == FILES
    for split in ("train", "test"):
        r = result["splits"][split]
        assert r["n_eval"] == 20
        for q in gap.quantities(["ffg", "flow"]):
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
        # which rows: recorded in gap.json, the indices in the npz are the seeded subset of the split
        split_index = gap.SPLITS.index(split)
        assert r["rows"] == {"choice": "random", "n": 20, "of": {"train": 1497, "test": 300}[split],
                             "subset_key": f"fold_in(fold_in(PRNGKey(0), {split_index}), 0)", "split_order": None,
                             "indices": f"gap_{split}.npz: rows"}
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), split_index), 0)
        expected_rows = np.sort(np.asarray(jax.random.permutation(key, r["rows"]["of"]))[:20])
        np.testing.assert_array_equal(arrays["rows"], expected_rows)
    assert result["seed"] == 0 and result["environment"]["versions"]["jax"]
    assert result["local_fit_protocol"] == "custom"  # --quick loosens the reference fit
    assert set(result["wall_seconds"]) >= {"vae", "total"}
    # same seed, identical numbers; a run of one split draws that split's keys as the full run does
    again = run(tmp_path / "b", "--set", "splits=test")
    assert numbers(again) == {"test": numbers(result)["test"]}
    # interrupted in its last stage, then resumed: the finished stages are read back, not recomputed,
    # and the numbers are those of the uninterrupted run
    with killed_in_the_last_gap_stage():
        run(tmp_path / "d", "--set", "splits=test")
    assert sorted(os.listdir(tmp_path / "d" / "checkpoints" / "gap_test")) == [
        "elbo_amortized.npz", "iwae_ffg.npz", "iwae_flow.npz", "local_fit_ffg.npz", "local_fit_flow.npz", "stages.json"]
    resumed = run(tmp_path / "d", "--set", "splits=test", "--resume")
    assert resumed["splits"]["test"].pop("resumed_stages") == [
        "elbo_amortized", "local_fit_ffg", "iwae_ffg", "local_fit_flow", "iwae_flow"]
    uninterrupted = numbers(result)["test"]
    assert uninterrupted.pop("resumed_stages") == []
    assert numbers(resumed) == {"test": uninterrupted}
    assert "checkpoints" not in os.listdir(tmp_path / "d")
    with pytest.raises(ValueError, match="splits must be"):
        run(tmp_path / "c", "--set", "splits=valid")


def test_local_families_come_from_the_config_and_are_named_by_their_labels():
    """Default: the diagonal Gaussian and the coupling flow, keys "ffg" and "flow" (the result keys
    of every earlier run); any registered families otherwise, flow_layers/flow_hidden reaching
    the families that take them, and the quantities named by the labels."""
    default = gap.build_local_families(gap.GapConfig(), 3)
    assert list(default) == ["ffg", "flow"]
    assert [f.name for f in default.values()] == ["gaussian", "flow"] and len(default["flow"].init()["flow"]) == 4
    assert gap.quantities(default) == (
        "log_px", "log_px_iwae", "elbo_amortized", "elbo_local_ffg", "elbo_local_flow", "inference_gap",
        "approximation_gap_ffg", "amortization_gap_ffg", "approximation_gap_flow", "amortization_gap_flow")
    config = apply_overrides(gap.GapConfig(), ["local_families=full_gaussian,iaf,mixture", "flow_layers=2"])
    config.validate()
    families = gap.build_local_families(config, 3)
    assert list(families) == ["full_cov", "iaf", "mixture"] and len(families["iaf"].init()["flow"]) == 2
    assert gap.quantities(families) == (
        "log_px", "log_px_iwae", "elbo_amortized", "elbo_local_full_cov", "elbo_local_iaf", "elbo_local_mixture",
        "inference_gap", "approximation_gap_full_cov", "amortization_gap_full_cov", "approximation_gap_iaf",
        "amortization_gap_iaf", "approximation_gap_mixture", "amortization_gap_mixture")


# ---------------------------------------------------------------- which rows are evaluated

SIGNIFICANCE = 1e-3  # a class-mix check fails by chance with this probability


def _real_data_dir() -> Path:
    """$VI_JAX_DATA_DIR, else the shared data folder next to the repository."""
    return Path(os.environ.get(data.DATA_DIR_ENV) or Path(__file__).parents[2] / "shared" / "data")


@pytest.fixture
def binarized_mnist() -> data.Dataset:
    try:
        return data.load_dataset("binarized_mnist", data_dir=str(_real_data_dir()))
    except FileNotFoundError as err:
        pytest.skip(f"real binarized MNIST not found ({err}); set {data.DATA_DIR_ENV} to run this test")


def _toy_dataset(ordered_splits) -> data.Dataset:
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    return data.Dataset(name="toy", train=rows, test=rows + 100, valid=None, image_shape=(2, 2), value_range="unit",
                        ordered_splits=ordered_splits)


def test_an_ais_proposal_that_names_no_fitted_family_is_refused_before_any_compute(tmp_path):
    with pytest.raises(ValueError, match=r"protocol.ais_proposal 'fgg' names no proposal of this config; known: "
                                         r"\('prior', 'encoder', 'ffg', 'flow'\)"):
        gap.main(["--workdir", str(tmp_path / "w"), "--set", "protocol.ais_proposal=fgg"])
    assert not os.path.exists(tmp_path / "w")
    apply_overrides(gap.GapConfig(), ["protocol.ais_proposal=flow", "local_families=gaussian,flow"]).validate()


def test_first_rows_of_an_ordered_split_are_refused_with_the_reason():
    toy = _toy_dataset({"test": "sorted by class"})
    with pytest.raises(ValueError, match=r"^toy test: rows='first' refused: the split is sorted by class, so its "
                                         r"first 3 rows are not a fair sample of its 10"):
        gap.choose_rows(gap.GapConfig(n_eval=3, rows="first"), toy, {"train": toy.train, "test": toy.test})
    # all rows of an ordered split, or the first rows of an unordered one, are fine
    index, _ = data.subset(None, toy.test, 10, "first", order=toy.ordered_splits["test"])
    np.testing.assert_array_equal(index, np.arange(10))
    np.testing.assert_array_equal(data.subset(None, toy.train, 3, "first")[0], [0, 1, 2])


def test_row_choice_per_split_cremer_protocol():
    """rows="random", train_rows="first": the first training rows, a seeded random test subset."""
    toy = _toy_dataset({"test": "sorted by class"})
    config = gap.GapConfig(n_eval=4, rows="random", train_rows="first", seed=3)
    chosen = gap.choose_rows(config, toy, {"train": toy.train, "test": toy.test})
    np.testing.assert_array_equal(chosen["train"][0], np.arange(4))
    test_key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(3), gap.SPLITS.index("test")), 0)
    expected = np.sort(np.asarray(jax.random.permutation(test_key, 10))[:4])
    np.testing.assert_array_equal(chosen["test"][0], expected)
    np.testing.assert_array_equal(chosen["test"][1], toy.test[expected])
    assert (config.rows_of("train"), config.rows_of("test")) == ("first", "random")
    assert gap.GapConfig(rows="first").rows_of("train") == "first"  # train_rows "" follows rows
    with pytest.raises(ValueError, match=r"GapConfig.train_rows must be one of \('random', 'first', ''\), got 'last'"):
        gap.GapConfig(train_rows="last").validate()


def test_binarized_mnist_first_test_rows_refused_before_training(binarized_mnist, monkeypatch, tmp_path):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing the row choice")

    monkeypatch.setattr(gap, "train_vae", no_training)
    config = apply_overrides(gap.GapConfig(), ["vae.dataset=binarized_mnist", "n_eval=1000", "rows=first"])
    with pytest.raises(ValueError, match=r"binarized_mnist test: rows='first' refused: the split is sorted by digit"):
        gap.run(config, str(tmp_path / "gap"), data_dir=str(_real_data_dir()), progress=False)
    assert not (tmp_path / "gap").exists()


def _class_mix_chi_square(labels: np.ndarray, population: np.ndarray) -> float:
    """Pearson's statistic of the class counts of `labels` against the population's class shares."""
    expected = np.bincount(population, minlength=10) / len(population) * len(labels)
    return float(np.sum((np.bincount(labels, minlength=10) - expected) ** 2 / expected))


def test_default_random_subset_has_the_test_split_class_mix(binarized_mnist):
    """The gap protocol's 1000 test rows (default key, seed 0) against the split's class shares.
    Under random sampling Pearson's statistic is about chi-square with 9 degrees of freedom
    (conservative here: drawing 1000 of 10000 without replacement shrinks each count's variance by
    (N - n) / (N - 1) = 0.9), so it exceeds chi2.ppf(1 - SIGNIFICANCE, 9) = 27.9 with probability
    below SIGNIFICANCE. The first 1000 rows (980 zeros, 20 ones) exceed it by far."""
    threshold = stats.chi2.ppf(1 - SIGNIFICANCE, df=9)
    labels = binarized_mnist.test_labels
    splits = {"train": binarized_mnist.train, "test": binarized_mnist.test}
    index, _ = gap.choose_rows(gap.GapConfig(n_eval=1000, splits=("test",)), binarized_mnist, splits)["test"]
    assert len(index) == 1000
    assert _class_mix_chi_square(labels[index], labels) < threshold
    assert _class_mix_chi_square(labels[:1000], labels) > 100 * threshold  # why "first" is refused
