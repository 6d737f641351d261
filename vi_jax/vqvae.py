"""VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017): discrete codes from a learned codebook.

Per datapoint x: the encoder gives L code vectors z_e = f(x) in R^{L x D}; each is replaced by
its nearest codebook vector, z_q,l = e_{k_l}, k_l = argmin_k ||z_e,l - e_k||^2, over a codebook
e in R^{K x D}; the decoder gives p(x | z_q). The argmin has no gradient, so the decoder sees the
straight-through value z_e + sg(z_q - z_e) (= z_q forwards, gradient passed unchanged to z_e).
The loss per datapoint (the paper's eq. 3, squared norms summed over the L positions):

    -log p(x | z_q) + ||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2,    beta = 0.25,

where the middle (codebook) term trains only the codebook and the last (commitment) term only
the encoder. With the one-hot q(z|x) and a uniform prior over the K^L codes, KL(q || p) = L log K,
so -log p(x | z_q) - L log K is an ELBO on log p(x) (the paper's section 3.1).

    vq = build_vqvae(VQVAEConfig(), data_dim=64)
    state = vq.algorithm.init(key, x_example)
    state, infos = make_epoch(vq.algorithm.step, batch_size)(key, state, data)
    terms = evaluate(vq, state.params, data, batch_size)           # VQTerms, one row per datapoint
    usage = codebook_usage(terms.codes, vq.network.codebook_size)   # counts, perplexity, dead codes
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax import networks, streams
from vi_jax.config import Rule, check_fields, count, one_of, real, widths
from vi_jax.data import DATASETS
from vi_jax.distributions import Likelihood, get_likelihood
from vi_jax.loop import TrainResult, run_epochs
from vi_jax.metrics import MetricsTarget
from vi_jax.train import Algorithm, TrainState, make_epoch

Array = jax.Array


def quantize(codebook: Array, z_e: Array) -> tuple[Array, Array]:
    """(z_q, codes): codes_l = argmin_k ||z_e,l - e_k||^2 and z_q,l = e_{codes_l}, for z_e [L, D]
    and a codebook [K, D]. z_q carries gradient to the codebook rows it picked, none to z_e."""
    if z_e.ndim != 2 or codebook.ndim != 2 or z_e.shape[1] != codebook.shape[1]:
        raise ValueError(f"quantize needs z_e [L, D] and codebook [K, D] with the same D, "
                         f"got {z_e.shape} and {codebook.shape}")
    distances = jnp.sum((z_e[:, None, :] - codebook[None, :, :]) ** 2, axis=-1)  # [L, K]
    codes = jnp.argmin(distances, axis=-1)
    return codebook[codes], codes


def straight_through(z_e: Array, z_q: Array) -> Array:
    """z_e + sg(z_q - z_e): the value of z_q, the gradient of the identity in z_e."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


class VQOutputs(NamedTuple):
    z_e: Array  # [L, D] encoder output
    z_q: Array  # [L, D] nearest codebook vectors (differentiable in the codebook)
    codes: Array  # [L] int: their indices
    decoded: Array  # likelihood parameters of p(x | z_q), decoded from the straight-through z_q


class VQVAE(nn.Module):
    """MLP encoder x -> z_e [L, D], codebook param e [K, D], MLP decoder z_q (flattened) -> the
    likelihood's parameters. Applied to one datapoint (vmap it); params are
    {"params": {"encoder", "codebook", "decoder"}}."""

    data_dim: int
    likelihood: Likelihood
    num_latents: int  # L
    code_dim: int  # D
    codebook_size: int  # K
    encoder_hidden: Sequence[int]
    decoder_hidden: Sequence[int]
    activation: str = "relu"
    kernel_init: str = "lecun_normal"

    def setup(self):
        self.encoder = networks.encoder(self.encoder_hidden, self.num_latents * self.code_dim,
                                        self.activation, self.kernel_init)
        self.decoder = networks.decoder(self.decoder_hidden, self.likelihood.num_outputs(self.data_dim),
                                        self.activation, self.kernel_init)
        # e_k ~ N(0, I): the scale of the encoder's outputs at initialisation (lecun_normal layers)
        self.codebook = self.param("codebook", nn.initializers.normal(1.0), (self.codebook_size, self.code_dim))

    def encode(self, x: Array) -> Array:
        if x.shape != (self.data_dim,):
            raise ValueError(f"VQVAE takes one datapoint of shape ({self.data_dim},), got {x.shape}; "
                             "vmap over a batch")
        return self.encoder(x).reshape(self.num_latents, self.code_dim)

    def decode(self, z: Array) -> Array:
        return self.decoder(z.reshape(-1))

    def __call__(self, x: Array) -> VQOutputs:
        z_e = self.encode(x)
        z_q, codes = quantize(self.codebook, z_e)
        return VQOutputs(z_e, z_q, codes, self.decode(straight_through(z_e, z_q)))


