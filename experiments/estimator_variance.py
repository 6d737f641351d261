"""How noisy is each ELBO gradient estimator? Reparameterization, sticking the landing, score function.

    python -m experiments.estimator_variance --workdir runs/estimator_variance          # linear oracle
    python -m experiments.estimator_variance --workdir runs/estimator_variance --vae    # + a digits VAE
    python -m experiments.estimator_variance --workdir runs/ev --checkpoint runs/train_vae  # a trained VAE
    python -m experiments.estimator_variance --workdir runs/ev --quick                  # smoke run

(--vae: about 8 minutes on 2 shared CPU cores, mostly compiling one program per estimator and
M; the linear oracle alone about 3.)

For a fixed model and fixed q (the same for every estimator), R repetitions with independent
keys each give one estimate g_r of the gradient of sum_i L(x_i; lambda_i) w.r.t. the N
datapoints' q parameters lambda_i (vi_jax.elbo.make_elbo with M draws per datapoint). Per
estimator and M the report gives the mean gradient, the total variance tr Cov(g) / N (the sum
of the coordinates' variances, per datapoint) with its standard error, and its ratio to the
library default's (reparameterized draws, closed-form KL). Estimators (`estimators`, as
"estimator/kl"): reparam/analytic, reparam/mc (entropy form), stl/mc (Roeder et al. 2017),
score_function/analytic and score_function/mc (REINFORCE, leave-one-out baseline). Each is
unbiased: the report checks the mean against the exact gradient where there is one
(max |z| over coordinates, z = (mean - exact) / se), else against the default's estimates on
the same keys (z of the paired differences).

Settings (model, q):
  linear_gaussian/prior, linear_gaussian/q_star: the linear-Gaussian oracle of
    experiments/oracle_gap.py (d = 4, D = 16, seeded), N points drawn from it, q = N(0, I) (where
    a local fit starts) and q = q*_FFG (the optimum of the family). Exact gradients in closed form
    (vi_jax.oracles.ffg_elbo_gradient).
  vae_digits (--vae or --checkpoint): a Bernoulli VAE on scikit-learn's digits (trained here
    with `vae`, or loaded from a train_vae workdir), q = its encoder's q_phi(x_i) on the first N
    test digits.

Writes into --workdir (atomically, estimator_variance.json last): estimator_variance.json
(seed, config, environment, wall seconds, per setting and row: estimator, kl, M, mean gradient
[N, P], its norm per datapoint, total variance and its standard error, ratio, max |z|),
estimator_variance.md (tables) and variance_vs_samples.png (total variance against M, log-log);
metrics.jsonl while it trains a VAE (vi_jax.metrics).

Expected figures: experiments/benchmark/references/quick.json (the --quick --vae run; the
default --vae run's table is in BENCHMARKS.md, "Figures no reference checks"); check a fresh
run against them with
    python -m experiments.benchmark --only estimator_variance --no-peers --check experiments/benchmark/references/quick.json
With --vae and otherwise the defaults: reparameterized variances fall exactly as 1/M, the score
function's slightly faster (its leave-one-out baseline improves with M). At the prior q = p(z),
where the KL's path gradient is 0, STL equals reparam/analytic draw for draw. Near the optimum
the entropy-form score function is far less noisy than with the closed-form KL: its
f = log p(x, z) - log q(z) is then nearly constant. Every estimator is unbiased: its max |z|
against the exact gradients (and in the VAE's paired comparisons) stays within what that many
coordinates give by chance.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from vi_jax import oracles, plotting, rundir
from vi_jax.config import Rule, check_fields, count, counts
from vi_jax.elbo import KL_FORMS, make_elbo, map_datapoints
from vi_jax.estimators import ESTIMATORS
from vi_jax.families import diagonal_gaussian
from vi_jax.vae import VAEConfig, build_vae, load_trained_vae, load_training_data, train_vae

from ._common import Cli, FieldFlag, header, progress_log, save_figure, write_report

REFERENCE = "reparam/analytic"


@dataclasses.dataclass(frozen=True)
class EstimatorVarianceConfig:
    seed: int = 0
    estimators: tuple[str, ...] = ("reparam/analytic", "reparam/mc", "stl/mc", "score_function/analytic",
                                   "score_function/mc")
    num_samples: tuple[int, ...] = (2, 4, 8, 16, 32)  # M (the score function needs M >= 2)
    repetitions: int = 500  # R independent gradient estimates per estimator and M
    batch_size: int = 100  # repetitions computed at once (memory)
    num_points: int = 8  # N datapoints per setting
    latent_dim: int = 4  # linear-Gaussian oracle
    data_dim: int = 16
    include_vae: bool = False
    vae: VAEConfig = VAEConfig(eval_every=0)
    checkpoint: str = ""  # a train_vae workdir to load instead of training `vae`

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": count(0), "num_samples": Rule(counts(2).ok, counts(2).want + " (the score function's baseline)"), "repetitions": count(2), "batch_size": count(1),
        "num_points": count(1), "latent_dim": count(1), "data_dim": count(1)}

    def validate(self) -> None:
        check_fields(self, self.RULES)
        for name in self.estimators:
            estimator, _, kl = name.partition("/")
            if estimator not in ESTIMATORS or kl not in KL_FORMS:
                raise ValueError(f"estimator {name!r} is not 'estimator/kl' with estimator in {tuple(ESTIMATORS)} "
                                 f"and kl in {KL_FORMS}")
        if REFERENCE not in self.estimators:
            raise ValueError(f"estimators must include the reference {REFERENCE!r}")
        if self.include_vae and not self.checkpoint:
            self.vae.validate()


QUICK = ["num_samples=2,8", "repetitions=200", "num_points=4", "vae.num_epochs=5", "vae.encoder_hidden=32",
         "vae.decoder_hidden=32"]

CLI = Cli(__doc__, EstimatorVarianceConfig, workdir="runs/estimator_variance", writes="estimator_variance.json",
          quick=QUICK, seed=("seed", "vae.seed"),
          flags=[FieldFlag("--vae", "include_vae", "also train a digits VAE (config.vae) and measure it", value="true"),
                 FieldFlag("--checkpoint", "checkpoint", "measure this train_vae workdir's VAE instead")],
          example="--set repetitions=2000 --set num_samples=2,16 --set vae.num_epochs=50")


def gradient_sampler(model, family, estimator: str, kl: str, num_samples: int, batch_size: int):
    """jitted (keys [R], theta, q_table, x [N, D]) -> g [R, N, P]: per key, the gradient of
    sum_i L(x_i; q_i) w.r.t. every q_i (datapoint i uses key fold_in(key, i)), flattened per row."""
    elbo = make_elbo(model, family, num_samples=num_samples, kl=kl, estimator=estimator)

    def point_gradient(key, theta, q, x_i):
        return ravel_pytree(jax.grad(lambda p: elbo(key, theta, p, x_i).elbo)(q))[0]

    def sample(keys, theta, q_table, x):
        return jax.lax.map(lambda k: map_datapoints(point_gradient, k, theta, q_table, x), keys,
                           batch_size=batch_size)

    return jax.jit(sample)


def summarize(g: np.ndarray, truth: np.ndarray | None) -> dict:
    """Statistics of R gradient estimates g [R, N, P] (float64): mean, its norm per datapoint,
    total variance tr Cov(g) / N = sum_r |g_r - mean|^2 / ((R - 1) N) with the standard error of
    that average, and max |z| over coordinates of z = mean(g - truth) / SE(g - truth), where
    truth is the exact gradient [N, P] or another estimator's R estimates [R, N, P] on the same
    keys (paired differences); None without a truth."""
    r, n = g.shape[:2]
    mean = g.mean(axis=0)
    sq_dev = np.sum((g - mean) ** 2, axis=(1, 2))
    row = {"mean": mean.tolist(), "mean_norm": float(np.linalg.norm(mean) / np.sqrt(n)),
           "total_variance": float(sq_dev.sum() / (r - 1) / n),
           "total_variance_stderr": float(sq_dev.std(ddof=1) / np.sqrt(r) * r / (r - 1) / n), "max_abs_z": None}
    if truth is not None:
        diff = g - truth
        se = diff.std(axis=0, ddof=1) / np.sqrt(r)
        row["max_abs_z"] = float(np.max(np.abs(diff.mean(axis=0)) / np.where(se > 0, se, np.inf)))
    return row


def measure(config: EstimatorVarianceConfig, key, model, family, theta, q_table, x, exact, samplers, log) -> list:
    """One row per (estimator, M), the same R keys for every row (common random numbers). Means
    are checked against `exact` [N, P], or without it against the reference's estimates."""
    keys = jax.random.split(key, config.repetitions)
    rows = []
    for m in config.num_samples:
        grads = {}
        for name in config.estimators:
            estimator, _, kl = name.partition("/")
            if (name, m) not in samplers:
                samplers[(name, m)] = gradient_sampler(model, family, estimator, kl, m, config.batch_size)
            grads[name] = np.asarray(samplers[(name, m)](keys, theta, q_table, x), np.float64)
            log(f"  {name} M={m}")
        cells = {name: summarize(g, exact if exact is not None else None if name == REFERENCE else grads[REFERENCE])
                 for name, g in grads.items()}
        for name, row in cells.items():
            estimator, _, kl = name.partition("/")
            ratio = row["total_variance"] / cells[REFERENCE]["total_variance"]
            rows.append({"estimator": estimator, "kl": kl, "num_samples": m, **row, "ratio_to_reference": ratio})
    return rows


