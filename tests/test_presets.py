"""Published presets: every hyperparameter against the papers, and the learning rate of every epoch."""
import dataclasses
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from vi_jax import data
from vi_jax.presets import PRESETS, cremer_schedule, get_preset, iwae_schedule, scale_epochs
from vi_jax.train import stage_of_epoch, staged_learning_rate
from vi_jax.vae import load_training_data

# Burda et al. 2015, section 5 / appendix: stage i = 1..8 lasts 3^(i-1) epochs at
# 1e-4 * round(10^(1 - (i-1)/7), 1); the rounded factors written out.
IWAE_RATES = (1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4)
IWAE_EPOCHS = (1, 3, 9, 27, 81, 243, 729, 2187)

IWAE_COMMON = dict(latent_dim=50, encoder_hidden=(200, 200), decoder_hidden=(200, 200), activation="tanh",
                   kernel_init="glorot_uniform", likelihood="bernoulli", family="gaussian",
                   decoder_output_bias="data_mean", objective="iwae", batch_size=20, adam_eps=1e-4,
                   num_epochs=3280, final_iwae_samples=5000, kl_warmup_epochs=0, mode="amortized")
CREMER_COMMON = dict(dataset="binarized_mnist", latent_dim=50, encoder_hidden=(200, 200),
                     decoder_hidden=(200, 200), activation="elu", likelihood="bernoulli", objective="elbo",
                     num_samples=1, batch_size=100, adam_eps=1e-4, num_epochs=3280, kl_warmup_epochs=400,
                     warmup_term="entropy", final_iwae_samples=5000, mode="amortized")

EXPECTED = {
    "iwae_k1": dict(IWAE_COMMON, num_samples=1, dataset="binarized_mnist", dynamic_binarization=False),
    "iwae_k5": dict(IWAE_COMMON, num_samples=5, dataset="binarized_mnist", dynamic_binarization=False),
    "iwae_k50": dict(IWAE_COMMON, num_samples=50, dataset="binarized_mnist", dynamic_binarization=False),
    "iwae_k1_dynamic": dict(IWAE_COMMON, num_samples=1, dataset="mnist", dynamic_binarization=True),
    "iwae_k5_dynamic": dict(IWAE_COMMON, num_samples=5, dataset="mnist", dynamic_binarization=True),
    "iwae_k50_dynamic": dict(IWAE_COMMON, num_samples=50, dataset="mnist", dynamic_binarization=True),
    "cremer_ffg": dict(CREMER_COMMON, family="gaussian"),
    "cremer_flow": dict(CREMER_COMMON, family="flow"),
}
PUBLISHED = {"iwae_k1": -88.71, "iwae_k5": -87.63, "iwae_k50": -87.10, "iwae_k1_dynamic": -86.76,
             "iwae_k50_dynamic": -84.78}


def test_every_preset_is_tested():
    assert set(EXPECTED) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_sets_the_published_hyperparameters(name):
    preset = get_preset(name)
    preset.vae.validate()
    for field, value in EXPECTED[name].items():
        assert getattr(preset.vae, field) == value, field
    assert preset.published.get("test_log_px") == PUBLISHED.get(name)
    assert preset.gap_protocol == name.startswith("cremer")
    if preset.gap_protocol:  # log p(x) = max(IWAE, AIS), AIS from q* of the decoder's family
        family = {"gaussian": "ffg", "flow": "flow"}[preset.vae.family]
        assert preset.gap_overrides == ("protocol.local_fit=accurate", f"protocol.ais_proposal={family}")


