"""Linear amortized encoders on the linear-Gaussian oracle (`linear_gaussian_model`).

Its posterior mean m(x) is affine in x and its posterior covariance does not depend on x, so
the best encoder among those affine in x (or in a subset of x's coordinates: a deliberately
restricted encoder) and its amortization gap are known in closed form
(`optimal_affine_encoder`, `best_linear_encoder`). `LinearEncoder` is that class as a Flax
module, and `train_encoder` fits one by amortized VI against the fixed, true model
(`encoder_only` freezes the decoder), so a trained encoder's gap can be checked against the
optimum.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax.array_types import Array, Params
from vi_jax.families import VariationalFamily
from vi_jax.loop import run_epochs
from vi_jax.metrics import MetricsTarget
from vi_jax.models import LatentVariableModel
from vi_jax.oracles.linear_gaussian_model import _numpy_theta, _rows, posterior, posterior_precision
from vi_jax.train import TrainState, amortized_vi, make_epoch


class AffineEncoderMap(NamedTuple):
    """An encoder output that is affine in the inputs it sees:
    flat [mean, log_scale] = x[visible] @ kernel + bias (kernel [V, 2 d], bias [2 d]), float64."""

    kernel: np.ndarray
    bias: np.ndarray
    visible: Optional[tuple[int, ...]]  # None: every coordinate of x


def optimal_affine_encoder(theta: Params, data=None, visible: Optional[Sequence[int]] = None
                           ) -> tuple[AffineEncoderMap, float]:
    """The best encoder among those affine in x[visible], and its mean amortization gap on `data`.

    L(x; N(mu, diag sigma^2)) = L(x; q*_FFG) - 1/2 (mu - m(x))^T Lambda (mu - m(x))
                                - sum_j f(Lambda_jj sigma_j^2),   f(t) = (t - 1 - log t) / 2,
    so the scale part is best at the constant sigma_j^2 = 1 / Lambda_jj (a bias, zero kernel)
    and the mean part is a least-squares problem.
    visible=None: every input is seen; m(x) = A (x - b) with A = S W^T diag(psi)^-1 is itself
      affine, so the optimum is q*_FFG for every x and the gap is exactly 0 (data not needed).
    visible given (a restricted encoder): regress m(x_i) on [x_i[visible], 1] over `data`. With
      the same regressors for every output, the Lambda-weighted least-squares problem has the
      ordinary least-squares solution; gap = mean_i 1/2 r_i^T Lambda r_i for its residuals r_i.
    """
    W, b, psi = _numpy_theta(theta)
    D = W.shape[0]
    precision = posterior_precision(theta)
    cov = posterior(theta, np.zeros(D)).cov
    log_scale = -0.5 * np.log(np.diag(precision))
    A = cov @ (W / psi[:, None]).T  # [d, D]
    d = A.shape[0]
    if visible is None:
        return AffineEncoderMap(np.concatenate([A.T, np.zeros((D, d))], axis=1),
                                np.concatenate([-A @ b, log_scale]), None), 0.0
    if data is None:
        raise ValueError("a restricted (visible=...) encoder's optimum depends on the data; pass data")
    visible = tuple(int(v) for v in visible)
    rows = _rows(data)
    target = posterior(theta, rows).mean
    design = np.concatenate([rows[:, visible], np.ones((rows.shape[0], 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)  # [V + 1, d]
    resid = target - design @ coef
    gap = 0.5 * np.mean(np.einsum("nj,jk,nk->n", resid, precision, resid))
    kernel = np.concatenate([coef[:-1], np.zeros((len(visible), d))], axis=1)
    return AffineEncoderMap(kernel, np.concatenate([coef[-1], log_scale]), visible), float(gap)


def best_linear_encoder(theta: Params) -> dict:
    """Flax params of `networks.encoder(hidden=(), num_params=2 d)` (one Dense layer, flat output
    [mean, log_scale]) that outputs q*_FFG(x) for every x: amortization gap exactly 0 (up to
    float32 rounding of the parameters)."""
    affine, _ = optimal_affine_encoder(theta)
    return {"params": {"Dense_0": {"kernel": jnp.asarray(affine.kernel, jnp.float32),
                                   "bias": jnp.asarray(affine.bias, jnp.float32)}}}


class LinearEncoder(nn.Module):
    """An encoder affine in x[visible]: Dense(num_params)((x[visible] - shift) / scale).

    visible=None sees every input (the class that contains q*_FFG(x) exactly); a subset makes a
    deliberately restricted encoder. shift/scale (e.g. the training data's mean and standard
    deviation, see `standardized`) only reparameterise the same affine class: Adam on raw,
    uncentred inputs is badly conditioned (the log-scale kernel and bias are coupled through the
    inputs' mean) and converges orders of magnitude slower to the same optimum. The kernel
    starts at zero, so the untrained encoder outputs q = N(0, I) (the prior) for every x.
    """

    num_params: int
    visible: Optional[tuple[int, ...]] = None
    shift: Optional[tuple[float, ...]] = None
    scale: Optional[tuple[float, ...]] = None

    def _inputs(self, x: Array) -> Array:
        """x[..., visible], shifted and scaled (one datapoint [D] or a batch [..., D])."""
        if self.visible is not None:
            x = x[..., jnp.asarray(self.visible)]
        lead = (1,) * (x.ndim - 1)
        if self.shift is not None:
            x = x - jnp.asarray(self.shift, x.dtype).reshape(lead + (-1,))
        if self.scale is not None:
            x = x / jnp.asarray(self.scale, x.dtype).reshape(lead + (-1,))
        return x

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return nn.Dense(self.num_params, kernel_init=nn.initializers.zeros)(self._inputs(x))

    def params_from_affine(self, affine: AffineEncoderMap) -> dict:
        """This module's params computing the same function as `affine` (on raw x)."""
        if affine.visible != self.visible:
            raise ValueError(f"affine map sees {affine.visible}, this encoder sees {self.visible}")
        kernel, bias = np.asarray(affine.kernel), np.asarray(affine.bias)
        if self.scale is not None:
            kernel = kernel * np.asarray(self.scale)[:, None]
        if self.shift is not None:
            bias = bias + np.asarray(self.shift) @ np.asarray(affine.kernel)
        return {"params": {"Dense_0": {"kernel": jnp.asarray(kernel, jnp.float32),
                                       "bias": jnp.asarray(bias, jnp.float32)}}}

    @classmethod
    def standardized(cls, data, num_params: int, visible: Optional[Sequence[int]] = None):
        """A LinearEncoder whose inputs are shifted and scaled by `data`'s column mean and std."""
        rows = np.asarray(data, np.float64)
        if visible is not None:
            visible = tuple(int(v) for v in visible)
            rows = rows[:, visible]
        std = np.where(rows.std(axis=0) > 0, rows.std(axis=0), 1.0)
        return cls(num_params, visible, tuple(rows.mean(axis=0).tolist()), tuple(std.tolist()))


def encoder_only(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """`optimizer` on params["encoder"], zero updates on params["decoder"] (a fixed, true model)."""
    def labels(params):
        return {name: jax.tree.map(lambda _: "train" if name == "encoder" else "frozen", sub)
                for name, sub in params.items()}

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)


def train_encoder(key: Array, model: LatentVariableModel, family: VariationalFamily,
                  encoder: nn.Module, data, *, num_epochs: int, batch_size: int,
                  learning_rate: float = 3e-2, final_learning_rate: float = 1e-4,
                  num_samples: int = 1, metrics: MetricsTarget = None) -> Params:
    """Amortized VI (`vi_jax.train.amortized_vi`) of an encoder against a fixed model.

    The decoder is frozen at model.init(.) (the true parameters for an oracle); Adam's step size
    decays exponentially from learning_rate to final_learning_rate over the run, so the
    Monte-Carlo noise of the one-sample ELBO gradients averages out at the end. Epoch e uses key
    fold_in(key, e) (e = 1..num_epochs, vi_jax.loop); the encoder is initialised with
    fold_in(key, 0). Returns encoder params; FloatingPointError at the first NaN/inf ELBO.
    metrics (a path or a vi_jax.metrics writer): one "train" line per epoch (learning_rate: the
    rate of the epoch's first step).
    """
    data = jnp.asarray(data)
    steps_per_epoch = data.shape[0] // batch_size
    steps = num_epochs * steps_per_epoch
    schedule = optax.exponential_decay(learning_rate, steps, final_learning_rate / learning_rate)
    algo = amortized_vi(model, family, encoder, encoder_only(optax.adam(schedule)),
                        num_samples=num_samples, kl=family.kl_form)
    state: TrainState = algo.init(jax.random.fold_in(key, 0), data[0])
    rates = np.asarray(schedule(jnp.arange(num_epochs) * steps_per_epoch))

    def summarize(epoch, infos):
        elbo, loss = jax.device_get((infos.elbo.mean(), infos.loss.mean()))
        return {"train_elbo": float(elbo)}, {"train_loss": float(loss), "learning_rate": float(rates[epoch - 1])}

    return run_epochs(make_epoch(algo.step, batch_size), state, data, epoch_key=key, num_epochs=num_epochs,
                      summarize=summarize, metrics=metrics, progress=False).state.params["encoder"]
