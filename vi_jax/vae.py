"""The VAE: its configuration, construction, training (on vi_jax.loop) and evaluation."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, ClassVar, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax import data, networks, rundir, sharding, storage, streams
from vi_jax.checkpoint import CheckpointError, Checkpointer
from vi_jax.loop import Checkpointing, TrainResult, run_epochs
from vi_jax.config import Rule, check_fields, count, from_dict, one_of, real, widths
from vi_jax.distributions import get_likelihood
from vi_jax.elbo import KL_FORMS, elbo_rows_per_step, make_elbo, make_iwae, map_datapoints
from vi_jax.estimators import ESTIMATORS
from vi_jax.families import VariationalFamily, get_family
from vi_jax.metrics import MetricsTarget
from vi_jax.models import LatentVariableModel, decoder_model
from vi_jax.train import (OBJECTIVES, WARMUP_TERMS, Algorithm, TrainState, amortized_vi, dynamically_binarized,
                          make_epoch, non_amortized_vi, semi_amortized_vi,
                          stage_of_epoch, staged_learning_rate)

Array = jax.Array
# layer widths and stage lengths: config.widths, a (possibly empty) tuple of integers >= 1


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Everything that determines a VAE run; `seed` fixes every random draw."""

    seed: int = 0
    dataset: str = "digits"
    likelihood: str = "bernoulli"
    family: str = "gaussian"
    latent_dim: int = 8
    encoder_hidden: tuple[int, ...] = (200, 200)
    decoder_hidden: tuple[int, ...] = (200, 200)
    activation: str = "relu"
    kernel_init: str = "lecun_normal"
    num_samples: int = 1  # reparameterized draws per datapoint in the training ELBO
    kl: str = "analytic"  # "analytic" (KL form) or "mc" (entropy form)
    estimator: str = "reparam"  # ELBO gradient estimator: "reparam", "stl" or "score_function"
    objective: str = "elbo"  # training objective: "elbo", or "iwae" (the IWAE bound with K = num_samples)
    batch_size: int = 50
    learning_rate: float = 1e-3  # Adam's constant rate (when stage_epochs is empty)
    stage_epochs: tuple[int, ...] = ()  # a staged schedule: stage s runs stage_epochs[s] epochs ...
    stage_learning_rates: tuple[float, ...] = ()  # ... at stage_learning_rates[s]
    adam_eps: float = 1e-8
    decoder_output_bias: str = "zeros"  # or "data_mean": start the output bias at logit(mean pixel)
    dynamic_binarization: bool = False  # train on x ~ Bernoulli(grey x), resampled every step
    num_epochs: int = 200
    kl_warmup_epochs: int = 0  # epochs over which beta_t rises linearly per step to 1
    warmup_term: str = "kl"  # what beta_t weighs during warm-up: "kl" or "entropy" (vi_jax.train.warmed_up)
    eval_every: int = 25  # epochs between held-out evaluations (0: only at the end)
    eval_elbo_samples: int = 100  # draws per datapoint for reported ELBOs
    eval_iwae_samples: int = 100  # K of the periodic held-out IWAE
    final_iwae_samples: int = 5000  # K of the final held-out IWAE
    eval_batch_size: int = 100  # datapoints vmapped at once in evaluation (ELBOs: fewer, elbo_rows_per_step)
    mode: str = "amortized"  # inference used in training: see TRAINING_MODES
    local_learning_rate: float = 1e-2  # non_amortized: Adam on each q_i
    refine_steps: int = 5  # semi_amortized: K refinement steps per minibatch
    refine_learning_rate: float = 1e-2  # semi_amortized: Adam on each refined q_i
    refine_differentiate: bool = False  # semi_amortized: backpropagate through the refinement
    grad_clip_norm: float = 0.0  # clip the gradient's global norm to this (0: no clipping)
    num_devices: int = 1  # > 1: data-parallel over that many devices (q_i tables sharded by rows)
    checkpoint_every: int = 0  # epochs between checkpoints when checkpointing (0: only at the end)

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": count(0), "dataset": one_of(data.DATASETS), "latent_dim": count(1),
        "encoder_hidden": widths, "decoder_hidden": widths, "num_samples": count(1), "batch_size": count(1),
        "learning_rate": real(0), "stage_epochs": widths, "adam_eps": real(0), "num_epochs": count(1),
        "kl_warmup_epochs": count(0), "eval_every": count(0), "eval_elbo_samples": count(1),
        "eval_iwae_samples": count(1), "final_iwae_samples": count(1), "eval_batch_size": count(1),
        "local_learning_rate": real(0), "refine_steps": count(0), "refine_learning_rate": real(0),
        "grad_clip_norm": real(0, low_closed=True), "num_devices": count(1), "checkpoint_every": count(0),
        "stage_learning_rates": Rule(lambda v: isinstance(v, tuple) and all(real(0).ok(r) for r in v),
                                     "a tuple of finite numbers > 0")}

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (before any work is done)."""
        check_fields(self, self.RULES)
        if (self.likelihood == "bernoulli" and data.DATASET_VALUE_RANGES[self.dataset] == "unit"
                and not self.dynamic_binarization):
            raise ValueError(f"dataset {self.dataset!r} holds grey values in [0, 1], for which a Bernoulli "
                             "likelihood is no normalised density (its 'nats' would mean nothing): set "
                             "dynamic_binarization=true, or likelihood=gaussian")
        if self.stage_epochs or self.stage_learning_rates:
            if len(self.stage_epochs) != len(self.stage_learning_rates):
                raise ValueError(f"stage_epochs ({len(self.stage_epochs)}) and stage_learning_rates "
                                 f"({len(self.stage_learning_rates)}) need one entry per stage")
            if sum(self.stage_epochs) != self.num_epochs:
                raise ValueError(f"num_epochs ({self.num_epochs}) must equal the stages' total "
                                 f"({sum(self.stage_epochs)})")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown training objective {self.objective!r}; known: {OBJECTIVES}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown gradient estimator {self.estimator!r}; known: {tuple(ESTIMATORS)}")
        if self.objective == "iwae" and (self.mode != "amortized" or self.kl_warmup_epochs
                                         or self.estimator != "reparam"):
            raise ValueError("objective=iwae needs mode=amortized, kl_warmup_epochs=0 and estimator=reparam")
        if self.decoder_output_bias not in OUTPUT_BIASES:
            raise ValueError(f"unknown decoder_output_bias {self.decoder_output_bias!r}; known: {OUTPUT_BIASES}")
        if (self.decoder_output_bias == "data_mean" or self.dynamic_binarization) and self.likelihood != "bernoulli":
            raise ValueError("decoder_output_bias=data_mean and dynamic_binarization need likelihood=bernoulli")
        if self.dynamic_binarization and self.mode == "non_amortized":
            raise ValueError("dynamic_binarization binarizes x batches; non_amortized batches are (rows, x)")
        if self.batch_size % self.num_devices:
            raise ValueError(f"num_devices must divide batch_size {self.batch_size}, got {self.num_devices}")
        get_likelihood(self.likelihood)
        networks.check_network_options(self.activation, self.kernel_init)
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"unknown training mode {self.mode!r}; known: {TRAINING_MODES}")
        if self.warmup_term not in WARMUP_TERMS:
            raise ValueError(f"unknown warmup_term {self.warmup_term!r}; known: {WARMUP_TERMS}")
        if self.kl not in KL_FORMS:
            raise ValueError(f"unknown kl form {self.kl!r}; known: {KL_FORMS}")
        family = get_family(self.family, self.latent_dim)
        if self.kl == "analytic" and family.kl_to_prior is None:
            raise ValueError(f"family {self.family!r} has no closed-form KL; set kl=mc")


TRAINING_MODES = ("amortized", "non_amortized", "semi_amortized")
OUTPUT_BIASES = ("zeros", "data_mean")
# Pixel means are clipped to [c, 1 - c] before the logit: pixels that are always 0 in the
# training set would otherwise start at a bias of -inf.
OUTPUT_BIAS_CLIP = 1e-3


class VAE(NamedTuple):
    model: LatentVariableModel
    family: VariationalFamily
    encoder: Optional[nn.Module]  # None in non_amortized mode
    algorithm: Algorithm
    mode: str

    def encode(self, encoder_params, x: Array):
        """Variational parameters q_phi(z|x) for a batch x [N, D] (leading N axis)."""
        if self.encoder is None:
            raise ValueError("a non_amortized VAE has no encoder")
        return jax.vmap(self.family.unflatten)(self.encoder.apply(encoder_params, x))

    def training_data(self, x: Array):
        """What the algorithm's minibatches are drawn from: x, or (row indices, x) for q_i tables."""
        x = jnp.asarray(x)
        return (jnp.arange(x.shape[0]), x) if self.mode == "non_amortized" else x


