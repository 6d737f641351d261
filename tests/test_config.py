"""Config overrides from the command line."""
import pytest

from vi_jax.config import apply_overrides
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
    pytest.param({"batch_size": 0}, "batch_size must be >= 1", id="batch-size"),
    pytest.param({"learning_rate": -1.0}, "learning_rate must be > 0", id="learning-rate"),
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
