"""The linear-Gaussian oracle (probabilistic PCA / factor analysis)

    p(z) = N(0, I_d),   p(x | z) = N(W z + b, diag(psi)),   theta = {"W", "b", "log_psi"}

is a `LatentVariableModel` like any decoder (its likelihood runs in float32 JAX, so the
library's estimators use it unchanged), with closed forms computed in float64 numpy:

    p(x)      = N(b, C),        C = W W^T + diag(psi)
    p(z | x)  = N(m(x), S),     S = Lambda^-1,  Lambda = I + W^T diag(psi)^-1 W,
                                m(x) = S W^T diag(psi)^-1 (x - b)
    L(x; q)   = E_q[log p(x|z)] + E_q[log p(z)] + H(q)   for any Gaussian q = N(mu, Sigma)
              = log p(x) - KL(q || p(z|x))
    q*_FFG    = N(m(x), diag(1 / Lambda_jj))    (the fully factorised Gaussian closest in
                KL(q || p): its precisions are the diagonal of the posterior precision)
    gap_FFG   = log p(x) - L(x; q*_FFG) = KL(q*_FFG || p(z|x))
              = 1/2 (sum_j log Lambda_jj - log det Lambda)   (the same for every x)

m(x) is linear in x and S does not depend on x, so a *linear* encoder represents q*_FFG
exactly (`vi_jax.oracles.linear_encoders.best_linear_encoder`); its amortization gap is 0, and
the amortization gap of any encoder is the closed form mean_i [L(x_i; q*_FFG) - L(x_i; q_phi(x_i))]
(`amortization_gap`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from vi_jax.array_types import Array, Params
from vi_jax.models import LatentVariableModel

LOG_2PI = math.log(2.0 * math.pi)


def linear_gaussian_params(key: Array, latent_dim: int, data_dim: int, *,
                           psi_range: tuple[float, float] = (0.1, 1.0)) -> dict:
    """A random true model: W_ij ~ N(0, 1), b_i ~ N(0, 1), psi_i ~ Uniform(psi_range) (float32).

    With W of unit-variance entries the posterior precision Lambda = I + W^T diag(psi)^-1 W has
    off-diagonal entries comparable to its diagonal, so the posterior is correlated and the FFG
    approximation gap is clearly positive.
    """
    k_w, k_b, k_psi = jax.random.split(key, 3)
    psi = jax.random.uniform(k_psi, (data_dim,), minval=psi_range[0], maxval=psi_range[1])
    return {"W": jax.random.normal(k_w, (data_dim, latent_dim)),
            "b": jax.random.normal(k_b, (data_dim,)),
            "log_psi": jnp.log(psi)}


def linear_gaussian(W, b, log_psi) -> LatentVariableModel:
    """p(x|z) = N(W z + b, diag(exp(log_psi))) with p(z) = N(0, I), as a LatentVariableModel.

    `init(key)` ignores the key and returns these (true) parameters as float32
    {"W", "b", "log_psi"}: the oracle is a fixed, known model, so `amortized_vi(...).init`
    starts its decoder at the truth (freeze it with `encoder_only` to train an encoder against
    the true model). To fit a linear-Gaussian decoder from elsewhere, pass the starting values
    here. The closed-form functions of this module take theta explicitly, so they also hold for
    any theta a training run produces.
    """
    theta = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32),
             "log_psi": jnp.asarray(log_psi, jnp.float32)}
    data_dim, latent_dim = theta["W"].shape
    if theta["b"].shape != (data_dim,) or theta["log_psi"].shape != (data_dim,):
        raise ValueError(f"W {theta['W'].shape} needs b and log_psi of shape ({data_dim},), got "
                         f"{theta['b'].shape} and {theta['log_psi'].shape}")

    def mean(params: Params, z: Array) -> Array:
        return params["W"] @ z + params["b"]

    def likelihood(params: Params, z: Array) -> distrax.Distribution:
        return distrax.MultivariateNormalDiag(mean(params, z), jnp.exp(0.5 * params["log_psi"]))

    def init(key: Array) -> Params:
        # fresh buffers on every call: `make_epoch` donates its state, which would otherwise
        # delete the arrays this closure (and the caller) hold
        return jax.tree.map(jnp.array, theta)

    return LatentVariableModel(latent_dim=latent_dim, data_dim=data_dim, init=init,
                               likelihood=likelihood, mean=mean)


def sample_data(key: Array, theta: Params, n: int, *, return_latents: bool = False):
    """n draws x ~ p(x) (float32 [n, D]) by ancestral sampling z ~ N(0, I), x ~ p(x | z).

    Deterministic given `key`; `return_latents=True` also returns the z [n, d] that made them.
    """
    W, b, log_psi = (jnp.asarray(theta[k], jnp.float32) for k in ("W", "b", "log_psi"))
    k_z, k_e = jax.random.split(key)
    z = jax.random.normal(k_z, (n, W.shape[1]))
    x = z @ W.T + b[None, :] + jax.random.normal(k_e, (n, W.shape[0])) * jnp.exp(0.5 * log_psi)[None, :]
    return (x, z) if return_latents else x


class Gaussian(NamedTuple):
    """A Gaussian over z with mean [..., d] and a covariance / precision [d, d] shared by rows."""

    mean: np.ndarray
    cov: np.ndarray
    precision: np.ndarray


def _numpy_theta(theta: Params):
    W = np.asarray(theta["W"], np.float64)
    b = np.asarray(theta["b"], np.float64)
    psi = np.exp(np.asarray(theta["log_psi"], np.float64))
    return W, b, psi


def _rows(x) -> np.ndarray:
    return np.atleast_2d(np.asarray(x, np.float64))


def _squeeze_like(values: np.ndarray, x) -> np.ndarray:
    return values[0] if np.ndim(x) == 1 else values


def posterior_precision(theta: Params) -> np.ndarray:
    """Lambda = I + W^T diag(psi)^-1 W, the same for every x (float64 [d, d])."""
    W, _, psi = _numpy_theta(theta)
    return np.eye(W.shape[1]) + W.T @ (W / psi[:, None])


def marginal_covariance(theta: Params) -> np.ndarray:
    """C = W W^T + diag(psi), the covariance of p(x) = N(b, C) (float64 [D, D])."""
    W, _, psi = _numpy_theta(theta)
    return W @ W.T + np.diag(psi)


def posterior(theta: Params, x) -> Gaussian:
    """p(z | x) = N(m(x), S): m(x) = S W^T diag(psi)^-1 (x - b) [N, d] (or [d] for one x), S."""
    W, b, psi = _numpy_theta(theta)
    precision = posterior_precision(theta)
    cov = linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = (_rows(x) - b) @ (W / psi[:, None]) @ cov
    return Gaussian(_squeeze_like(mean, x), cov, precision)


def log_marginal(theta: Params, x) -> np.ndarray:
    """log p(x) = log N(x; b, W W^T + diag(psi)), float64, for x [D] or rows [N, D].

    Computed in the latent space (Woodbury identity and matrix determinant lemma), O(d^3 + N D d):
        r^T C^-1 r = r^T Psi^-1 r - u^T Lambda^-1 u,  u = W^T Psi^-1 r;
        log det C  = log det Lambda + sum_i log psi_i.
    """
    W, b, psi = _numpy_theta(theta)
    r = _rows(x) - b
    precision = posterior_precision(theta)
    chol = linalg.cho_factor(precision, lower=True)
    u = (r / psi) @ W
    quad = np.sum(r * r / psi, axis=1) - np.sum(u * linalg.cho_solve(chol, u.T).T, axis=1)
    log_det = 2.0 * np.sum(np.log(np.diag(chol[0]))) + np.sum(np.log(psi))
    return _squeeze_like(-0.5 * (W.shape[0] * LOG_2PI + log_det + quad), x)


def _q_moments(q: dict, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean [n, d], cov [n, d, d]) of a Gaussian q given as {"mean", "log_scale"} (diagonal,
    the project's FFG parameters) or {"mean", "cov"} (full); rows broadcast to n."""
    mean = np.broadcast_to(np.asarray(q["mean"], np.float64), (n, d))
    if "log_scale" in q:
        var = np.exp(2.0 * np.broadcast_to(np.asarray(q["log_scale"], np.float64), (n, d)))
        cov = var[:, :, None] * np.eye(d)[None]
    elif "cov" in q:
        cov = np.broadcast_to(np.asarray(q["cov"], np.float64), (n, d, d))
    else:
        raise ValueError(f"q must hold 'log_scale' (diagonal) or 'cov' (full), got keys {sorted(q)}")
    return mean, cov