class VQTerms(NamedTuple):
    """Per-datapoint loss and its parts (nats for reconstruction and elbo)."""

    loss: Array  # reconstruction + codebook + beta * commitment
    reconstruction: Array  # -log p(x | z_q)
    codebook: Array  # ||sg[z_e] - z_q||^2 (gradient to the codebook only)
    commitment: Array  # ||z_e - sg[z_q]||^2 (gradient to the encoder only)
    elbo: Array  # log p(x | z_q) - L log K
    codes: Array  # [L] int


def make_vqvae_loss(network: VQVAE, beta: float = 0.25) -> Callable[[dict, Array], VQTerms]:
    """loss(params, x) -> VQTerms for one datapoint x [data_dim]."""
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    log_num_codes = network.num_latents * math.log(network.codebook_size)

    def loss(params, x: Array) -> VQTerms:
        out = network.apply(params, x)
        reconstruction = -network.likelihood.distribution(out.decoded).log_prob(x)
        codebook = jnp.sum((jax.lax.stop_gradient(out.z_e) - out.z_q) ** 2)
        commitment = jnp.sum((out.z_e - jax.lax.stop_gradient(out.z_q)) ** 2)
        return VQTerms(reconstruction + codebook + beta * commitment, reconstruction, codebook,
                       commitment, -reconstruction - log_num_codes, out.codes)

    return loss


def code_counts(codes: Array, codebook_size: int) -> Array:
    """counts_k = #{(i, l): codes_il = k}, for integer codes of any shape (jittable)."""
    return jnp.bincount(codes.reshape(-1), length=codebook_size)


def perplexity(counts: Array) -> Array:
    """exp(H(p)) of the usage distribution p_k = counts_k / sum(counts) (0 log 0 = 0): from 1
    (one code used) to K (all codes equally used)."""
    p = counts / jnp.sum(counts)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


class CodebookUsage(NamedTuple):
    counts: np.ndarray  # [K] int; sums to N * L
    perplexity: float
    dead_codes: int  # codes never picked


