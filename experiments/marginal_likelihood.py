"""Estimating log p(x) as the latent dimension grows: naive prior Monte Carlo, IWAE with q*, AIS.

    python -m experiments.marginal_likelihood --workdir runs/marginal_likelihood           # ~3 min on 2 CPU cores
    python -m experiments.marginal_likelihood --workdir runs/marginal_likelihood --quick   # smoke run, ~1 min

On linear-Gaussian oracles p(z) = N(0, I_d), p(x|z) = N(W z + b, diag(psi)) with exact log p(x)
(vi_jax.oracles), for d in latent_dims, each estimator spends the same number E of evaluations
of log p(x, z) per datapoint (E = AIS's count, gradients counted as one evaluation although
one costs about 2-3 values in wall time; the wall times are reported):

  naive      log (1/E) sum_k p(x | z_k), z_k ~ p(z)                (vi_jax.ais.prior_monte_carlo)
  iwae_qstar IWAE_E with q*_FFG (closed form) as proposal          (vi_jax.elbo.make_iwae)
  ais_prior  AIS from the prior, HMC transitions                   (vi_jax.ais.make_ais)
  ais_qstar  AIS from q*_FFG

The models (`oracle_model`): W = scale Q with Q [D, d] orthonormal columns (D = data_per_latent
d), psi ~ Uniform(psi_low, psi_high), b ~ N(0, I). The posterior precision
I + scale^2 Q^T diag(psi)^-1 Q has eigenvalues in [1 + scale^2 / psi_high, 1 + scale^2 / psi_low]
whatever d: every datapoint's posterior is narrow (standard deviations about 0.25 for scale 3)
and about 1.3 nats per dimension away from the prior in KL, and only mildly correlated, so
q*_FFG is a good proposal (finite chi^2, reported) while the prior is exponentially poor in d.

Per d and method: mean error (estimate - exact) over datapoints with its standard error, mean
|error|, RMSE, the mean of the estimators' own delta-method standard errors, and compile / run
seconds. Writes into --workdir (each file atomically, marginal_likelihood.json last):
marginal_likelihood.json (seed, config, environment, wall seconds, the table),
marginal_likelihood.md, error_vs_dim.png (mean |error| against d, log scale) and
marginal_likelihood.npz (per d: the model's W, b, log_psi, the data x, every per-datapoint exact
value and estimate).

Expected figures: experiments/benchmark/references/quick.json (the --quick run; the default
run's table is in BENCHMARKS.md, "Figures no reference checks"); check a fresh run against them
with
    python -m experiments.benchmark --only marginal_likelihood --no-peers --check experiments/benchmark/references/quick.json
With the defaults the naive estimator collapses with d; AIS from the prior degrades slowly
(T = 200 steps cover ~1.3 d nats of KL); q*_FFG is nearly the posterior on these models, so
importance sampling with it is all but exact and AIS from it keeps that accuracy.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax import oracles, plotting, rundir, storage
from vi_jax.ais import AisConfig, make_ais, prior_monte_carlo
from vi_jax.config import Rule, check_fields, count, counts, real
from vi_jax.elbo import make_iwae, map_datapoints
from vi_jax.families import diagonal_gaussian
from vi_jax.local import tile_rows

from ._common import Cli, header, progress_log, save_figure, write_report

METHODS = ("naive", "iwae_qstar", "ais_prior", "ais_qstar")


@dataclasses.dataclass(frozen=True)
class MarginalLikelihoodConfig:
    seed: int = 0
    latent_dims: tuple[int, ...] = (2, 5, 10, 20, 50)
    data_per_latent: int = 2  # D = data_per_latent * d
    scale: float = 3.0  # W = scale * Q
    psi_low: float = 0.5
    psi_high: float = 1.0
    num_points: int = 20  # datapoints drawn from each model
    ais: AisConfig = AisConfig(num_chains=16, num_steps=200)
    chunk_size: int = 1000  # IWAE draws per chunk
    batch_size: int = 10  # datapoints vmapped at once

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": count(0), "latent_dims": counts(1), "data_per_latent": count(1), "scale": real(0),
        "psi_low": real(0), "psi_high": real(0), "num_points": count(1), "chunk_size": count(1),
        "batch_size": count(1)}

    def validate(self) -> None:
        check_fields(self, self.RULES)
        if self.psi_low > self.psi_high:
            raise ValueError(f"need psi_low <= psi_high, got {self.psi_low}, {self.psi_high}")
        self.ais.validate()


QUICK = ["latent_dims=2,10", "num_points=5", "ais.num_chains=8", "ais.num_steps=30"]

CLI = Cli(__doc__, MarginalLikelihoodConfig, workdir="runs/marginal_likelihood", writes="marginal_likelihood.json",
          quick=QUICK, example="--set latent_dims=2,5 --set ais.num_steps=500")


def oracle_model(key, latent_dim: int, config: MarginalLikelihoodConfig = MarginalLikelihoodConfig()) -> dict:
    """theta {"W", "b", "log_psi"} (float32) with W = scale Q, Q a uniformly random [D, d] matrix
    with orthonormal columns, b ~ N(0, I), psi ~ Uniform(psi_low, psi_high)."""
    data_dim = config.data_per_latent * latent_dim
    k_q, k_b, k_psi = jax.random.split(key, 3)
    q, r = jnp.linalg.qr(jax.random.normal(k_q, (data_dim, latent_dim)))
    q = q * jnp.sign(jnp.diagonal(r))[None, :]  # Haar-distributed columns
    psi = jax.random.uniform(k_psi, (data_dim,), minval=config.psi_low, maxval=config.psi_high)
    return {"W": config.scale * q, "b": jax.random.normal(k_b, (data_dim,)), "log_psi": jnp.log(psi)}


def _timed(fn, *args):
    """(result, compile seconds, run seconds) of jax.jit(fn)(*args)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, compile_s, time.perf_counter() - start