def gaussian_elbo(theta: Params, x, q: dict) -> np.ndarray:
    """L(x; q) in closed form for a Gaussian q (diagonal {"mean", "log_scale"} or full
    {"mean", "cov"}; leading N axis matching the rows of x, or one q for all rows), float64:

        E_q log p(x|z) = -1/2 sum_i [log 2 pi psi_i + ((x - W mu - b)_i^2 + (W Sigma W^T)_ii) / psi_i]
        E_q log p(z)   = -1/2 [d log 2 pi + |mu|^2 + tr Sigma]
        H(q)           =  1/2 [d log 2 pi e + log det Sigma]

    (computed directly from these, not via log p(x) - KL, so the identity can be tested).
    """
    W, b, psi = _numpy_theta(theta)
    rows = _rows(x)
    n, d = rows.shape[0], W.shape[1]
    mean, cov = _q_moments(q, n, d)
    resid = rows - mean @ W.T - b
    WtPsiW = W.T @ (W / psi[:, None])
    expected_lik = -0.5 * (np.sum(LOG_2PI + np.log(psi)) + np.sum(resid**2 / psi, axis=1)
                           + np.einsum("jk,nkj->n", WtPsiW, cov))
    expected_prior = -0.5 * (d * LOG_2PI + np.sum(mean**2, axis=1) + np.trace(cov, axis1=1, axis2=2))
    entropy = 0.5 * (d * (LOG_2PI + 1.0) + np.linalg.slogdet(cov)[1])
    return _squeeze_like(expected_lik + expected_prior + entropy, x)


