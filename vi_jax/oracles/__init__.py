"""Exact oracles: models whose log p(x), posterior and optimal q* are known, to check every
estimator and optimiser of the library against truth rather than against itself.

    linear_gaussian_model.py  the linear-Gaussian model (probabilistic PCA / factor analysis) and
                              its closed forms in float64: log p(x), the posterior, the ELBO and
                              KL of any Gaussian q, q*_FFG, ELBO gradients, the FFG gap, chi^2
    linear_encoders.py        encoders affine in x on that model: the best one and its
                              amortization gap in closed form, LinearEncoder, train_encoder
    quadrature.py             any model with a 1-D or 2-D latent: log p(x), the posterior, exact
                              ELBOs and q*_FFG by quadrature, each with its own accuracy

Every public name of the three is re-exported here, so `from vi_jax.oracles import X` and
`oracles.X` need not know which module holds X.
"""
from __future__ import annotations

from vi_jax.array_types import Array, Params
from vi_jax.oracles.linear_encoders import (AffineEncoderMap, LinearEncoder, best_linear_encoder, encoder_only,
                                            optimal_affine_encoder, train_encoder)
from vi_jax.oracles.linear_gaussian_model import (LOG_2PI, Gaussian, amortization_gap, chi_square_to_posterior,
                                                  ffg_approximation_gap, ffg_elbo_gradient, gaussian_elbo,
                                                  kl_to_posterior, linear_gaussian, linear_gaussian_params,
                                                  log_marginal, marginal_covariance, optimal_ffg, posterior,
                                                  posterior_precision, sample_data)
from vi_jax.oracles.quadrature import (STEP_SIZES, GridIntegral, OptimalFFG, Quadrature, QuadratureConfig,
                                       QuadratureELBO, grid_log_marginal, quadrature_chi_square, quadrature_elbo,
                                       quadrature_log_marginal, quadrature_optimal_ffg)

__all__ = ["AffineEncoderMap", "Array", "Gaussian", "GridIntegral", "LOG_2PI", "LinearEncoder", "OptimalFFG",
           "Params", "Quadrature", "QuadratureConfig", "QuadratureELBO", "STEP_SIZES", "amortization_gap",
           "best_linear_encoder", "chi_square_to_posterior", "encoder_only", "ffg_approximation_gap",
           "ffg_elbo_gradient", "gaussian_elbo", "grid_log_marginal", "kl_to_posterior", "linear_gaussian",
           "linear_gaussian_params", "log_marginal", "marginal_covariance", "optimal_affine_encoder",
           "optimal_ffg", "posterior", "posterior_precision", "quadrature_chi_square", "quadrature_elbo",
           "quadrature_log_marginal", "quadrature_optimal_ffg", "sample_data", "train_encoder"]
