"""The gap decomposition on a small trained VAE: exact additivity, ordering, stage bookkeeping."""
import dataclasses
import os

import jax
import numpy as np
import pytest

from vi_jax.ais import AisConfig
from vi_jax.gap import GapProtocol, evaluate_gaps, summarize
from vi_jax.local import LocalFitConfig

pytestmark = pytest.mark.xdist_group("trained")  # shares the `trained` VAE with test_local.py

PROTOCOL = GapProtocol(local_fit=LocalFitConfig(learning_rate=1e-2, check_every=20, patience=5, max_steps=2000),
                       elbo_samples=200, iwae_samples=500, refine_steps=(0, 3),
                       ais_proposal="ffg", ais=AisConfig(num_chains=8, num_steps=20))


@pytest.fixture(scope="module")
def gaps(trained):
    vae, params, x = trained
    arrays, info = evaluate_gaps(jax.random.PRNGKey(0), vae.model, params["decoder"], vae.family,
                                 vae.encode(params["encoder"], x), {"ffg": vae.family}, x, PROTOCOL)
    return arrays, info


def test_inference_gap_is_approximation_plus_amortization_exactly(gaps):
    arrays, _ = gaps
    np.testing.assert_array_equal(arrays["inference_gap"], arrays["log_px"] - arrays["elbo_amortized"])
    np.testing.assert_allclose(arrays["inference_gap"],
                               arrays["approximation_gap_ffg"] + arrays["amortization_gap_ffg"], rtol=0, atol=1e-5)
    s = summarize(arrays)
    assert abs(s["inference_gap"]["mean"] - s["approximation_gap_ffg"]["mean"] - s["amortization_gap_ffg"]["mean"]) < 1e-5


def test_bounds_are_ordered_within_standard_errors(gaps):
    """log p(x) >= L[q*] >= L[q_phi] per datapoint in expectation: the paired mean differences
    must not be negative by more than 4 standard errors."""
    s = summarize(gaps[0])
    for gap in ("approximation_gap_ffg", "amortization_gap_ffg"):
        assert s[gap]["mean"] > -4 * s[gap]["stderr"], (gap, s[gap])


def test_stages_report_convergence_and_refinement(gaps):
    arrays, info = gaps
    fit = info["local_fits"]["ffg"]
    assert fit["n"] == 40 and 0 <= fit["converged"] <= 40
    assert set(info["seconds"]) == {"elbo_amortized", "local_fit_ffg", "iwae_ffg", "ais", "semi_amortized"}
    # K = 0 refinement steps is the encoder's own q, and every ELBO uses the same draws
    np.testing.assert_allclose(arrays["elbo_refined_0"], arrays["elbo_amortized"], rtol=1e-6)


def test_log_px_is_the_larger_of_iwae_and_ais(gaps):
    """Per datapoint log p(x) = max(IWAE, AIS) (with the winner's standard error); both estimate
    the same log p(x) from q*_FFG, so their mean paired difference is within 4 standard errors."""
    arrays, _ = gaps
    np.testing.assert_array_equal(arrays["log_px"], np.maximum(arrays["log_px_iwae"], arrays["log_px_ais"]))
    from_ais = arrays["log_px_ais"] > arrays["log_px_iwae"]
    np.testing.assert_array_equal(arrays["log_px_stderr"], np.where(from_ais, arrays["log_px_ais_stderr"],
                                                                    arrays["log_px_iwae_stderr"]))
    difference = summarize({"d": arrays["log_px_ais"] - arrays["log_px_iwae"]})["d"]
    assert abs(difference["mean"]) <= 4 * difference["stderr"], difference
    assert np.all((arrays["ais_acceptance_rate"] > 0.3) & (arrays["ais_acceptance_rate"] <= 1.0))


def test_unknown_ais_proposal_is_named(trained):
    vae, params, x = trained
    protocol = dataclasses.replace(PROTOCOL, ais_proposal="flow")
    with pytest.raises(ValueError, match="unknown ais_proposal 'flow'"):
        evaluate_gaps(jax.random.PRNGKey(0), vae.model, params["decoder"], vae.family,
                      vae.encode(params["encoder"], x), {"ffg": vae.family}, x, protocol)