def run_dim(config: MarginalLikelihoodConfig, key, latent_dim: int) -> tuple[dict, dict]:
    """Every method on one model of latent dimension d: (per-datapoint arrays, seconds)."""
    theta = oracle_model(jax.random.fold_in(key, 0), latent_dim, config)
    model = oracles.linear_gaussian(**theta)
    family = diagonal_gaussian(latent_dim)
    x = oracles.sample_data(jax.random.fold_in(key, 1), theta, config.num_points)
    exact = oracles.log_marginal(theta, x)
    q_star64 = oracles.optimal_ffg(theta, x)
    q_star = {k: jnp.asarray(v, jnp.float32) for k, v in q_star64.items()}
    prior = tile_rows(family.init(), config.num_points)
    budget = config.ais.likelihood_evaluations()
    iwae = make_iwae(model, family, num_samples=budget, chunk_size=config.chunk_size)
    anneal = make_ais(model, family, config.ais)
    keys = {m: jax.random.fold_in(key, 2 + i) for i, m in enumerate(METHODS)}
    batch = config.batch_size

    arrays = {**{k: np.asarray(v) for k, v in theta.items()}, "x": np.asarray(x), "exact": exact,
              "chi2_posterior_to_q_star": oracles.chi_square_to_posterior(theta, x, q_star64)}
    seconds = {}
    out, *seconds["naive"] = _timed(lambda k, th, d: prior_monte_carlo(
        k, model, th, d, num_samples=budget, chunk_size=config.chunk_size, batch_size=batch), keys["naive"], theta, x)
    arrays["naive"], arrays["naive_stderr"] = np.asarray(out.bound), np.asarray(out.stderr)
    out, *seconds["iwae_qstar"] = _timed(lambda k, th, q, d: map_datapoints(iwae, k, th, q, d, batch),
                                         keys["iwae_qstar"], theta, q_star, x)
    arrays["iwae_qstar"], arrays["iwae_qstar_stderr"] = np.asarray(out.bound), np.asarray(out.stderr)
    run_ais = lambda k, th, q, d: map_datapoints(anneal, k, th, q, d, batch)
    for method, table in (("ais_prior", prior), ("ais_qstar", q_star)):
        out, *seconds[method] = _timed(run_ais, keys[method], theta, table, x)
        arrays[method], arrays[f"{method}_stderr"] = np.asarray(out.log_px), np.asarray(out.stderr)
        arrays[f"{method}_acceptance"] = np.asarray(out.acceptance_rate)
        arrays[f"{method}_step_size"] = np.asarray(out.step_size)
    return arrays, {m: {"compile": round(c, 2), "run": round(r, 2)} for m, (c, r) in seconds.items()}


def summarize(arrays: dict) -> dict:
    """Per method: mean error (estimate - exact) and its standard error over datapoints, mean
    |error|, RMSE, mean delta-method standard error (and AIS's acceptance and step size)."""
    rows = {}
    for method in METHODS:
        err = np.asarray(arrays[method], np.float64) - arrays["exact"]
        row = {"mean_error": float(err.mean()),
               "stderr_of_mean_error": float(err.std(ddof=1) / np.sqrt(err.size)) if err.size > 1 else float("nan"),
               "mean_abs_error": float(np.abs(err).mean()), "rmse": float(np.sqrt(np.mean(err**2))),
               "mean_delta_method_stderr": float(np.mean(arrays[f"{method}_stderr"]))}
        if method.startswith("ais"):
            row["acceptance_rate"] = float(np.mean(arrays[f"{method}_acceptance"]))
            row["final_step_size"] = float(np.mean(arrays[f"{method}_step_size"]))
        rows[method] = row
    return rows


