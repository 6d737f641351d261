"""vi_jax: variational inference in latent-variable models, written in JAX.

Modules:
  distributions  prior, observation models (likelihoods), sampling helper
  families       variational families q(z) (diagonal Gaussian, ...)
  models         latent-variable models p(x, z) = p(x|z; theta) p(z)
  networks       Flax MLP encoder / decoder
  elbo           per-datapoint ELBO and IWAE estimators (vmapped, jitted by callers)
  train          amortized VI as an init/step algorithm and a fused-epoch training loop
  vae            the VAE configuration and its end-to-end training/evaluation
  data           datasets (digits, binarized MNIST, TFDS) and input validation
"""

__version__ = "0.1.0"