def kl_to_posterior(theta: Params, x, q: dict) -> np.ndarray:
    """KL(q || p(z|x)) = 1/2 [tr(Lambda Sigma) + (m - mu)^T Lambda (m - mu) - d
    + log det S - log det Sigma], float64 (q as in `gaussian_elbo`)."""
    post = posterior(theta, x)
    rows = _rows(x)
    d = post.cov.shape[0]
    mean, cov = _q_moments(q, rows.shape[0], d)
    diff = np.atleast_2d(post.mean) - mean
    kl = 0.5 * (np.einsum("jk,nkj->n", post.precision, cov)
                + np.einsum("nj,jk,nk->n", diff, post.precision, diff) - d
                - np.linalg.slogdet(post.precision)[1] - np.linalg.slogdet(cov)[1])
    return _squeeze_like(kl, x)


def optimal_ffg(theta: Params, x) -> dict:
    """q*_FFG(x) = argmax over diagonal Gaussians of L(x; q): {"mean": m(x), "log_scale":
    -1/2 log diag(Lambda)} (float64; log_scale broadcast to the rows of x)."""
    post = posterior(theta, x)
    log_scale = -0.5 * np.log(np.diag(post.precision))
    return {"mean": post.mean, "log_scale": np.broadcast_to(log_scale, np.shape(post.mean)).copy()}


def ffg_elbo_gradient(theta: Params, x, q: dict) -> dict:
    """grad of L(x; q) w.r.t. a diagonal q's {"mean", "log_scale"} in closed form (float64, rows
    like `gaussian_elbo`), from differentiating its three terms:

        dL/dmu         = W^T diag(psi)^-1 (x - b - W mu) - mu = Lambda (m(x) - mu)
        dL/dlog sigma_j = 1 - Lambda_jj sigma_j^2

    (zero exactly at q*_FFG); the truth for Monte-Carlo gradient estimators.
    """
    post = posterior(theta, x)
    mean = np.broadcast_to(np.asarray(q["mean"], np.float64), np.shape(np.atleast_2d(post.mean)))
    var = np.exp(2.0 * np.broadcast_to(np.asarray(q["log_scale"], np.float64), mean.shape))
    grad_mean = (np.atleast_2d(post.mean) - mean) @ post.precision
    grad_log_scale = 1.0 - np.diag(post.precision)[None, :] * var
    return {"mean": _squeeze_like(grad_mean, x), "log_scale": _squeeze_like(grad_log_scale, x)}


def ffg_approximation_gap(theta: Params) -> float:
    """log p(x) - L(x; q*_FFG) = KL(q*_FFG || p(z|x)) = 1/2 (sum_j log Lambda_jj - log det Lambda),
    the same for every x (Hadamard's inequality makes it >= 0, = 0 iff Lambda is diagonal)."""
    precision = posterior_precision(theta)
    return float(0.5 * (np.sum(np.log(np.diag(precision))) - np.linalg.slogdet(precision)[1]))


def amortization_gap(theta: Params, x, q: dict) -> np.ndarray:
    """L(x_i; q*_FFG) - L(x_i; q_i) per row, in closed form (q: an encoder's outputs)."""
    return gaussian_elbo(theta, x, optimal_ffg(theta, x)) - gaussian_elbo(theta, x, q)


def chi_square_to_posterior(theta: Params, x, q: dict) -> np.ndarray:
    """chi^2(p(z|x) || q) = E_q[(p(z|x) / q(z))^2] - 1 = Var_q(w) / p(x)^2 for the importance
    weights w = p(x, z) / q(z), in closed form; inf unless 2 Lambda - Sigma^-1 is positive definite.

    It sets the IWAE bias: log p(x) - E[L_K] = chi^2 / (2K) + O(1/K^2) (delta method), and the
    relative standard error of the K-sample weight average, sqrt(chi^2 / K).
    """
    post = posterior(theta, x)
    rows = _rows(x)
    d = post.cov.shape[0]
    mean, cov = _q_moments(q, rows.shape[0], d)
    out = np.empty(rows.shape[0])
    # integral p^2 / q = N-normaliser algebra with precision A = 2 Lambda - Sigma^-1
    for i in range(rows.shape[0]):
        q_prec = linalg.inv(cov[i])
        A = 2.0 * post.precision - q_prec
        eig = np.linalg.eigvalsh(A)
        if eig.min() <= 0:
            out[i] = np.inf
            continue
        mp = np.atleast_2d(post.mean)[i]
        h = 2.0 * post.precision @ mp - q_prec @ mean[i]
        log_int = (np.linalg.slogdet(post.precision)[1] + 0.5 * np.linalg.slogdet(cov[i])[1]
                   - 0.5 * np.linalg.slogdet(A)[1]
                   - mp @ post.precision @ mp + 0.5 * mean[i] @ q_prec @ mean[i]
                   + 0.5 * h @ linalg.solve(A, h))
        out[i] = np.expm1(log_int)
    return _squeeze_like(out, x)