def build_vae(config: VAEConfig, data_dim: int, steps_per_epoch: int = 1, num_train: int = 0) -> VAE:
    """The model, family, encoder and training algorithm a config describes (num_train: the
    size of the q_i table in non_amortized mode)."""
    config.validate()
    likelihood = get_likelihood(config.likelihood)
    family = get_family(config.family, config.latent_dim)
    decoder = networks.decoder(config.decoder_hidden, likelihood.num_outputs(data_dim),
                               config.activation, config.kernel_init)
    encoder = networks.encoder(config.encoder_hidden, family.num_params, config.activation,
                               config.kernel_init)
    model = decoder_model(decoder, likelihood, config.latent_dim, data_dim)
    common = dict(num_samples=config.num_samples, kl=config.kl, estimator=config.estimator,
                  kl_warmup_steps=config.kl_warmup_epochs * steps_per_epoch, warmup_term=config.warmup_term)
    learning_rate = config.learning_rate
    if config.stage_epochs:
        learning_rate = staged_learning_rate(config.stage_epochs, config.stage_learning_rates, steps_per_epoch)
    optimizer = optax.adam(learning_rate, eps=config.adam_eps)
    if config.grad_clip_norm > 0:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    if config.mode == "amortized":
        algorithm = amortized_vi(model, family, encoder, optimizer, objective=config.objective, **common)
    elif config.mode == "semi_amortized":
        algorithm = semi_amortized_vi(model, family, encoder, optimizer, refine_steps=config.refine_steps,
                                      refine_optimizer=optax.adam(config.refine_learning_rate),
                                      differentiate=config.refine_differentiate, **common)
    else:
        if num_train < 1:
            raise ValueError("non_amortized mode needs num_train, the number of q_i rows")
        algorithm = non_amortized_vi(model, family, num_train, optimizer,
                                     optax.adam(config.local_learning_rate), **common)
        encoder = None
    if config.dynamic_binarization:
        algorithm = dynamically_binarized(algorithm)
    return VAE(model, family, encoder, algorithm, config.mode)


