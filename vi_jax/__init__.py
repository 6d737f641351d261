"""vi_jax: variational inference in latent-variable models, written in JAX.

The public API is `vi_jax.__all__` (vi_jax.train_vae, vi_jax.evaluate_gaps, vi_jax.get_family,
...), each name imported from its module on first use. Modules:
  distributions  prior, observation models (likelihoods), sampling helper
  families/      variational families q(z) and their registry (get_family): diagonal and
                 full-covariance Gaussian, mixture of diagonal Gaussians, coupling flow (distrax
                 MaskedCoupling), inverse autoregressive flow (MADE conditioners, our bijector)
  array_types    the Array, Params and PRNGKey annotations shared by the modules
  stats          mean_and_stderr: the mean over datapoints and its standard error
  models         latent-variable models p(x, z) = p(x|z; theta) p(z)
  networks       Flax MLP encoder / decoder
  elbo           per-datapoint ELBO (reparameterized, STL or score-function gradients; stratified
                 over mixture components) and IWAE estimators (vmapped, jitted by callers)
  ais            log p(x) by annealed importance sampling (HMC transitions) and naive prior Monte Carlo
  estimators     the registry of gradient estimators (reparameterized, STL, score function with a
                 leave-one-out baseline), each a GradientEstimator value selected by name
  local          per-datapoint q tables: per-row optimizer state, full-set fits, refinement
  train          amortized / non-amortized / semi-amortized VI as init/step algorithms, fused epochs
  loop           the one training loop (run_epochs): NaN guard, history, metrics, checkpoints, resume
  streams        the named key streams of a seeded run
  vae            the VAE configuration and its end-to-end training/evaluation
  cvae           conditional VAE p(x|c): learned prior p(z|c), whitened per-condition model
  vqvae          VQ-VAE: codebook, nearest-code quantization, straight-through gradient, usage
  gap            the gap decomposition (approximation vs amortization) per datapoint
  oracles/       exact oracles: linear_gaussian_model (closed forms of the linear-Gaussian model),
                 linear_encoders (the best affine encoder; train_encoder), quadrature (1-D/2-D latents)
  mixture_model  Gaussian mixture: exact log p(x) and posterior, categorical q (enumeration, score function)
  checkpoint     orbax checkpoints with checksums and config checks; StageCache (resumable stages)
  rundir         a run's workdir as one unit: lock, staging, MANIFEST.json; sharding: SPMD
  artifacts      published results (results/NAME) and their verification
  data           datasets (digits, binarized MNIST, TFDS) and input validation
  visualize      what pictures show: prior samples, reconstructions, latent interpolations, the 2-D
                 manifold on prior quantiles, training curves (drawn by plotting)
  config, storage, provenance, plotting   overrides, atomic files, versions/device, figures
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public API, by the module that defines each name; imported on first use (PEP 562), so that
# `import vi_jax` stays cheap and `vi_jax.train_vae` works without importing vi_jax.vae first.
_PUBLIC = {
    "VariationalFamily": "families", "FAMILIES": "families", "get_family": "families",
    "LatentVariableModel": "models",
    "make_elbo": "elbo", "make_iwae": "elbo", "map_datapoints": "elbo",
    "ESTIMATORS": "estimators", "get_estimator": "estimators",
    "AisConfig": "ais", "make_ais": "ais",
    "LocalFitConfig": "local", "make_local_fit": "local",
    "amortized_vi": "train", "non_amortized_vi": "train", "semi_amortized_vi": "train", "make_epoch": "train",
    "run_epochs": "loop",
    "VAEConfig": "vae", "build_vae": "vae", "train_vae": "vae", "load_trained_vae": "vae",
    "GapProtocol": "gap", "evaluate_gaps": "gap",
    "load_dataset": "data",
    "mean_and_stderr": "stats",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vi_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vi_jax.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
