"""Config overrides from the command line."""
import os
import re

import pytest

from vi_jax.config import apply_overrides, check_fields
from vi_jax.vae import VAEConfig


@pytest.mark.parametrize("assignment,field,expected", [
    pytest.param("latent_dim=4", "latent_dim", 4, id="int"),
    pytest.param("learning_rate=3e-4", "learning_rate", 3e-4, id="float"),
    pytest.param("encoder_hidden=64,32", "encoder_hidden", (64, 32), id="tuple"),
    pytest.param("decoder_hidden=", "decoder_hidden", (), id="empty-tuple"),
    pytest.param("dataset=binarized_mnist", "dataset", "binarized_mnist", id="str"),
])
def test_override_parses_by_field_type(assignment, field, expected):
    assert getattr(apply_overrides(VAEConfig(), [assignment]), field) == expected


@pytest.mark.parametrize("assignment,match", [
    pytest.param("latent=4", "unknown config field 'latent'", id="unknown-field"),
    pytest.param("latent_dim=four", "latent_dim: expected int", id="bad-int"),
    pytest.param("latent_dim", "not of the form field=value", id="no-equals"),
])
def test_bad_override_is_named(assignment, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(VAEConfig(), [assignment])


@pytest.mark.parametrize("changes,match", [
    pytest.param({"likelihood": "poisson"}, "unknown likelihood", id="likelihood"),
    pytest.param({"family": "student"}, "unknown variational family", id="family"),
    pytest.param({"activation": "sine"}, "unknown activation", id="activation"),
    pytest.param({"kl": "exact"}, "unknown kl form", id="kl"),
    pytest.param({"batch_size": 0}, r"VAEConfig.batch_size must be an integer >= 1, got 0", id="batch-size"),
    pytest.param({"learning_rate": -1.0}, r"VAEConfig.learning_rate must be a finite number > 0", id="learning-rate"),
    pytest.param({"learning_rate": float("nan")}, r"learning_rate must be a finite number > 0, got nan",
                 id="learning-rate-nan"),
    pytest.param({"grad_clip_norm": float("nan")}, r"grad_clip_norm must be a finite number >= 0, got nan",
                 id="clip-nan"),
    pytest.param({"seed": -1}, r"VAEConfig.seed must be an integer >= 0, got -1", id="negative-seed"),
    pytest.param({"encoder_hidden": (0,)}, r"encoder_hidden must be a tuple of integers >= 1, got \(0,\)",
                 id="zero-width"),
    pytest.param({"num_samples": 2.5}, r"num_samples must be an integer >= 1, got 2.5", id="float-count"),
    pytest.param({"stage_epochs": (1, 0), "stage_learning_rates": (1e-3, 1e-4), "num_epochs": 1},
                 r"stage_epochs must be a tuple of integers >= 1", id="empty-stage"),
    pytest.param({"dataset": "digits_continuous"}, r"grey values in \[0, 1\], for which a Bernoulli likelihood",
                 id="bernoulli-on-grey"),
])
def test_invalid_config_is_named(changes, match):
    import dataclasses
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(VAEConfig(), **changes).validate()


def test_flow_family_needs_the_monte_carlo_kl():
    import dataclasses
    with pytest.raises(ValueError, match="no closed-form KL; set kl=mc"):
        dataclasses.replace(VAEConfig(), family="flow").validate()
    dataclasses.replace(VAEConfig(), family="flow", kl="mc").validate()


# --- field rules (vi_jax.config.check_fields) and named presets -------------------------------

import dataclasses  # noqa: E402
import math  # noqa: E402
import typing  # noqa: E402

from experiments.gap import GapConfig  # noqa: E402
from vi_jax.ais import AisConfig  # noqa: E402
from vi_jax.gap import GapProtocol  # noqa: E402
from vi_jax.local import LOCAL_FIT_PROTOCOLS, LocalFitConfig  # noqa: E402

BAD_LOCAL_FIT = [
    ("learning_rate", -1e-2, "LocalFitConfig.learning_rate must be a finite number > 0, got -0.01"),
    ("learning_rate", 0.0, "learning_rate must be a finite number > 0"),
    ("learning_rate", math.nan, "learning_rate must be a finite number > 0, got nan"),
    ("learning_rate", math.inf, "learning_rate must be a finite number > 0, got inf"),
    ("num_samples", 0, "LocalFitConfig.num_samples must be an integer >= 1, got 0"),
    ("num_samples", 2.5, "num_samples must be an integer >= 1, got 2.5"),
    ("check_every", 0, "LocalFitConfig.check_every must be an integer >= 1, got 0"),
    ("patience", 0, "LocalFitConfig.patience must be an integer >= 1, got 0"),
    ("patience", True, "patience must be an integer >= 1, got True"),
    ("max_steps", 0, "LocalFitConfig.max_steps must be an integer >= 1, got 0"),
    ("lr_reductions", -1, "LocalFitConfig.lr_reductions must be an integer >= 0, got -1"),
    ("lr_reduction_factor", 1.0, "LocalFitConfig.lr_reduction_factor must be a finite number in (0, 1), got 1.0"),
    ("lr_reduction_factor", 0.0, "lr_reduction_factor must be a finite number in (0, 1), got 0.0"),
    ("block_rows", -1, "LocalFitConfig.block_rows must be an integer >= 0, got -1"),
]
BAD_PROTOCOL = [
    ("local_init", "random", "GapProtocol.local_init must be one of ('encoder', 'prior'), got 'random'"),
    ("elbo_samples", 0, "GapProtocol.elbo_samples must be an integer >= 1, got 0"),
    ("iwae_samples", -5, "GapProtocol.iwae_samples must be an integer >= 1, got -5"),
    ("iwae_chunk_size", 0, "GapProtocol.iwae_chunk_size must be an integer >= 1"),
    ("batch_size", 0, "GapProtocol.batch_size must be an integer >= 1"),
    ("refine_steps", (), "GapProtocol.refine_steps must be a non-empty tuple of integers >= 0, got ()"),
    ("refine_steps", (0, -1), "refine_steps must be a non-empty tuple of integers >= 0, got (0, -1)"),
    ("refine_learning_rate", math.nan, "GapProtocol.refine_learning_rate must be a finite number > 0, got nan"),
]
BAD_AIS = [
    ("num_chains", 0, "AisConfig.num_chains must be an integer >= 1, got 0"),
    ("num_steps", 0, "AisConfig.num_steps must be an integer >= 1"),
    ("schedule", "cosine", "AisConfig.schedule must be one of ('sigmoid', 'linear'), got 'cosine'"),
    ("leapfrog_steps", 0, "AisConfig.leapfrog_steps must be an integer >= 1"),
    ("adapt_chains", 0, "AisConfig.adapt_chains must be an integer >= 1"),
    ("initial_step_size", math.inf, "AisConfig.initial_step_size must be a finite number > 0, got inf"),
    ("target_acceptance", 1.0, "AisConfig.target_acceptance must be a finite number in (0, 1), got 1.0"),
    ("adapt_rate", 1.0, "AisConfig.adapt_rate must be a finite number in [0, 1), got 1.0"),
    ("min_step_size", 0.0, "AisConfig.min_step_size must be a finite number > 0"),
    ("max_step_size", math.nan, "AisConfig.max_step_size must be a finite number > 0, got nan"),
    ("initial_step_size", 1.0, "need min_step_size <= initial_step_size <= max_step_size"),
]


@pytest.mark.parametrize("field,value,match", [
    pytest.param(f, v, m, id=f"{f}={v!r}") for f, v, m in BAD_LOCAL_FIT])
def test_bad_local_fit_config_is_refused_at_construction(field, value, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        LocalFitConfig(**{field: value})


@pytest.mark.parametrize("config,field,value,match", [
    pytest.param(GapProtocol(), f, v, m, id=f"protocol.{f}={v!r}") for f, v, m in BAD_PROTOCOL] + [
    pytest.param(AisConfig(), f, v, m, id=f"ais.{f}={v!r}") for f, v, m in BAD_AIS])
def test_bad_protocol_and_ais_config_are_refused_by_validate(config, field, value, match):
    bad = dataclasses.replace(config, **{field: value})
    with pytest.raises(ValueError, match=re.escape(match)):
        bad.validate()


@pytest.mark.parametrize("assignment,match", [
    pytest.param("protocol.local_fit.learning_rate=-1e-2",
                 "protocol.local_fit.learning_rate=-1e-2: LocalFitConfig.learning_rate must be a finite number > 0",
                 id="negative-lr"),
    pytest.param("protocol.local_fit.learning_rate=nan", "learning_rate must be a finite number > 0, got nan",
                 id="nan-lr"),
    pytest.param("protocol.local_fit.patience=0", "protocol.local_fit.patience=0: LocalFitConfig.patience must be",
                 id="zero-patience"),
    pytest.param("protocol.local_fit.max_steps=0", "LocalFitConfig.max_steps must be an integer >= 1", id="zero-max-steps"),
    pytest.param("protocol.local_fit.check_every=0", "LocalFitConfig.check_every must be an integer >= 1",
                 id="zero-check-every"),
    pytest.param("protocol.local_fit=fast", "unknown local fit protocol 'fast'; known: ('reference', 'authors', "
                 "'accurate')", id="unknown-protocol"),
    pytest.param("protocol.ais=fast", "'protocol.ais' is a nested config; set one of its fields with a dot",
                 id="no-presets"),
])
def test_bad_gap_override_is_refused_while_parsing(assignment, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        apply_overrides(GapConfig(), [assignment])


@pytest.mark.parametrize("assignment,match", [
    pytest.param("n_eval=0", "GapConfig.n_eval must be an integer >= 1, got 0", id="zero-n-eval"),
    pytest.param("n_eval=-5", "GapConfig.n_eval must be an integer >= 1, got -5", id="negative-n-eval"),
    pytest.param("seed=-1", "GapConfig.seed must be an integer >= 0, got -1", id="negative-seed"),
    pytest.param("rows=last", "GapConfig.rows must be one of ('random', 'first'), got 'last'", id="rows"),
    pytest.param("flow_layers=0", "GapConfig.flow_layers must be an integer >= 1", id="flow-layers"),
    pytest.param("local_families=gaussian,student", "GapConfig.local_families must be a non-empty tuple of "
                 "distinct family names", id="unknown-local-family"),
    pytest.param("local_families=flow,flow", "GapConfig.local_families must be a non-empty tuple of distinct",
                 id="repeated-local-family"),
    pytest.param("protocol.elbo_samples=0", "GapProtocol.elbo_samples must be an integer >= 1", id="elbo-samples"),
])
def test_bad_gap_config_is_refused_before_any_compute(assignment, match, monkeypatch, tmp_path):
    """experiments.gap.run refuses these before it loads data or trains (both replaced by a trap)."""
    from experiments import gap

    def trap(*args, **kwargs):
        raise AssertionError("compute started before validation")

    monkeypatch.setattr(gap, "load_training_data", trap)
    monkeypatch.setattr(gap, "train_vae", trap)
    with pytest.raises(ValueError, match=re.escape(match)):
        gap.run(apply_overrides(GapConfig(), [assignment]), str(tmp_path), progress=False)
    assert not os.listdir(tmp_path)


def _numeric(kind) -> bool:
    return kind in (int, float) or (typing.get_origin(kind) is tuple and typing.get_args(kind)[0] in (int, float))


from experiments.compare_training import CompareConfig  # noqa: E402
from experiments.estimator_variance import EstimatorVarianceConfig  # noqa: E402
from experiments.gap_over_training import GapOverTrainingConfig  # noqa: E402
from experiments.local_fit_accuracy import LocalFitAccuracyConfig  # noqa: E402
from experiments.marginal_likelihood import MarginalLikelihoodConfig  # noqa: E402
from experiments.mixture_vi import MixtureConfig  # noqa: E402
from experiments.oracle_gap import LinearOracleConfig, OracleGapConfig, VAEOracleConfig  # noqa: E402
from experiments.reproduce import RunOptions  # noqa: E402
from vi_jax.cvae import CVAEConfig  # noqa: E402
from vi_jax.oracles import QuadratureConfig  # noqa: E402
from vi_jax.vqvae import VQVAEConfig  # noqa: E402

RULED_CONFIGS = [VAEConfig, LocalFitConfig, GapProtocol, AisConfig, GapConfig, CVAEConfig, VQVAEConfig, CompareConfig,
                 EstimatorVarianceConfig, GapOverTrainingConfig, LocalFitAccuracyConfig, MarginalLikelihoodConfig,
                 MixtureConfig, LinearOracleConfig, VAEOracleConfig, OracleGapConfig, QuadratureConfig, RunOptions]


@pytest.mark.parametrize("cls", RULED_CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_rule(cls):
    """NaN, inf and out-of-range values are caught anywhere numeric: no int/float field lacks a rule,
    and every rule names a field."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(cls.RULES) <= fields
    assert {name for name in fields if _numeric(hints[name])} <= set(cls.RULES)
    check_fields(cls(), cls.RULES)  # the defaults pass their own rules


@pytest.mark.parametrize("cls,assignment,match", [
    pytest.param(CVAEConfig, "num_classes=0", "CVAEConfig.num_classes must be an integer >= 1, got 0",
                 id="cvae-zero-classes"),
    pytest.param(CVAEConfig, "learning_rate=nan", "CVAEConfig.learning_rate must be a finite number > 0, got nan",
                 id="cvae-nan-learning-rate"),
    pytest.param(VQVAEConfig, "beta=-0.5", "VQVAEConfig.beta must be a finite number >= 0, got -0.5",
                 id="vqvae-negative-beta"),
    pytest.param(VQVAEConfig, "seed=-1", "VQVAEConfig.seed must be an integer >= 0, got -1", id="vqvae-negative-seed"),
    pytest.param(CompareConfig, "n_eval=0", "CompareConfig.n_eval must be an integer >= 1, got 0",
                 id="compare-zero-n-eval"),
    pytest.param(CompareConfig, "modes=amortized,lazy", "CompareConfig.modes must be a non-empty tuple of modes from",
                 id="compare-unknown-mode"),
    pytest.param(EstimatorVarianceConfig, "num_samples=1,4", "EstimatorVarianceConfig.num_samples must be a non-empty "
                 "tuple of integers >= 2 (the score function's baseline), got (1, 4)", id="variance-one-sample"),
    pytest.param(EstimatorVarianceConfig, "repetitions=1", "EstimatorVarianceConfig.repetitions must be an integer "
                 ">= 2, got 1", id="variance-one-repetition"),
    pytest.param(GapOverTrainingConfig, "n_eval=1", "GapOverTrainingConfig.n_eval must be an integer >= 2, got 1",
                 id="over-training-one-row"),
    pytest.param(GapOverTrainingConfig, "flow_hidden=0", "GapOverTrainingConfig.flow_hidden must be an integer >= 1",
                 id="over-training-flow-hidden"),
    pytest.param(LocalFitAccuracyConfig, "encoder_visible=1.5", "LocalFitAccuracyConfig.encoder_visible must be a "
                 "finite number in (0, 1]", id="local-fit-accuracy-visible"),
    pytest.param(MarginalLikelihoodConfig, "scale=inf", "MarginalLikelihoodConfig.scale must be a finite number > 0, "
                 "got inf", id="marginal-infinite-scale"),
    pytest.param(MarginalLikelihoodConfig, "psi_low=2.0", "need psi_low <= psi_high, got 2.0, 1.0",
                 id="marginal-psi-order"),
    pytest.param(MixtureConfig, "estimator=reinforce", "MixtureConfig.estimator must be one of ('enumeration', "
                 "'score_function'), got 'reinforce'", id="mixture-unknown-estimator"),
    pytest.param(MixtureConfig, "refit_final_learning_rate=0", "MixtureConfig.refit_final_learning_rate must be a "
                 "finite number > 0, got 0.0", id="mixture-zero-final-rate"),
    pytest.param(OracleGapConfig, "linear.restricted_visible=17", "restricted_visible (17) must be at most data_dim "
                 "(16)", id="oracle-restricted-visible"),
    pytest.param(OracleGapConfig, "linear.encoder_final_learning_rate=nan", "LinearOracleConfig."
                 "encoder_final_learning_rate must be a finite number > 0, got nan", id="oracle-nan-rate"),
    pytest.param(OracleGapConfig, "vae.manifold_side=0", "VAEOracleConfig.manifold_side must be an integer >= 1",
                 id="oracle-manifold-side"),
    pytest.param(OracleGapConfig, "vae.quadrature.elbo_radius=nan", "QuadratureConfig.elbo_radius must be a finite "
                 "number > 0, got nan", id="quadrature-nan-radius"),
    pytest.param(OracleGapConfig, "vae.quadrature.points=41.5", "vae.quadrature.points: expected int, got '41.5'",
                 id="quadrature-fractional-points"),
    pytest.param(OracleGapConfig, "seed=-3", "OracleGapConfig.seed must be an integer >= 0, got -3",
                 id="oracle-negative-seed"),
    pytest.param(RunOptions, "epochs_scale=1.5", "RunOptions.epochs_scale must be a finite number in (0, 1], got 1.5",
                 id="reproduce-epochs-scale"),
    pytest.param(RunOptions, "authors_points=-1", "RunOptions.authors_points must be an integer >= 0, got -1",
                 id="reproduce-negative-authors-points"),
])
def test_bad_experiment_config_is_named(cls, assignment, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        apply_overrides(cls(), [assignment]).validate()


def _trap(*args, **kwargs):
    raise AssertionError("compute started before validation")


def test_compare_training_validates_before_any_compute(monkeypatch, tmp_path):
    from experiments import compare_training

    monkeypatch.setattr(compare_training, "load_training_data", _trap)
    with pytest.raises(ValueError, match=re.escape("CompareConfig.n_eval must be an integer >= 1, got -5")):
        compare_training.run(apply_overrides(CompareConfig(), ["n_eval=-5"]), str(tmp_path), progress=False)


def test_oracle_gap_validates_before_any_compute(monkeypatch, tmp_path):
    from experiments import oracle_gap

    monkeypatch.setattr(oracle_gap, "run_linear", _trap)
    monkeypatch.setattr(oracle_gap, "run_vae", _trap)
    with pytest.raises(ValueError, match=re.escape("LinearOracleConfig.num_points must be an integer >= 1, got 0")):
        oracle_gap.run(apply_overrides(OracleGapConfig(), ["linear.num_points=0"]), str(tmp_path), progress=False)


def test_named_local_fit_protocols_have_the_documented_settings():
    """reference = today's default; authors = lxuechen's local_ffg.py (lr 1e-3, 100 draws per step,
    check every 100, stop after more than 10 checks without improvement, no cap in practice);
    accurate = README's accurate option (lr 1e-2, 10 draws, 3 reductions by 10)."""
    assert LocalFitConfig.named("reference") == LocalFitConfig() == GapProtocol().local_fit
    assert dataclasses.asdict(LocalFitConfig()) == {
        "learning_rate": 1e-3, "num_samples": 1, "check_every": 100, "patience": 10, "max_steps": 20_000,
        "lr_reductions": 0, "lr_reduction_factor": 0.1, "block_rows": 0}
    assert LOCAL_FIT_PROTOCOLS["authors"] == dataclasses.replace(LocalFitConfig(), num_samples=100, patience=11,
                                                                 max_steps=1_000_000)
    assert LOCAL_FIT_PROTOCOLS["accurate"] == dataclasses.replace(LocalFitConfig(), learning_rate=1e-2,
                                                                  num_samples=10, lr_reductions=3)
    for name, config in LOCAL_FIT_PROTOCOLS.items():
        assert config.protocol_name() == name
        assert GapProtocol(local_fit=name).local_fit == config
        assert apply_overrides(GapConfig(), [f"protocol.local_fit={name}"]).protocol.local_fit == config
        assert dataclasses.replace(config, block_rows=64).protocol_name() == name  # batching only
    assert dataclasses.replace(LocalFitConfig(), patience=11).protocol_name() == "custom"
    # a field set after the name changes that field only, and the settings are then "custom"
    both = apply_overrides(GapConfig(), ["protocol.local_fit=authors", "protocol.local_fit.max_steps=5000"])
    assert both.protocol.local_fit == dataclasses.replace(LOCAL_FIT_PROTOCOLS["authors"], max_steps=5000)
    assert both.protocol.local_fit.protocol_name() == "custom"
    with pytest.raises(ValueError, match=re.escape("unknown local fit protocol 'fast'; known: ('reference', ")):
        GapProtocol(local_fit="fast")
