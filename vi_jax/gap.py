"""The gap decomposition of Cremer, Li & Duvenaud (2018), per datapoint, for one decoder.

    inference gap      = log p(x) - L[q_phi]
    approximation gap  = log p(x) - L[q*]        (q* = the family's best member, fitted per datapoint)
    amortization gap   = L[q*]    - L[q_phi]

log p(x) is estimated by IWAE_K with the fitted q* as proposal (the larger estimate over the
fitted families, per datapoint, as in the reference protocol) and optionally by AIS
(vi_jax.ais; the larger of the IWAE and AIS estimates, per datapoint). Every mean comes with the
standard error over datapoints of the per-datapoint values (gaps: of the paired differences),
so inference = approximation + amortization holds exactly, datapoint by datapoint.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, ClassVar, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vi_jax.ais import AisConfig, make_ais
from vi_jax.array_types import Array, Params, PRNGKey
from vi_jax.checkpoint import StageCache
from vi_jax.config import Rule, check_fields, count, counts, one_of, real
from vi_jax.elbo import IWAE_CHUNK_SIZE, elbo_rows_per_step, make_elbo, make_iwae, map_datapoints
from vi_jax.families import VariationalFamily, diagonal_gaussian
from vi_jax.local import LocalFitConfig, fit_with_checkpoints, make_local_fit, make_local_fitter, make_refine, tile_rows
from vi_jax.models import LatentVariableModel
from vi_jax.stats import mean_and_stderr

LOCAL_INITS = ("encoder", "prior")


@dataclasses.dataclass(frozen=True)
class GapProtocol:
    """How each quantity is estimated (defaults follow Cremer et al. 2018 where they say).
    local_fit may be given by name: GapProtocol(local_fit="accurate") (see LOCAL_FIT_PROTOCOLS)."""

    local_fit: LocalFitConfig = LocalFitConfig()  # the q* optimiser and its convergence rule
    local_init: str = "encoder"  # start q* from the encoder's output, or from the prior
    elbo_samples: int = 1000  # draws per datapoint for every reported ELBO
    iwae_samples: int = 5000  # K of the log p(x) estimate
    iwae_chunk_size: int = IWAE_CHUNK_SIZE
    batch_size: int = 100  # datapoints vmapped at once in evaluation (ELBOs: fewer, elbo_rows_per_step)
    refine_steps: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50)  # semi-amortized curve
    refine_learning_rate: float = 1e-2  # Adam, per datapoint, from the encoder's output
    # AIS estimate of log p(x) next to IWAE: "" (off), or its proposal: "prior", "encoder" or the
    # name of a fitted local family (its q*)
    ais_proposal: str = ""
    ais: AisConfig = AisConfig()

    RULES: ClassVar[dict[str, Rule]] = {
        "local_init": one_of(LOCAL_INITS), "elbo_samples": count(1), "iwae_samples": count(1),
        "iwae_chunk_size": count(1), "batch_size": count(1), "refine_steps": counts(0),
        "refine_learning_rate": real(0)}

    def __post_init__(self):
        if isinstance(self.local_fit, str):
            object.__setattr__(self, "local_fit", LocalFitConfig.named(self.local_fit))

    def validate(self) -> None:
        check_fields(self, self.RULES)
        if self.ais_proposal:
            self.ais.validate()


LOCAL_FIT_CHECKS_PER_SEGMENT = 20  # with a StageCache, a local fit is checkpointed every 20 checks


def evaluate_gaps(key: PRNGKey, model: LatentVariableModel, theta: Params,
                  amortized_family: VariationalFamily, amortized_table: Optional[Params],
                  local_families: dict[str, VariationalFamily], data: Array,
                  protocol: GapProtocol = GapProtocol(),
                  log: Optional[Callable[[str], None]] = None, *,
                  stages: Optional[StageCache] = None) -> tuple[dict, dict]:
    """Per-datapoint quantities of the decomposition for the rows of `data`.

    amortized_table: q_phi(z|x_i) for every row (leading N axis), a member of amortized_family;
    None when there is no such q (a decoder trained without an encoder, on held-out data):
    then only log p(x), the local ELBOs and the approximation gaps are computed, and the local
    fits must start from the prior.
    local_families: {name: family fitted per datapoint}, the names used in the arrays' names
      (experiments.gap uses each family's label: {"ffg": diagonal_gaussian(d), "flow": coupling_flow(d)}).
    stages: a vi_jax.checkpoint.StageCache: every finished stage (each ELBO, local fit, IWAE and
      AIS estimate) is saved there, the local fits also every LOCAL_FIT_CHECKS_PER_SEGMENT
      checks, and a stage found there is read back instead of computed, with the same result.
    Returns (arrays, info): arrays of shape [N] named elbo_amortized, elbo_local_<name>,
    iwae_<name> and iwae_stderr_<name> (log p(x) with q*_<name>), log_px_iwae and
    log_px_iwae_stderr (the largest IWAE estimate), with protocol.ais_proposal also log_px_ais,
    log_px_ais_stderr, ais_acceptance_rate and ais_step_size; log_px and log_px_stderr (the
    larger estimate), inference_gap, approximation_gap_<name>, amortization_gap_<name>,
    elbo_refined_<k>; info: wall seconds per stage (of the process that computed it),
    converged counts and steps of each local fit, and the stages read back from `stages`.
    """
    protocol.validate()
    data = jnp.asarray(data)
    n = data.shape[0]
    log = log or (lambda message: None)
    ais_proposals = ("prior", "encoder", *local_families)
    if protocol.ais_proposal and protocol.ais_proposal not in ais_proposals:
        raise ValueError(f"unknown ais_proposal {protocol.ais_proposal!r}; known: {ais_proposals}")
    if protocol.ais_proposal == "encoder" and amortized_table is None:
        raise ValueError("ais_proposal='encoder' needs an amortized_table")
    if amortized_table is None and protocol.local_init == "encoder":
        raise ValueError("local_init='encoder' needs an amortized_table; use local_init='prior'")
    # every reported ELBO uses the same draws (common random numbers: the paired gaps have
    # less Monte-Carlo noise; each ELBO estimate stays unbiased)
    keys = dict(zip(("elbo", "local", "iwae", "refine"), jax.random.split(key, 4)))
    keys["ais"] = jax.random.fold_in(key, 4)  # apart from the split, so the other draws stay as they were
    prior = diagonal_gaussian(model.latent_dim)
    proposals = {"prior": (prior, tile_rows(prior.init(), n)), "encoder": (amortized_family, amortized_table)}
    arrays, seconds, fits, reused = {}, {}, {}, []

    def stage(name: str, compute: Callable[[], dict]) -> dict:
        """compute()'s arrays (or, with `stages`, those saved when it ran); records its seconds."""
        if stages is None:
            start = time.perf_counter()
            out = compute()
            seconds[name] = time.perf_counter() - start
            return out
        out, seconds[name], was_reused = stages.run(name, compute)
        if was_reused:
            reused.append(name)
        return out

    elbo_jits = {}

    def elbo_of(family, table, k):
        """Per-datapoint ELBO with protocol.elbo_samples draws (one compiled function per family:
        keyed by the family itself, as two families of one name may differ in their options)."""
        if family not in elbo_jits:
            fn = make_elbo(model, family, num_samples=protocol.elbo_samples, kl=family.kl_form)
            rows = elbo_rows_per_step(protocol.elbo_samples, protocol.batch_size)
            elbo_jits[family] = jax.jit(lambda k, th, t, x: map_datapoints(fn, k, th, t, x, rows).elbo)
        return np.asarray(elbo_jits[family](k, theta, table, data))

    if amortized_table is not None:
        arrays.update(stage("elbo_amortized", lambda: {
            "elbo_amortized": elbo_of(amortized_family, amortized_table, keys["elbo"])}))

    for index, (name, family) in enumerate(local_families.items()):
        log(f"fitting local {name} q* for {n} datapoints")
        if protocol.local_init == "encoder":
            init = jax.vmap(family.from_gaussian)(amortized_table)
        else:
            init = tile_rows(family.init(), n)
        fit_key = jax.random.fold_in(keys["local"], index)

        def fitted(name=name, family=family, init=init, fit_key=fit_key) -> dict:
            out = {}
            if stages is None:
                result = jax.jit(make_local_fit(model, family, protocol.local_fit, kl=family.kl_form))(
                    fit_key, theta, init, data)
            else:
                fitter = make_local_fitter(model, family, protocol.local_fit, kl=family.kl_form)
                checkpointer = stages.checkpointer(f"local_fit_{name}")
                result, out["seconds"] = fit_with_checkpoints(
                    fitter, fit_key, theta, init, data, checkpointer, {"stage": f"local_fit_{name}"},
                    checks_per_segment=LOCAL_FIT_CHECKS_PER_SEGMENT, resume=checkpointer.latest_epoch() is not None)
            start = time.perf_counter()
            out[f"elbo_local_{name}"] = elbo_of(family, result.params, keys["elbo"])
            if "seconds" in out:
                out["seconds"] += time.perf_counter() - start
            out |= {"converged": np.asarray(result.converged), "steps": np.asarray(result.steps),
                    **{f"table/{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(result.params))}}
            return out

        fit = stage(f"local_fit_{name}", fitted)
        table = jax.tree.unflatten(jax.tree.structure(init),
                                   [jnp.asarray(fit[f"table/{i}"]) for i in range(len(jax.tree.leaves(init)))])
        arrays[f"elbo_local_{name}"] = fit[f"elbo_local_{name}"]
        fits[name] = {"converged": int(fit["converged"].sum()), "n": n, "median_steps": float(np.median(fit["steps"])),
                      "max_steps": int(np.max(fit["steps"]))}

        log(f"IWAE_{protocol.iwae_samples} with local {name} q* as proposal")

        def iwae_of(name=name, family=family, table=table, index=index) -> dict:
            iwae_fn = make_iwae(model, family, num_samples=protocol.iwae_samples, chunk_size=protocol.iwae_chunk_size)
            iwae = jax.jit(lambda k, th, t, x: map_datapoints(iwae_fn, k, th, t, x, protocol.batch_size))(
                jax.random.fold_in(keys["iwae"], index), theta, table, data)
            return {f"iwae_{name}": np.asarray(iwae.bound), f"iwae_stderr_{name}": np.asarray(iwae.stderr)}

        arrays.update(stage(f"iwae_{name}", iwae_of))
        proposals[name] = (family, table)

    names = list(local_families)
    estimates = np.stack([arrays[f"iwae_{name}"] for name in names])
    best = np.argmax(estimates, axis=0)
    arrays["log_px_iwae"] = estimates[best, np.arange(n)]
    arrays["log_px_iwae_stderr"] = np.stack([arrays[f"iwae_stderr_{name}"] for name in names])[best, np.arange(n)]
    arrays["log_px"], arrays["log_px_stderr"] = arrays["log_px_iwae"], arrays["log_px_iwae_stderr"]
    if protocol.ais_proposal:
        log(f"AIS from {protocol.ais_proposal}: {protocol.ais.num_chains} chains, {protocol.ais.num_steps} steps")

        def ais_estimate() -> dict:
            family, table = proposals[protocol.ais_proposal]
            ais_fn = make_ais(model, family, protocol.ais)
            ais = jax.jit(lambda k, th, t, x: map_datapoints(ais_fn, k, th, t, x, protocol.batch_size))(
                keys["ais"], theta, table, data)
            return {"log_px_ais": np.asarray(ais.log_px), "log_px_ais_stderr": np.asarray(ais.stderr),
                    "ais_acceptance_rate": np.asarray(ais.acceptance_rate), "ais_step_size": np.asarray(ais.step_size)}

        arrays.update(stage("ais", ais_estimate))
        use_ais = arrays["log_px_ais"] > arrays["log_px_iwae"]
        arrays["log_px"] = np.where(use_ais, arrays["log_px_ais"], arrays["log_px_iwae"])
        arrays["log_px_stderr"] = np.where(use_ais, arrays["log_px_ais_stderr"], arrays["log_px_iwae_stderr"])
    for name in names:
        arrays[f"approximation_gap_{name}"] = arrays["log_px"] - arrays[f"elbo_local_{name}"]
    info = {"seconds": seconds, "local_fits": fits, "reused_stages": reused}
    if amortized_table is None:
        return arrays, info
    arrays["inference_gap"] = arrays["log_px"] - arrays["elbo_amortized"]
    for name in names:
        arrays[f"amortization_gap_{name}"] = arrays[f"elbo_local_{name}"] - arrays["elbo_amortized"]

    log(f"semi-amortized refinement, K = {protocol.refine_steps}")

    def refined() -> dict:
        refine = make_refine(model, amortized_family, optax.adam(protocol.refine_learning_rate),
                             kl=amortized_family.kl_form, return_path=True)
        path = jax.jit(refine, static_argnums=4)(keys["refine"], theta, amortized_table, data,
                                                 max(protocol.refine_steps))
        return {f"elbo_refined_{k}": elbo_of(amortized_family, jax.tree.map(lambda p: p[k], path), keys["elbo"])
                for k in protocol.refine_steps}

    arrays.update(stage("semi_amortized", refined))
    return arrays, info


def summarize(arrays: dict) -> dict:
    """{"mean", "stderr"} over datapoints for every per-datapoint array."""
    return {name: mean_and_stderr(values) for name, values in arrays.items()}