def linear_settings(config: EstimatorVarianceConfig, key, log) -> tuple[dict, dict]:
    family = diagonal_gaussian(config.latent_dim)
    theta = oracles.linear_gaussian_params(jax.random.fold_in(key, 0), config.latent_dim, config.data_dim)
    model = oracles.linear_gaussian(**theta)
    x = np.asarray(oracles.sample_data(jax.random.fold_in(key, 1), theta, config.num_points))
    n, d = config.num_points, config.latent_dim
    qs = {"prior": {"log_scale": np.zeros((n, d)), "mean": np.zeros((n, d))},
          "q_star": oracles.optimal_ffg(theta, x)}
    samplers, settings, seconds = {}, {}, {}
    for index, (name, q) in enumerate(qs.items()):
        start = time.perf_counter()
        log(f"[linear_gaussian/{name}]")
        exact = oracles.ffg_elbo_gradient(theta, x, q)
        exact_flat = np.concatenate([exact[k] for k in sorted(exact)], axis=-1)  # ravel_pytree's order
        q_table = {k: jnp.asarray(v, jnp.float32) for k, v in q.items()}
        rows = measure(config, jax.random.fold_in(key, 10 + index), model, family, model.init(None), q_table,
                       jnp.asarray(x), exact_flat, samplers, log)
        settings[f"linear_gaussian/{name}"] = {
            "n": n, "params_per_datapoint": 2 * d, "truth": "exact gradient (closed form)",
            "exact_mean_norm": float(np.linalg.norm(exact_flat) / np.sqrt(n)), "rows": rows}
        seconds[f"linear_gaussian/{name}"] = round(time.perf_counter() - start, 2)
    return settings, seconds


