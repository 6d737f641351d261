"""vi_jax: variational inference in latent-variable models, written in JAX.

Modules:
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
  estimators     score-function (REINFORCE) surrogate with a leave-one-out baseline
  local          per-datapoint q tables: per-row optimizer state, full-set fits, refinement
  train          amortized / non-amortized / semi-amortized VI as init/step algorithms, fused epochs
  vae            the VAE configuration and its end-to-end training/evaluation
  cvae           conditional VAE p(x|c): learned prior p(z|c), whitened per-condition model
  vqvae          VQ-VAE: codebook, nearest-code quantization, straight-through gradient, usage
  gap            the gap decomposition (approximation vs amortization) per datapoint
  oracles/       exact oracles: linear_gaussian_model (closed forms of the linear-Gaussian model),
                 linear_encoders (the best affine encoder; train_encoder), quadrature (1-D/2-D latents)
  mixture_model  Gaussian mixture: exact log p(x) and posterior, categorical q (enumeration, score function)
  checkpoint     orbax checkpoints with config checks; sharding: SPMD over several devices
  data           datasets (digits, binarized MNIST, TFDS) and input validation
  visualize      what pictures show: prior samples, reconstructions, latent interpolations, the 2-D
                 manifold on prior quantiles, training curves (drawn by plotting)
  config, io, provenance, plotting   overrides, atomic files, versions/device, figures
"""

__version__ = "0.1.0"