@pytest.mark.parametrize("changes,match", [
    pytest.param({"local_init": "random"}, "local_init must be one of .* got 'random'", id="local-init"),
    pytest.param({"refine_steps": ()}, "refine_steps must be a non-empty tuple", id="no-refine-steps"),
    pytest.param({"ais_proposal": "prior", "ais": AisConfig(num_steps=0)}, "num_steps", id="ais-steps"),
])
def test_bad_protocol_is_named(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(GapProtocol(), **changes).validate()


def test_a_stage_cache_changes_nothing_and_a_resumed_evaluation_reads_every_stage_back(trained, gaps, tmp_path):
    """With a StageCache the arrays are those of the plain evaluation, bit for bit (the local fit
    then runs in checkpointed segments); a second evaluation resuming that cache computes nothing
    and returns the same arrays and stage seconds. A local fit interrupted between segments (its
    stage unfinished, a segment checkpoint saved) continues from there to the same result."""
    from vi_jax.checkpoint import StageCache
    vae, params, x = trained
    plain, _ = gaps
    encoder_q = vae.encode(params["encoder"], x)

    def evaluate(directory, resume, protocol=PROTOCOL):
        stages = StageCache(str(directory), {"protocol": "test"}, resume=resume)
        return evaluate_gaps(jax.random.PRNGKey(0), vae.model, params["decoder"], vae.family, encoder_q,
                             {"ffg": vae.family}, x, protocol, stages=stages)

    cached, info = evaluate(tmp_path / "a", resume=False)
    assert sorted(cached) == sorted(plain) and info["reused_stages"] == []
    for name in plain:
        np.testing.assert_array_equal(cached[name], plain[name], err_msg=name)
    again, again_info = evaluate(tmp_path / "a", resume=True)
    assert again_info["reused_stages"] == ["elbo_amortized", "local_fit_ffg", "iwae_ffg", "ais", "semi_amortized"]
    assert again_info["seconds"] == info["seconds"] and again_info["local_fits"] == info["local_fits"]
    for name in plain:
        np.testing.assert_array_equal(again[name], plain[name], err_msg=name)

    # interrupted during the local fit: only its first segment is on disk
    stages = StageCache(str(tmp_path / "b"), {"protocol": "test"}, resume=False)
    from vi_jax.local import make_local_fitter
    fitter = make_local_fitter(vae.model, vae.family, PROTOCOL.local_fit, kl=vae.family.kl_form)
    fit_key = jax.random.fold_in(jax.random.split(jax.random.PRNGKey(0), 4)[1], 0)
    first = jax.jit(fitter.advance)(fit_key, params["decoder"], fitter.init(encoder_q), x, 3)
    assert bool(first.active.any())  # the fit was not over yet
    stages.checkpointer("local_fit_ffg").save(3, first, {"config": {"stage": "local_fit_ffg"}, "seconds": 0.0})
    resumed, _ = evaluate(tmp_path / "b", resume=True)
    for name in plain:
        np.testing.assert_array_equal(resumed[name], plain[name], err_msg=name)


def test_a_stage_cache_refuses_another_runs_stages_and_names_a_damaged_one(tmp_path):
    from vi_jax.checkpoint import CheckpointError, DamagedCheckpoint, StageCache
    stages = StageCache(str(tmp_path), {"seed": 0, "rows": [1, 2]}, resume=False)
    arrays, _, reused = stages.run("one", lambda: {"a": np.arange(3.0)})
    assert not reused
    with pytest.raises(CheckpointError, match="different run.*rows"):
        StageCache(str(tmp_path), {"seed": 0, "rows": [1, 3]}, resume=True)
    np.testing.assert_array_equal(StageCache(str(tmp_path), {"seed": 0, "rows": [1, 2]}, resume=True)
                                  .run("one", lambda: pytest.fail("recomputed"))[0]["a"], arrays["a"])
    np.savez(tmp_path / "one.npz", a=np.arange(4.0))  # replaced behind the cache's back
    with pytest.raises(DamagedCheckpoint, match="stage 'one'.*fails its checksums"):
        StageCache(str(tmp_path), {"seed": 0, "rows": [1, 2]}, resume=True).run("one", lambda: {})
    # without resume, a fresh start: what was there is cleared
    fresh = StageCache(str(tmp_path), {"seed": 0, "rows": [1, 3]}, resume=False)
    assert fresh.stages == {} and sorted(os.listdir(tmp_path)) == ["stages.json"]