def vae_setting(config: EstimatorVarianceConfig, key, log, progress: bool, workdir: str) -> tuple[dict, dict]:
    start = time.perf_counter()
    if config.checkpoint:
        vae_config, vae, params = load_trained_vae(config.checkpoint)
        _, _, test = load_training_data(vae_config)
    else:
        vae_config = config.vae
        dataset, train, test = load_training_data(vae_config)
        log(f"[vae] training ({vae_config.num_epochs} epochs)")
        vae = build_vae(vae_config, dataset.dim, len(train) // vae_config.batch_size)
        params = train_vae(vae, vae_config, train, progress=progress,
                           metrics=rundir.live_path(workdir, "metrics.jsonl")).state.params
    seconds = {"vae/train_or_load": round(time.perf_counter() - start, 2)}
    start = time.perf_counter()
    x = jnp.asarray(test[:config.num_points])
    q_table = vae.encode(params["encoder"], x)
    log(f"[vae_digits] q_phi of the first {config.num_points} test digits")
    rows = measure(config, key, vae.model, vae.family, params["decoder"], q_table, x, None, {}, log)
    seconds["vae_digits"] = round(time.perf_counter() - start, 2)
    setting = {"n": config.num_points, "params_per_datapoint": vae.family.num_params,
               "truth": f"no exact gradient: z of the paired difference to {REFERENCE}",
               "latent_dim": vae_config.latent_dim, "source": config.checkpoint or "trained here (config.vae)",
               "rows": rows}
    return {"vae_digits": setting}, seconds


def variance_figure(result: dict, path: str) -> None:
    plt = plotting.plt
    settings = result["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 4), squeeze=False)
    for ax, (name, setting) in zip(axes[0], settings.items()):
        labels = dict.fromkeys(f"{r['estimator']}/{r['kl']}" for r in setting["rows"])
        for label in labels:
            rows = [r for r in setting["rows"] if f"{r['estimator']}/{r['kl']}" == label]
            ms = [r["num_samples"] for r in rows]
            ax.errorbar(ms, [r["total_variance"] for r in rows], yerr=[2 * r["total_variance_stderr"] for r in rows],
                        marker="o", label=label, capsize=2)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (draws per datapoint)")
        ax.set_title(name, fontsize=10)
    axes[0][0].set_ylabel("tr Cov(gradient) per datapoint")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("ELBO gradient variance w.r.t. q's parameters (error bars: 2 SE)")
    save_figure(fig, path)


def markdown(result: dict) -> str:
    config = result["config"]
    lines = ["# Variance of ELBO gradient estimators", "",
             f"seed {result['seed']}; R = {config['repetitions']} repetitions per cell. Cells: total variance "
             "tr Cov(g) per datapoint of the gradient w.r.t. q's parameters (x its ratio to "
             f"{REFERENCE}). max abs z: the largest |mean - truth| / SE over coordinates and M, with the "
             f"exact gradient as truth, else {REFERENCE}'s estimates on the same keys (unbiased: rarely "
             "above 4).", ""]
    for name, setting in result["settings"].items():
        ms = sorted({r["num_samples"] for r in setting["rows"]})
        labels = list(dict.fromkeys(f"{r['estimator']}/{r['kl']}" for r in setting["rows"]))
        cell = {(f"{r['estimator']}/{r['kl']}", r["num_samples"]): r for r in setting["rows"]}
        lines += [f"## {name} (N = {setting['n']}, {setting['params_per_datapoint']} parameters per datapoint)", "",
                  f"Truth: {setting['truth']}."
                  + (f" Exact gradient norm per datapoint: {setting['exact_mean_norm']:.4g}."
                     if "exact_mean_norm" in setting else ""), "",
                  "| estimator | " + " | ".join(f"M = {m}" for m in ms) + " | max abs z |",
                  "| --- | " + " | ".join("---:" for _ in ms) + " | ---: |"]
        for label in labels:
            cells = [f"{cell[(label, m)]['total_variance']:.3g} (x{cell[(label, m)]['ratio_to_reference']:.3g})"
                     for m in ms]
            zs = [cell[(label, m)]["max_abs_z"] for m in ms]
            z = "-" if None in zs else f"{max(zs):.1f}"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {z} |")
        lines.append("")
    lines.append(f"Wall seconds: {result['wall_seconds']}")
    return "\n".join(lines) + "\n"


@rundir.staged
def run(config: EstimatorVarianceConfig, workdir: str, *, progress: bool = True) -> dict:
    """Every setting's rows, the files; returns the estimator_variance.json dict."""
    config.validate()
    log = progress_log(progress)
    start = time.perf_counter()
    key = jax.random.PRNGKey(config.seed)
    settings, seconds = linear_settings(config, jax.random.fold_in(key, 0), log)
    if config.include_vae or config.checkpoint:
        vae_settings, vae_seconds = vae_setting(config, jax.random.fold_in(key, 1), log, progress, workdir)
        settings |= vae_settings
        seconds |= vae_seconds
    seconds["total"] = round(time.perf_counter() - start, 2)
    result = {"settings": settings, **header(config), "wall_seconds": seconds}
    variance_figure(result, os.path.join(workdir, "variance_vs_samples.png"))
    return write_report(workdir, "estimator_variance", result, markdown(result))


main = CLI.main(run, report=markdown)


if __name__ == "__main__":
    main()