def load_training_data(config: VAEConfig, data_dir: Optional[str] = None):
    """(dataset, train, test): the dataset the config names, both splits validated for its
    likelihood (float32 [N, D]; errors name the split and the problem). With
    dynamic_binarization the test split is one fixed draw x ~ Bernoulli(grey x) (key
    streams.HELD_OUT_BINARIZATION); the training split stays grey and is resampled at every step."""
    dataset = data.load_dataset(config.dataset, data_dir=data_dir, seed=config.seed)
    train, test = (data.validate_data(getattr(dataset, split), likelihood=config.likelihood,
                                      name=f"{config.dataset} {split}") for split in ("train", "test"))
    if config.dynamic_binarization:  # held-out data binarized once, with a key of its own
        test_key = streams.stream(config.seed, streams.HELD_OUT_BINARIZATION)
        test = np.asarray(jax.random.bernoulli(test_key, test), np.float32)
    return dataset, train, test


class Evaluator(NamedTuple):
    """Jitted per-datapoint held-out ELBO and IWAE of the amortized q_phi (built once, reused)."""

    elbo: Callable  # (key, params, data) -> per-datapoint ELBO [N]
    iwae: Callable  # (key, params, data) -> IwaeTerms with [N] fields


def make_evaluator(vae: VAE, config: VAEConfig, iwae_samples: int) -> Evaluator:
    elbo_fn = make_elbo(vae.model, vae.family, num_samples=config.eval_elbo_samples, kl=config.kl)
    elbo_rows = elbo_rows_per_step(config.eval_elbo_samples, config.eval_batch_size)
    iwae_fn = make_iwae(vae.model, vae.family, num_samples=iwae_samples)

    def elbo(key, params, data):
        q = vae.encode(params["encoder"], data)
        return map_datapoints(elbo_fn, key, params["decoder"], q, data, elbo_rows).elbo

    def iwae(key, params, data):
        q = vae.encode(params["encoder"], data)
        return map_datapoints(iwae_fn, key, params["decoder"], q, data, config.eval_batch_size)

    return Evaluator(jax.jit(elbo), jax.jit(iwae))