def markdown(result: dict) -> str:
    c = result["config"]
    lines = ["# log p(x) estimators against the exact value, by latent dimension", "",
             f"seed {result['seed']}; linear-Gaussian oracles (D = {c['data_per_latent']} d, W = {c['scale']} Q), "
             f"{c['num_points']} datapoints per model; every estimator spends E = "
             f"{result['likelihood_evaluations']} evaluations of log p(x, z) per datapoint (AIS: "
             f"{c['ais']['num_chains']} chains + {c['ais']['adapt_chains']} adaptation chains, "
             f"T = {c['ais']['num_steps']} {c['ais']['schedule']} steps, {c['ais']['leapfrog_steps']} leapfrog "
             "steps). Error = estimate - exact, nats, mean over datapoints ± its standard error.", "",
             "| d | exact log p(x) | naive (prior MC) | IWAE_E with q* | AIS from prior | AIS from q* | "
             "chi^2(p ‖ q*) |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for d, r in result["dims"].items():
        cells = [f"{r['methods'][m]['mean_error']:+.3f} ± {r['methods'][m]['stderr_of_mean_error']:.3f}"
                 for m in METHODS]
        lines.append(f"| {d} | {r['exact_mean']:.2f} | " + " | ".join(cells) + f" | {r['chi2_q_star_mean']:.3g} |")
    lines += ["", "AIS diagnostics (mean acceptance rate, final step size) and seconds (compile + run; AIS from "
              "q* reuses the program compiled for AIS from the prior):", "",
              "| d | AIS prior | AIS q* | " + " | ".join(METHODS) + " |", "| ---: | --- | --- |" + " ---: |" * len(METHODS)]
    for d, r in result["dims"].items():
        diag = [f"{r['methods'][m]['acceptance_rate']:.2f}, {r['methods'][m]['final_step_size']:.3f}"
                for m in ("ais_prior", "ais_qstar")]
        secs = [f"{s['compile']:.1f} + {s['run']:.1f}" for s in (r["seconds"][m] for m in METHODS)]
        lines.append(f"| {d} | " + " | ".join(diag + secs) + " |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: str) -> None:
    plt = plotting.plt
    fig, ax = plt.subplots(figsize=(6, 4.5))
    dims = [int(d) for d in result["dims"]]
    labels = {"naive": "naive prior MC", "iwae_qstar": "IWAE with q*", "ais_prior": "AIS from prior",
              "ais_qstar": "AIS from q*"}
    for method in METHODS:
        ax.plot(dims, [r["methods"][method]["mean_abs_error"] for r in result["dims"].values()], marker="o",
                label=labels[method])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("latent dimension d")
    ax.set_ylabel("mean |estimate - exact log p(x)| (nats)")
    ax.set_title(f"{result['likelihood_evaluations']} evaluations of log p(x, z) per datapoint")
    ax.legend()
    save_figure(fig, path)


@rundir.staged
def run(config: MarginalLikelihoodConfig, workdir: str, *, progress: bool = True) -> dict:
    log = progress_log(progress)
    config.validate()
    start = time.perf_counter()
    key = jax.random.PRNGKey(config.seed)
    dims, npz = {}, {}
    for d in config.latent_dims:
        log(f"latent dimension {d}")
        arrays, seconds = run_dim(config, jax.random.fold_in(key, d), d)
        dims[str(d)] = {"exact_mean": float(np.mean(arrays["exact"])),
                        "chi2_q_star_mean": float(np.mean(arrays["chi2_posterior_to_q_star"])),
                        "methods": summarize(arrays), "seconds": seconds}
        npz |= {f"d{d}/{name}": np.asarray(value) for name, value in arrays.items()}
    result = {"dims": dims, "likelihood_evaluations": config.ais.likelihood_evaluations(), **header(config),
              "wall_seconds": {"total": round(time.perf_counter() - start, 2)}}
    storage.atomic_save_npz(os.path.join(workdir, "marginal_likelihood.npz"), **npz)
    figure(result, os.path.join(workdir, "error_vs_dim.png"))
    return write_report(workdir, "marginal_likelihood", result, markdown(result))


main = CLI.main(run, report=markdown)


if __name__ == "__main__":
    main()
