"""How far short of q*_FFG does each named local-fit protocol stop, and at what cost? On oracles.

    python -m experiments.local_fit_accuracy --workdir runs/local_fit_accuracy          # ~5 min, 2 busy cores
    python -m experiments.local_fit_accuracy --workdir runs/local_fit_accuracy --quick  # smoke run, ~1 min
    python -m experiments.local_fit_accuracy --set protocols=reference,accurate,stl     # ~1.5 min: no 100-draw fits

Every named protocol of vi_jax.local.LOCAL_FIT_PROTOCOLS (reference, authors, accurate), and
the candidates for a faster fit (CANDIDATES: sticking-the-landing gradients), fits the same
rows, from an encoder-like start and from the prior (mean 0, log sigma 0), with the code path
of experiments/gap.py (`make_local_fit`, analytic KL unless STL), on problems whose q*_FFG is known:
  linear_gaussian_d{4,50}: p(z) = N(0, I_d), p(x|z) = N(W z + b, diag(psi)) with x in R^16 and
    R^100 (random W, b, psi; vi_jax.oracles). q*_FFG and the ELBO of any Gaussian q are closed
    forms, so a fit's shortfall L(q*) - L(q) is exact (no Monte-Carlo noise). Encoder-like start:
    the best affine encoder that sees only the first 3/4 of x (closed form, fitted on 1000 other
    draws), a few tenths of a nat to a few nats short.
  vae_digits_2d: a VAE with a 2-D latent (tanh decoder, Bernoulli) trained on digits; q*_FFG and
    every ELBO by quadrature (vi_jax.oracles.quadrature_optimal_ffg / quadrature_elbo; their
    own error estimates are reported). Encoder-like start: the VAE's encoder.
Per problem, protocol and start: the shortfall in nats (mean, 90th percentile, max over rows;
and before the fit), decoder evaluations per row (steps x draws per step, mean over rows), wall
seconds of the fit (compilation excluded; both starts share one executable) and the share of
rows that converged before the step cap.

Writes into --workdir (staged and published together with MANIFEST.json, vi_jax.rundir):
local_fit_accuracy.json (seed, config, environment, the protocols' names and settings, per
problem the table's figures and the oracles' accuracy), local_fit_accuracy.md (the table) and
local_fit_accuracy.png (max shortfall against decoder evaluations per row).

Expected figures: experiments/benchmark/references/quick.json (the --quick run; the default
run's table is in BENCHMARKS.md, "Local fit accuracy on the oracles"); check a fresh run
against them with
    python -m experiments.benchmark --only local_fit_accuracy --no-peers --check experiments/benchmark/references/quick.json
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax import oracles, plotting, rundir
from vi_jax.config import Rule, check_fields, count, counts, real
from vi_jax.data import subset
from vi_jax.families import diagonal_gaussian
from vi_jax.local import LOCAL_FIT_PROTOCOLS, LocalFitConfig, make_local_fit, tile_rows
from vi_jax.vae import VAEConfig, build_vae, load_training_data, train_vae

from ._common import Cli, header, progress_log, save_figure, write_report

STARTS = ("encoder", "prior")
# Candidates for a fit that reaches q* fast (issue 17 item 2), measured beside the named
# protocols: (settings, make_local_fit's gradient estimator). Sticking-the-landing gradients
# (Roeder et al. 2017) drop the score term of log q, whose noise does not vanish at q*; they
# need the Monte-Carlo entropy form (kl="mc"). "stl": 4 draws per step, lr 1e-2 divided by 10
# at each of 2 plateaus; "accurate_stl": the accurate protocol's settings with STL gradients.
CANDIDATES: dict[str, tuple[LocalFitConfig, str]] = {
    "stl": (LocalFitConfig(learning_rate=1e-2, num_samples=4, lr_reductions=2), "stl"),
    "accurate_stl": (LOCAL_FIT_PROTOCOLS["accurate"], "stl"),
}
KNOWN = tuple(LOCAL_FIT_PROTOCOLS) + tuple(CANDIDATES)


@dataclasses.dataclass(frozen=True)
class LocalFitAccuracyConfig:
    seed: int = 0
    protocols: tuple[str, ...] = KNOWN  # named protocols and candidates
    starts: tuple[str, ...] = STARTS
    linear_latent_dims: tuple[int, ...] = (4, 50)
    linear_data_dims: tuple[int, ...] = (16, 100)  # x in R^D for each latent dimension
    linear_rows: int = 20
    encoder_visible: float = 0.75  # the encoder-like start sees this share of x's coordinates
    encoder_training_rows: int = 1000  # draws its (least-squares) map is fitted on
    vae: VAEConfig = VAEConfig(latent_dim=2, decoder_hidden=(64, 64), activation="tanh", num_epochs=100,
                               eval_every=0)
    vae_rows: int = 20  # evaluated test digits (0: no VAE problem)
    quadrature: oracles.QuadratureConfig = oracles.QuadratureConfig()
    max_steps: int = 0  # > 0: cap every protocol at this many steps (the protocols then run as "custom")

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": count(0), "linear_latent_dims": counts(1), "linear_data_dims": counts(1), "linear_rows": count(1),
        "encoder_visible": real(0, 1, high_closed=True), "encoder_training_rows": count(1), "vae_rows": count(0),
        "max_steps": count(0)}

    def validate(self) -> None:
        check_fields(self, self.RULES)
        if not self.protocols or not set(self.protocols) <= set(KNOWN):
            raise ValueError(f"protocols must be a non-empty subset of {KNOWN}, got {self.protocols}")
        if not self.starts or not set(self.starts) <= set(STARTS):
            raise ValueError(f"starts must be a non-empty subset of {STARTS}, got {self.starts}")
        if len(self.linear_data_dims) != len(self.linear_latent_dims):
            raise ValueError(f"linear_data_dims {self.linear_data_dims} needs one entry per latent dimension "
                             f"{self.linear_latent_dims}")
        if self.vae_rows:
            self.vae.validate()
            self.quadrature.validate(self.vae.latent_dim)


# --quick: the d = 4 oracle and a briefly trained 2-D VAE on coarse grids, few rows, a step cap
QUICK = ["linear_latent_dims=4", "linear_data_dims=16", "linear_rows=5", "encoder_training_rows=200",
         "vae.num_epochs=5", "vae.encoder_hidden=32", "vae.decoder_hidden=32", "vae_rows=4", "max_steps=2000",
         "quadrature.coarse_points=61", "quadrature.points=41", "quadrature.elbo_points=41",
         "quadrature.polish_points=41", "quadrature.fit_iterations=6"]

CLI = Cli(__doc__, LocalFitAccuracyConfig, workdir="runs/local_fit_accuracy", writes="local_fit_accuracy.json",
          quick=QUICK, seed=("seed", "vae.seed"), example="--set protocols=reference,accurate")


def protocols(config: LocalFitAccuracyConfig) -> dict[str, tuple[LocalFitConfig, str]]:
    """name -> (settings, gradient estimator) of every protocol measured (with the step cap)."""
    cap = {"max_steps": config.max_steps} if config.max_steps else {}
    chosen = {name: CANDIDATES.get(name, (LOCAL_FIT_PROTOCOLS.get(name), "reparam")) for name in config.protocols}
    return {name: (dataclasses.replace(fit, **cap), estimator) for name, (fit, estimator) in chosen.items()}


def summary(shortfall: np.ndarray, error: float, before: np.ndarray, steps: np.ndarray, converged: np.ndarray,
            num_samples: int, seconds: float) -> dict:
    return {"mean": float(shortfall.mean()), "p90": float(np.quantile(shortfall, 0.9)),
            "max": float(shortfall.max()), "min": float(shortfall.min()), "shortfall_error_max": error,
            "within_1e-3_every_row": bool(np.all(shortfall <= 1e-3)),
            "before_fit_mean": float(before.mean()), "before_fit_max": float(before.max()),
            "decoder_evaluations_per_row": float(steps.mean() * num_samples),
            "median_steps": float(np.median(steps)), "max_steps": int(steps.max()),
            "converged_share": float(converged.mean()), "seconds": round(seconds, 3)}


def fit_all(key, model, theta, family, data, starts: dict, fits: dict[str, tuple[LocalFitConfig, str]],
            exact_shortfall, log) -> dict:
    """Every protocol from every start on the same rows: one compiled fit per protocol (the starts
    have the same shapes), timed without compilation; exact_shortfall(q) -> (L(q*) - L(q) per row,
    the largest error of those values)."""
    data = jnp.asarray(data)
    out = {}
    for name, (config, estimator) in fits.items():
        kl = "mc" if estimator == "stl" else family.kl_form
        fit = jax.jit(make_local_fit(model, family, config, kl=kl, estimator=estimator))
        compiled = fit.lower(key, theta, next(iter(starts.values())), data).compile()
        out[name] = {}
        for start_name, table in starts.items():
            log(f"  {name} from the {start_name}")
            start = time.perf_counter()
            result = jax.block_until_ready(compiled(key, theta, table, data))
            seconds = time.perf_counter() - start
            shortfall, error = exact_shortfall({k: np.asarray(v, np.float64) for k, v in result.params.items()})
            before, _ = exact_shortfall({k: np.asarray(v, np.float64) for k, v in table.items()})
            out[name][start_name] = summary(shortfall, error, before, np.asarray(result.steps),
                                            np.asarray(result.converged), config.num_samples, seconds)
    return out


def run_linear(config: LocalFitAccuracyConfig, key, latent_dim: int, data_dim: int, log) -> dict:
    family = diagonal_gaussian(latent_dim)
    theta = oracles.linear_gaussian_params(jax.random.fold_in(key, 0), latent_dim, data_dim)
    model = oracles.linear_gaussian(**theta)
    x = np.asarray(oracles.sample_data(jax.random.fold_in(key, 1), theta, config.linear_rows), np.float64)
    other = np.asarray(oracles.sample_data(jax.random.fold_in(key, 2), theta, config.encoder_training_rows))
    visible = tuple(range(max(1, round(config.encoder_visible * data_dim))))
    affine, _ = oracles.optimal_affine_encoder(theta, other, visible)
    flat = x[:, list(visible)] @ affine.kernel + affine.bias
    tables = {"encoder": {"mean": flat[:, :latent_dim], "log_scale": flat[:, latent_dim:]},
              "prior": tile_rows(family.init(), len(x))}
    tables = {s: jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), tables[s]) for s in config.starts}
    elbo_star = oracles.gaussian_elbo(theta, x, oracles.optimal_ffg(theta, x))
    log(f"[linear_gaussian_d{latent_dim}] {len(x)} rows, x in R^{data_dim}")
    fits = fit_all(jax.random.fold_in(key, 3), model, theta, family, x, tables, protocols(config),
                   lambda q: (elbo_star - oracles.gaussian_elbo(theta, x, q), 0.0), log)
    return {"n": len(x), "latent_dim": latent_dim, "data_dim": data_dim,
            "q_star": "closed form (vi_jax.oracles.optimal_ffg); shortfalls exact",
            "encoder_start": f"best affine encoder seeing x[:{len(visible)}] of {data_dim}", "fits": fits}


def run_vae(config: LocalFitAccuracyConfig, key, log, progress: bool) -> dict:
    vae_config = config.vae
    dataset, train, test = load_training_data(vae_config)
    log(f"[vae] training the VAE ({vae_config.num_epochs} epochs)")
    vae = build_vae(vae_config, dataset.dim, len(train) // vae_config.batch_size)
    params = train_vae(vae, vae_config, train, progress=progress).state.params
    _, x = subset(jax.random.fold_in(key, 0), test, config.vae_rows)
    theta = params["decoder"]
    q_phi = vae.encode(params["encoder"], jnp.asarray(x))
    log(f"[vae] quadrature q*_FFG on {len(x)} test digits")
    qc = config.quadrature
    quad = oracles.quadrature_log_marginal(vae.model, theta, x, qc)
    q_star = oracles.quadrature_optimal_ffg(vae.model, theta, x, quad, qc,
                                            starts=[{k: np.asarray(v, np.float64) for k, v in q_phi.items()}])

    def shortfall(q):
        elbo = oracles.quadrature_elbo(vae.model, theta, x, q, points=qc.elbo_points, radius=qc.elbo_radius,
                                       batch_size=qc.batch_size)
        return q_star.elbo - elbo.elbo, float(np.max(elbo.error + q_star.elbo_error))

    tables = {"encoder": q_phi, "prior": tile_rows(vae.family.init(), len(x))}
    fits = fit_all(jax.random.fold_in(key, 1), vae.model, theta, vae.family, x,
                   {s: tables[s] for s in config.starts}, protocols(config), shortfall, log)
    name = f"vae_{vae_config.dataset}_{vae_config.latent_dim}d"
    return {name: {"n": len(x), "latent_dim": vae_config.latent_dim, "data_dim": dataset.dim,
                   "q_star": "quadrature (vi_jax.oracles.quadrature_optimal_ffg)",
                   "encoder_start": "the VAE's encoder", "fits": fits,
                   "quadrature_accuracy": {"q_star_elbo_max_h_vs_2h": float(np.max(q_star.elbo_error)),
                                           "q_star_last_polish_gain_max": float(np.max(q_star.polish_gain))}}}


def markdown(result: dict) -> str:
    lines = ["# Local fit accuracy on the oracles", "",
             f"seed {result['seed']}; shortfall = L[q*_FFG] - L[fitted q], nats per row (exact for the "
             "linear-Gaussian oracle, by quadrature for the 2-D VAE); decoder evaluations per row = steps x "
             "draws per step (mean over rows); wall: the fit alone, compilation excluded.", "",
             "| problem | protocol | start | before fit: mean | short: mean / p90 / max | its error | "
             "decoder evals per row | wall s | converged |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for problem, p in result["problems"].items():
        for protocol, by_start in p["fits"].items():
            for start, r in by_start.items():
                lines.append(f"| {problem} (n = {p['n']}) | {protocol} | {start} | {r['before_fit_mean']:.3f} | "
                             f"{r['mean']:.2g} / {r['p90']:.2g} / {r['max']:.2g} | {r['shortfall_error_max']:.0e} | "
                             f"{r['decoder_evaluations_per_row'] / 1e3:.1f} k | {r['seconds']:.2f} | "
                             f"{r['converged_share']:.0%} |")
    lines += ["", "Protocols: " + "; ".join(f"{name} ({p['name']}, {p['estimator']} gradients): {p['settings']}"
                                          for name, p in result["protocols"].items())]
    for problem, p in result["problems"].items():
        for key, value in p.get("quadrature_accuracy", {}).items():
            lines.append(f"- {problem} accuracy, {key}: {value:.2g}")
    lines.append(f"\nWall seconds: {result['wall_seconds']}")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: str) -> None:
    """Per problem: max shortfall over rows against decoder evaluations per row (log-log)."""
    plt = plotting.plt
    problems = result["problems"]
    fig, axes = plt.subplots(1, len(problems), figsize=(4.5 * len(problems), 4), squeeze=False)
    for ax, (problem, p) in zip(axes[0], problems.items()):
        for i, (protocol, by_start) in enumerate(p["fits"].items()):
            for start, r in by_start.items():
                ax.scatter(r["decoder_evaluations_per_row"], max(r["max"], 1e-6), marker="os"[start == "prior"],
                           color=f"C{i}", facecolors="none" if start == "prior" else f"C{i}",
                           label=f"{protocol}, {start}")
        ax.axhline(1e-3, ls="--", lw=1, color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("decoder evaluations per row")
        ax.set_ylabel("max shortfall over rows (nats)")
        ax.set_title(problem, fontsize=9)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path)


@rundir.staged
def run(config: LocalFitAccuracyConfig, workdir: str, *, progress: bool = True) -> dict:
    """Every problem, protocol and start; the files; returns the local_fit_accuracy.json dict."""
    log = progress_log(progress)
    config.validate()
    start = time.perf_counter()
    key = jax.random.PRNGKey(config.seed)
    problems, seconds = {}, {}
    for index, (d, data_dim) in enumerate(zip(config.linear_latent_dims, config.linear_data_dims)):
        t = time.perf_counter()
        problems[f"linear_gaussian_d{d}"] = run_linear(config, jax.random.fold_in(key, index), d, data_dim, log)
        seconds[f"linear_gaussian_d{d}"] = round(time.perf_counter() - t, 2)
    if config.vae_rows:
        t = time.perf_counter()
        problems |= run_vae(config, jax.random.fold_in(key, 100), log, progress)
        seconds["vae"] = round(time.perf_counter() - t, 2)
    seconds["total"] = round(time.perf_counter() - start, 2)
    result = {"protocols": {name: {"name": fit.protocol_name() if name in LOCAL_FIT_PROTOCOLS else "candidate",
                                   "settings": dataclasses.asdict(fit), "estimator": estimator}
                            for name, (fit, estimator) in protocols(config).items()},
              "problems": problems, **header(config), "wall_seconds": seconds}
    figure(result, os.path.join(workdir, "local_fit_accuracy.png"))
    return write_report(workdir, "local_fit_accuracy", result, markdown(result))


main = CLI.main(run, report=markdown)


if __name__ == "__main__":
    main()