@pytest.mark.parametrize("name", ["iwae_k1", "cremer_ffg"])
def test_schedule_gives_the_published_rate_at_every_epoch(name):
    """Every epoch's first and last optimizer update gets the published rate of its stage."""
    config = get_preset(name).vae
    if name.startswith("iwae"):
        epochs, rates = IWAE_EPOCHS, IWAE_RATES
    else:  # Cremer et al.: stage i = 0..7 lasts 3^i epochs at 1e-3 * 10^(-i/7)
        epochs, rates = IWAE_EPOCHS, tuple(1e-3 * 10 ** (-i / 7) for i in range(8))
    assert config.stage_epochs == epochs
    np.testing.assert_allclose(config.stage_learning_rates, rates, rtol=1e-12)
    steps_per_epoch = 7
    schedule = staged_learning_rate(config.stage_epochs, config.stage_learning_rates, steps_per_epoch)
    epoch = np.arange(1, 3281)
    published = np.repeat(rates, epochs)
    first_update, last_update = (epoch - 1) * steps_per_epoch, epoch * steps_per_epoch - 1
    for update in (first_update, last_update):
        got = np.asarray(schedule(jnp.asarray(update, jnp.int32)))
        np.testing.assert_allclose(got, published, rtol=1e-6)
    assert [stage_of_epoch(config.stage_epochs, e) for e in (1, 2, 5, 14, 41, 122, 365, 1094, 3280)] == \
        [1, 2, 3, 4, 5, 6, 7, 8, 8]


def test_schedule_functions_match_their_formulas():
    epochs, rates = iwae_schedule()
    assert epochs == IWAE_EPOCHS
    np.testing.assert_allclose(rates, IWAE_RATES, rtol=1e-12)
    epochs, rates = cremer_schedule()
    assert epochs == IWAE_EPOCHS and rates[0] == 1e-3 and np.isclose(rates[-1], 1e-4)


def test_epochs_scale_shortens_every_stage():
    config = get_preset("cremer_ffg").vae
    short = scale_epochs(config, 0.01)
    assert short.stage_epochs == (1, 1, 1, 1, 1, 2, 7, 22)
    assert short.num_epochs == 36 and short.kl_warmup_epochs == 4  # ceil(0.01 * 400)
    assert short.stage_learning_rates == config.stage_learning_rates
    short.validate()
    assert scale_epochs(config, 1.0) == config
    with pytest.raises(ValueError, match="epochs scale must be in"):
        scale_epochs(config, 0.0)


@pytest.mark.parametrize("change,message", [
    (dict(stage_epochs=(1, 2), stage_learning_rates=(1e-3,)), "one entry per stage"),
    (dict(stage_epochs=(1, 2), stage_learning_rates=(1e-3, 1e-4), num_epochs=4), "must equal the stages"),
    (dict(objective="iwae", kl_warmup_epochs=3), "objective=iwae needs"),
    (dict(objective="wake-sleep"), "unknown training objective"),
    (dict(decoder_output_bias="random"), "unknown decoder_output_bias"),
    (dict(adam_eps=0.0), "adam_eps must be a finite number > 0"),
    (dict(objective="elbo", dynamic_binarization=True, mode="non_amortized"), "non_amortized batches"),
])
def test_bad_schedule_and_objective_options_are_named(change, message):
    config = dataclasses.replace(get_preset("iwae_k1").vae, **change)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown preset 'iwae_k2'"):
        get_preset("iwae_k2")


@pytest.mark.parametrize("name", ["iwae_k1_dynamic", "iwae_k5_dynamic", "iwae_k50_dynamic"])
def test_dynamic_presets_load_real_mnist(name):
    """The dynamic-binarization presets' data through the training path: grey training images
    (resampled each step), a test split of exact 0/1 draws; the IDX loader's own checks are in
    tests/test_data.py."""
    data_dir = Path(os.environ.get(data.DATA_DIR_ENV) or Path(__file__).parents[2] / "shared" / "data")
    if not any(data_dir.glob("**/t10k-images-idx3-ubyte*")):
        pytest.skip(f"real MNIST IDX files not found under {data_dir}; set {data.DATA_DIR_ENV} to run this test")
    dataset, train, test = load_training_data(get_preset(name).vae, str(data_dir))
    assert dataset.name == "mnist" and train.shape == (60000, 784) and test.shape == (10000, 784)
    assert len(np.unique(train)) == 256  # grey levels k / 255
    assert set(np.unique(test)) == {0.0, 1.0}
    # each test pixel is one Bernoulli(grey) draw: the mean ink matches the grey mean within sampling error
    grey_ink = dataset.test.sum()
    assert abs(test.sum() - grey_ink) < 5 * np.sqrt(np.sum(dataset.test * (1 - dataset.test)))