def codebook_usage(codes, codebook_size: int) -> CodebookUsage:
    """Per-code counts of `codes` [N, L] (e.g. VQTerms.codes on held-out data), their perplexity
    and the number of dead codes."""
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer) or codes.ndim != 2:
        raise ValueError(f"codes must be an integer array [N, L], got dtype {codes.dtype}, shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(f"codes must lie in [0, {codebook_size}), found min {codes.min()}, max {codes.max()}")
    counts = np.asarray(code_counts(jnp.asarray(codes), codebook_size))
    return CodebookUsage(counts, float(perplexity(counts)), int(np.sum(counts == 0)))


class VQInfo(NamedTuple):
    """Minibatch means of the step's loss and its parts, and the perplexity of its codes."""

    loss: Array
    elbo: Array
    reconstruction: Array
    codebook: Array
    commitment: Array
    perplexity: Array


def vq_vae(network: VQVAE, optimizer: optax.GradientTransformation, *, beta: float = 0.25) -> Algorithm:
    """Minimise (1/B) sum_i loss(x_i) (make_vqvae_loss) over encoder, codebook and decoder, as
    train.py's init/step Algorithm (the step's key is unused: the model has no sampling)."""
    loss_fn = make_vqvae_loss(network, beta)

    def init(key: Array, x_example: Array) -> TrainState:
        params = network.init(key, x_example)
        return TrainState(params, optimizer.init(params), jnp.array(0, jnp.int32))

    def objective(params, batch: Array):
        terms = jax.vmap(loss_fn, (None, 0))(params, batch)
        info = VQInfo(jnp.mean(terms.loss), jnp.mean(terms.elbo), jnp.mean(terms.reconstruction),
                      jnp.mean(terms.codebook), jnp.mean(terms.commitment),
                      perplexity(code_counts(terms.codes, network.codebook_size)))
        return info.loss, info

    def step(key: Array, state: TrainState, batch: Array) -> tuple[TrainState, VQInfo]:
        del key
        grads, info = jax.grad(objective, has_aux=True)(state.params, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1), info

    return Algorithm(init, step)


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
    """Everything that determines a VQ-VAE run; `seed` fixes every random draw."""

    seed: int = 0
    dataset: str = "digits"
    likelihood: str = "bernoulli"
    num_latents: int = 4  # L code vectors per datapoint
    code_dim: int = 8  # D
    codebook_size: int = 32  # K
    encoder_hidden: tuple[int, ...] = (128,)
    decoder_hidden: tuple[int, ...] = (128,)
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    beta: float = 0.25  # commitment weight (the paper's value)
    batch_size: int = 50
    learning_rate: float = 1e-3
    num_epochs: int = 200
    eval_batch_size: int = 100

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": count(0), "dataset": one_of(DATASETS), "num_latents": count(1), "code_dim": count(1),
        "codebook_size": count(1), "encoder_hidden": widths, "decoder_hidden": widths, "beta": real(0, low_closed=True),
        "batch_size": count(1), "learning_rate": real(0), "num_epochs": count(1), "eval_batch_size": count(1)}

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (before any work is done)."""
        check_fields(self, self.RULES)
        get_likelihood(self.likelihood)
        networks.check_network_options(self.activation, self.kernel_init)


class VQModel(NamedTuple):
    network: VQVAE
    loss: Callable[[dict, Array], VQTerms]  # per datapoint
    algorithm: Algorithm


def build_vqvae(config: VQVAEConfig, data_dim: int) -> VQModel:
    config.validate()
    network = VQVAE(data_dim, get_likelihood(config.likelihood), config.num_latents, config.code_dim,
                    config.codebook_size, tuple(config.encoder_hidden), tuple(config.decoder_hidden),
                    config.activation, config.kernel_init)
    algorithm = vq_vae(network, optax.adam(config.learning_rate), beta=config.beta)
    return VQModel(network, make_vqvae_loss(network, config.beta), algorithm)


@functools.partial(jax.jit, static_argnames=("vq", "batch_size"))
def evaluate(vq: VQModel, params, data: Array, batch_size: int | None = None) -> VQTerms:
    """VQTerms of every row of data [N, data_dim], `batch_size` rows vmapped at a time (jitted;
    compiled once per model, data shape and batch size)."""
    return jax.lax.map(lambda x: vq.loss(params, x), jnp.asarray(data), batch_size=batch_size)


def reconstruct(vq: VQModel, params, data: Array) -> Array:
    """E[x | z_q(x)] for each row of data [N, data_dim]."""
    decoded = jax.vmap(lambda x: vq.network.apply(params, x).decoded)(jnp.asarray(data))
    return jax.vmap(vq.network.likelihood.mean)(decoded)


def train_vqvae(vq: VQModel, config: VQVAEConfig, train_data: Array, *, progress: bool = True,
                metrics: MetricsTarget = None) -> TrainResult:
    """config.num_epochs fused epochs on vi_jax.loop; keys (vi_jax.streams): init
    fold_in(seed, INIT), epoch e fold_in(fold_in(seed, EPOCHS), e). The history holds each
    epoch's mean loss parts and batch perplexity. Raises FloatingPointError at the first NaN/inf loss.
    metrics (a path or a vi_jax.metrics writer): one "train" line per epoch."""
    train_data = jnp.asarray(train_data)
    state = vq.algorithm.init(streams.stream(config.seed, streams.INIT), train_data[0])

    def summarize(epoch, infos):
        return {name: float(jnp.mean(value)) for name, value in infos._asdict().items()}, \
            {"learning_rate": config.learning_rate}

    return run_epochs(make_epoch(vq.algorithm.step, config.batch_size), state, train_data,
                      epoch_key=streams.stream(config.seed, streams.EPOCHS), num_epochs=config.num_epochs,
                      summarize=summarize, metrics=metrics, progress=progress, what="VQ-VAE loss")