def pixel_mean_logits(x: Array) -> Array:
    """logit(clip(mean_n x_n, c, 1 - c)), c = OUTPUT_BIAS_CLIP: the Bernoulli logits of the
    pixel means (the decoder's output bias with decoder_output_bias="data_mean")."""
    mean = jnp.clip(jnp.mean(x, axis=0), OUTPUT_BIAS_CLIP, 1.0 - OUTPUT_BIAS_CLIP)
    return jnp.log(mean) - jnp.log1p(-mean)


def _place_on_mesh(vae: VAE, state: TrainState, data, mesh):
    """Replicate state and data over the mesh; shard a q_i table and its optimizer state by rows."""
    state = jax.device_put(state, sharding.replicated(mesh))
    if vae.mode == "non_amortized":
        theta_opt, rows_opt = state.opt_state
        state = TrainState({**state.params, "local": sharding.shard_rows(state.params["local"], mesh)},
                           (theta_opt, sharding.shard_rows(rows_opt, mesh)), state.step)
    return state, jax.device_put(data, sharding.replicated(mesh))


def train_vae(vae: VAE, config: VAEConfig, train_data: Array, eval_data: Optional[Array] = None,
              *, progress: bool = True, checkpoint_dir: Optional[str] = None,
              resume: bool = False, resume_fallback: bool = False,
              metrics: MetricsTarget = None) -> TrainResult:
    """Train for config.num_epochs fused epochs, evaluating on eval_data every eval_every epochs
    (held-out evaluation needs an encoder, so it is skipped in non_amortized mode).

    Keys (vi_jax.streams): init = fold_in(seed, INIT), epoch e = fold_in(fold_in(seed, EPOCHS),
    e), evaluation at epoch e = fold_in(fold_in(seed, EVALUATIONS), e): a run resumed from a
    checkpoint continues exactly as the uninterrupted run (vi_jax.loop). With checkpoint_dir, the state is saved every config.checkpoint_every
    epochs and at the end; resume=True continues from the newest checkpoint there (a missing,
    unreadable, damaged or mismatched checkpoint is an error, never a silent fresh start;
    resume_fallback=True resumes from the newest intact one instead). Raises
    FloatingPointError at the first NaN/inf loss, before saving anything of that epoch.
    metrics (a path or a vi_jax.metrics writer): one "train" line per epoch and one "eval" line
    per evaluation; a resumed run drops the lines of epochs after its checkpoint.
    """
    train_data = jnp.asarray(train_data)
    state = vae.algorithm.init(streams.stream(config.seed, streams.INIT), train_data[0])
    if config.decoder_output_bias == "data_mean":
        decoder = networks.with_output_bias(state.params["decoder"], pixel_mean_logits(train_data))
        state = state._replace(params={**state.params, "decoder": decoder})
    batches_from = vae.training_data(train_data)
    step = vae.algorithm.step
    if config.num_devices > 1:
        mesh = sharding.data_mesh(config.num_devices)
        state, batches_from = _place_on_mesh(vae, state, batches_from, mesh)
        step = sharding.data_parallel(step, mesh)
    if resume and not checkpoint_dir:
        raise CheckpointError("resume=True needs a checkpoint_dir")
    checkpointing = None if not checkpoint_dir else Checkpointing(
        Checkpointer(checkpoint_dir), dataclasses.asdict(config), every=config.checkpoint_every, resume=resume,
        fallback=resume_fallback, defaults=dataclasses.asdict(VAEConfig()))

    def summarize(epoch, infos):
        # one transfer for all the epoch's means (the history's train_elbo as it always was)
        elbo, loss, beta = jax.device_get((infos.elbo.mean(), infos.loss.mean(), infos.kl_weight.mean()))
        record = {"train_elbo": float(elbo)}
        if config.stage_epochs:
            record["stage"] = stage_of_epoch(config.stage_epochs, epoch)
        rate = config.stage_learning_rates[record["stage"] - 1] if config.stage_epochs else config.learning_rate
        return record, {"train_loss": float(loss), "kl_weight": float(beta), "learning_rate": rate}

    def evaluate(epoch, state):
        key = jax.random.fold_in(eval_key, epoch)
        return {"eval_elbo": float(evaluator.elbo(key, state.params, eval_data).mean()),
                f"eval_iwae_{config.eval_iwae_samples}": float(
                    evaluator.iwae(key, state.params, eval_data).bound.mean())}

    held_out = eval_data is not None and vae.encoder is not None
    if held_out:
        evaluator = make_evaluator(vae, config, config.eval_iwae_samples)
        eval_key = streams.stream(config.seed, streams.EVALUATIONS)
    return run_epochs(make_epoch(step, config.batch_size), state, batches_from,
                      epoch_key=streams.stream(config.seed, streams.EPOCHS), num_epochs=config.num_epochs,
                      summarize=summarize, evaluate=evaluate if held_out else None, eval_every=config.eval_every,
                      checkpointing=checkpointing, metrics=metrics, progress=progress,
                      advice="lower the learning rate, set grad_clip_norm, or check the data")


