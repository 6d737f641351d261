"""Shared test setup: implicit rank promotion is an error (catches silent broadcasting in
vmapped code), small shared models, and a per-worker persistent compilation cache, so JAX
compiles as little as possible."""
import contextlib

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache

jax.config.update("jax_numpy_rank_promotion", "raise")

from vi_jax import networks  # noqa: E402
from vi_jax.distributions import BERNOULLI  # noqa: E402
from vi_jax.families import diagonal_gaussian  # noqa: E402
from vi_jax.models import decoder_model  # noqa: E402


class TinyProblem:
    """A small Bernoulli decoder model (z in R^2, x in {0,1}^5), one datapoint and one q."""

    latent_dim, data_dim = 2, 5

    def __init__(self):
        self.family = diagonal_gaussian(self.latent_dim)
        dec = networks.decoder((8,), BERNOULLI.num_outputs(self.data_dim), "tanh")
        self.model = decoder_model(dec, BERNOULLI, self.latent_dim, self.data_dim)
        self.theta = self.model.init(jax.random.PRNGKey(1))
        self.x = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
        self.q_params = {"mean": jnp.array([0.3, -0.5]), "log_scale": jnp.array([-0.4, 0.2])}


@pytest.fixture(scope="session", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
    """Each test worker keeps its compiled executables on disk for the session: experiment
    scripts rebuild their jitted closures on every call, so a rerun that checks reproduction,
    or a later test or child process on the same shapes, loads the executable instead of
    compiling it again (compilation is most of the suite's time). Yields the environment that
    hands the cache to a child process of this worker (children run one at a time, while the
    worker waits, so no two processes write the directory at once)."""
    directory = str(tmp_path_factory.mktemp("xla_cache"))
    settings = {"jax_compilation_cache_dir": directory, "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # in case anything compiled before this fixture ran
    yield {name.upper(): str(value) for name, value in settings.items()}


@pytest.fixture(scope="session")
def tiny():
    return TinyProblem()


@pytest.fixture(scope="session")
def trained():
    """A small VAE (2-D latent, 32 hidden units) trained 30 epochs on digits: (vae, params, the
    first 40 test images)."""
    from vi_jax import data
    from vi_jax.vae import VAEConfig, build_vae, train_vae

    config = VAEConfig(latent_dim=2, encoder_hidden=(32,), decoder_hidden=(32,), batch_size=100,
                       num_epochs=30, eval_every=0)
    dataset = data.load_dataset("digits")
    vae = build_vae(config, dataset.dim)
    result = train_vae(vae, config, dataset.train, progress=False)
    return vae, result.state.params, jnp.asarray(dataset.test[:40])


@pytest.fixture
def killed_in_the_last_gap_stage():
    """A context in which evaluate_gaps raises RuntimeError("interrupted") when it reaches its last
    stage (the semi-amortized refinement), as a kill would, after its other stages are saved."""
    def interrupted(*args, **kwargs):
        raise RuntimeError("interrupted")

    @contextlib.contextmanager
    def context():
        with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="interrupted"):
            patch.setattr("vi_jax.gap.make_refine", interrupted)
            yield
    return context