def load_trained_vae(workdir: str, *, verify: bool = True) -> tuple[VAEConfig, VAE, dict]:
    """(config, vae, params) from a train_vae workdir (its metrics.json and params.msgpack),
    after checking the workdir's files against its manifest (vi_jax.rundir.verify; verify=False
    only for checking an older version's workdir before adopting it)."""
    if verify:
        rundir.verify(workdir)
    metrics_path, params_path = os.path.join(workdir, "metrics.json"), os.path.join(workdir, "params.msgpack")
    for path in (metrics_path, params_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: point to the workdir of a finished train_vae run")
    saved = storage.read_json(metrics_path)
    if not isinstance(saved, dict) or "config" not in saved:
        raise ValueError(f"{metrics_path}: records no config; not the metrics of a train_vae run")
    config = from_dict(VAEConfig, saved["config"])
    data_dim = saved.get("data_dim")
    if data_dim is None:
        raise ValueError(f"{metrics_path} records no data_dim; rerun train_vae with this version")
    vae = build_vae(config, data_dim)
    template = vae.algorithm.init(jax.random.PRNGKey(0), jnp.zeros(data_dim)).params
    return config, vae, storage.read_params(params_path, template)


def check_legacy_workdir(workdir: str) -> None:
    """Raise unless workdir holds one finished train_vae/reproduce run of an older version (no
    manifest): metrics.json and params.msgpack load as a model; the file such a run writes last
    (reproduce.md for reproduce, else metrics.json) exists and no result file is newer; with
    checkpoints, the newest is of the final epoch and holds exactly these parameters. The check
    behind `python -m experiments.workdir adopt`."""
    config, vae, params = load_trained_vae(workdir, verify=False)
    metrics_path, params_path = os.path.join(workdir, "metrics.json"), os.path.join(workdir, "params.msgpack")
    saved = storage.read_json(metrics_path)
    last = os.path.join(workdir, "reproduce.md" if "preset" in saved else "metrics.json")
    if not os.path.exists(last):
        raise ValueError(f"{last}: missing: the run did not finish (it is the file the run writes last)")
    newest = max((os.path.join(workdir, name) for name in rundir.result_files(workdir)), key=os.path.getmtime)
    if os.path.getmtime(newest) > os.path.getmtime(last):
        raise ValueError(f"{newest}: newer than {last}, the run's last file: written by a later run that "
                         "did not finish")
    checkpoints = os.path.join(workdir, rundir.CHECKPOINTS)
    if os.path.isdir(checkpoints):
        checkpointer = Checkpointer(checkpoints)
        final = checkpointer.latest_epoch()
        if final is not None:
            if final != config.num_epochs:
                raise ValueError(f"{checkpoints}/{final}: the newest checkpoint is not of the final epoch "
                                 f"{config.num_epochs}: the run did not finish")
            template = vae.algorithm.init(jax.random.PRNGKey(0), jnp.zeros(saved["data_dim"]))
            _, state, _ = checkpointer.restore(template, dataclasses.asdict(config),
                                               defaults=dataclasses.asdict(VAEConfig()))
            same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), state.params, params)
            if not all(jax.tree.leaves(same)):
                raise ValueError(f"{params_path}: differs from the final checkpoint {checkpoints}/{final}: "
                                 "the files are of different runs")
