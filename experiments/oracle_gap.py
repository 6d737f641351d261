"""Exact oracles against the project's estimates: every number of the gap decomposition, known.

    python -m experiments.oracle_gap --workdir runs/oracle            # about 45 s on 2 CPU cores
    python -m experiments.oracle_gap --workdir runs/oracle --quick    # smoke run, about 35 s
    python -m experiments.oracle_gap --workdir runs/oracle --seed 1 --set vae.num_points=100

Two models whose log p(x), L[q_phi], L[q*_FFG] and both gaps are known exactly:
  linear_gaussian: p(z) = N(0, I_4), p(x|z) = N(W z + b, diag(psi)) in R^16 with random W, b,
    psi (seeded), 1000 points drawn from it; closed forms in float64 (vi_jax.oracles). Two
    encoders, trained by amortized VI against the fixed true model on those points: a linear
    one (its class contains q*_FFG(x), so its amortization gap should be ~0) and a restricted
    one that sees only the first 12 of the 16 coordinates (a positive gap, whose optimum is
    also known in closed form).
  vae_digits_2d: a VAE with a 2-D latent (tanh MLP decoder, Bernoulli likelihood) trained on
    scikit-learn's digits; exact values by quadrature on 200 test points (log p(x) on adapted
    grids checked against a brute-force grid, ELBOs by the trapezoid rule in q's coordinates,
    q*_FFG by Newton on the quadrature ELBO; see vi_jax.oracles). tanh keeps the integrands
    smooth, where the trapezoid rule converges exponentially (a ReLU decoder works too, with
    O(h^2) errors that the reported accuracy figures would show).
The estimates come from `vi_jax.gap.evaluate_gaps`, the code path of experiments/gap.py: the
encoder's ELBO (Monte Carlo), q*_FFG fitted per datapoint with Adam from the encoder's output
(the GapProtocol's local fit), log p(x) by IWAE with K = 5000 and the fitted q* as proposal.

For every quantity the table gives the exact mean over datapoints, the estimate's mean, their
difference (estimate - exact) and its standard error sd_i(estimate_i - exact_i) / sqrt(n): the
exact values have no Monte-Carlo noise, so this is the estimator's own sampling error. IWAE is
biased low by O(1/K) and an imperfect local fit biases L[q*] low, so those rows may sit a few
hundredths of a nat below zero beyond their standard error; the others should be within a few.

Writes into --workdir (each file atomically, oracle.json last): oracle.json (seed, config,
environment, wall seconds, the tables, the oracles' own accuracy figures), oracle.md, oracle.npz
(linear W, b, log_psi, psi and the evaluated x; the encoders' q tables; the VAE's decoder
parameters, evaluated digits, q_phi and exact q*; every per-datapoint exact and estimated
value, so each exact number can be recomputed independently), manifold.png (E[x|z] over a grid
of z: the learned 2-D manifold) and posteriors.png (exact posteriors of a few test digits with
q_phi and q*_FFG); while training, metrics_<encoder>.jsonl and metrics_vae.jsonl (vi_jax.metrics).

Expected figures: experiments/benchmark/references/default.json; check a fresh run against them with
    python -m experiments.benchmark --only oracle_gap --no-peers --check experiments/benchmark/references/default.json
(All ELBOs share their draws, so the amortization gap's own noise is small and the local fit's
bias stands out.) The one systematic error is the local fit's: L[q*_FFG] stops short of q*
(Adam at a constant step size), which moves that much from the amortization to the
approximation gap.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vi_jax import oracles, plotting, rundir, storage
from vi_jax.config import Rule, check_fields, count, real
from vi_jax.data import subset
from vi_jax.families import diagonal_gaussian
from vi_jax.gap import GapProtocol, evaluate_gaps
from vi_jax.vae import VAEConfig, build_vae, load_training_data, train_vae

from ._common import Cli, header, progress_log, save_figure, write_report

QUANTITIES = (
    ("log_px", "log p(x)"),
    ("elbo_amortized", "L[q_phi]"),
    ("elbo_local_ffg", "L[q*_FFG]"),
    ("approximation_gap_ffg", "approximation gap"),
    ("amortization_gap_ffg", "amortization gap"),
)


@dataclasses.dataclass(frozen=True)
class LinearOracleConfig:
    latent_dim: int = 4
    data_dim: int = 16
    num_points: int = 1000  # drawn from the model: the encoders' training set and the evaluated points
    psi_low: float = 0.1
    psi_high: float = 1.0
    encoder_epochs: int = 200
    encoder_batch_size: int = 50
    encoder_learning_rate: float = 3e-2  # Adam, decayed exponentially to the final rate
    encoder_final_learning_rate: float = 1e-4
    restricted_visible: int = 12  # the restricted encoder sees x[:restricted_visible]

    RULES: ClassVar[dict[str, Rule]] = {
        "latent_dim": count(1), "data_dim": count(1), "num_points": count(1), "psi_low": real(0),
        "psi_high": real(0), "encoder_epochs": count(1), "encoder_batch_size": count(1),
        "encoder_learning_rate": real(0), "encoder_final_learning_rate": real(0), "restricted_visible": count(1)}

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (before any work is done)."""
        check_fields(self, self.RULES)
        if self.psi_low > self.psi_high:
            raise ValueError(f"need psi_low <= psi_high, got {self.psi_low}, {self.psi_high}")
        if self.restricted_visible > self.data_dim:
            raise ValueError(f"restricted_visible ({self.restricted_visible}) must be at most data_dim "
                             f"({self.data_dim})")
        if self.encoder_batch_size > self.num_points:  # else an epoch has no step
            raise ValueError(f"encoder_batch_size ({self.encoder_batch_size}) exceeds num_points ({self.num_points})")


@dataclasses.dataclass(frozen=True)
class VAEOracleConfig:
    vae: VAEConfig = VAEConfig(latent_dim=2, decoder_hidden=(64, 64), activation="tanh",
                               num_epochs=100, eval_every=0)
    num_points: int = 200  # evaluated test points (a seeded subset of the test split)
    quadrature: oracles.QuadratureConfig = oracles.QuadratureConfig()
    check_points: int = 301  # brute-force check grid: check_points^2 nodes on [-box, box]^2
    manifold_side: int = 15  # manifold.png shows manifold_side^2 decoder means

    RULES: ClassVar[dict[str, Rule]] = {"num_points": count(1), "check_points": count(1),
                                        "manifold_side": count(1)}

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (before any work is done)."""
        check_fields(self, self.RULES)
        self.vae.validate()
        self.quadrature.validate(self.vae.latent_dim)


@dataclasses.dataclass(frozen=True)
class OracleGapConfig:
    seed: int = 0
    linear: LinearOracleConfig = LinearOracleConfig()
    vae: VAEOracleConfig = VAEOracleConfig()
    # refine_steps=(0,): the semi-amortized curve is not part of this comparison
    protocol: GapProtocol = GapProtocol(refine_steps=(0,))

    RULES: ClassVar[dict[str, Rule]] = {"seed": count(0)}

    def validate(self) -> None:
        """Raise ValueError naming the first bad option (before any work is done)."""
        check_fields(self, self.RULES)
        self.linear.validate()
        self.vae.validate()
        self.protocol.validate()


# --quick: fewer points and epochs, coarser grids (one shape for every per-datapoint grid, so
# it compiles once), the loose local fit of experiments/gap.py's --quick, K = 500.
QUICK = ["linear.num_points=100", "linear.encoder_batch_size=10", "linear.encoder_epochs=400",
         "vae.vae.num_epochs=10", "vae.vae.encoder_hidden=64", "vae.num_points=20", "vae.check_points=121",
         "vae.quadrature.coarse_points=61", "vae.quadrature.points=41", "vae.quadrature.elbo_points=41",
         "vae.quadrature.polish_points=41", "vae.quadrature.fit_iterations=6",
         "protocol.local_fit.check_every=20", "protocol.local_fit.patience=5", "protocol.local_fit.max_steps=2000",
         "protocol.local_fit.learning_rate=3e-3", "protocol.elbo_samples=200", "protocol.iwae_samples=500"]

CLI = Cli(__doc__, OracleGapConfig, workdir="runs/oracle", writes="oracle.json", quick=QUICK,
          seed=("seed", "vae.vae.seed"),
          example="--set linear.num_points=500 --set vae.vae.num_epochs=50 --set protocol.iwae_samples=1000")


def compare(exact: dict, estimate: dict) -> dict:
    """Per quantity: exact and estimated means, difference (estimate - exact) and its standard
    error over datapoints, and the difference in standard errors."""
    rows = {}
    for name, _ in QUANTITIES:
        e, s = np.asarray(exact[name], np.float64), np.asarray(estimate[name], np.float64)
        diff = s - e
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
        rows[name] = {"exact": float(e.mean()), "estimate": float(s.mean()), "difference": float(diff.mean()),
                      "stderr": se, "z": float(diff.mean() / se) if se > 0 else 0.0}
    return rows


def _q_numpy(q) -> dict:
    return {k: np.asarray(v, np.float64) for k, v in q.items()}


def iwae_stderr(estimate: dict) -> float:
    """The IWAE's own (delta-method) standard error of the mean log p(x) estimate."""
    se = np.asarray(estimate["log_px_stderr"], np.float64)
    return float(np.sqrt(np.mean(se**2) / se.size))


def _estimate(key, model, theta, family, q_table, x, protocol, log):
    arrays, info = evaluate_gaps(key, model, theta, family, q_table, {"ffg": family}, x, protocol, log)
    return {name: arrays[name] for name, _ in QUANTITIES} | {"log_px_stderr": arrays["log_px_stderr"]}, info


def run_linear(config: OracleGapConfig, key, log, workdir: str) -> tuple[dict, dict]:
    c = config.linear
    family = diagonal_gaussian(c.latent_dim)
    theta = oracles.linear_gaussian_params(jax.random.fold_in(key, 0), c.latent_dim, c.data_dim,
                                           psi_range=(c.psi_low, c.psi_high))
    model = oracles.linear_gaussian(**theta)
    x = np.asarray(oracles.sample_data(jax.random.fold_in(key, 1), theta, c.num_points))
    log_px = oracles.log_marginal(theta, x)
    q_star = oracles.optimal_ffg(theta, x)
    elbo_star = oracles.gaussian_elbo(theta, x, q_star)
    visible = tuple(range(c.restricted_visible))
    encoders = {"linear_encoder": oracles.LinearEncoder.standardized(x, family.num_params),
                "restricted_encoder": oracles.LinearEncoder.standardized(x, family.num_params, visible)}
    npz = {"linear/W": np.asarray(theta["W"]), "linear/b": np.asarray(theta["b"]),
           "linear/log_psi": np.asarray(theta["log_psi"]),
           "linear/psi": np.exp(np.asarray(theta["log_psi"], np.float64)),
           "linear/x": x, "linear/exact_log_px": log_px, "linear/exact_q_star_mean": q_star["mean"],
           "linear/exact_q_star_log_scale": q_star["log_scale"]}
    sections, seconds, tables, exacts = {}, {}, {}, {}
    for index, (name, encoder) in enumerate(encoders.items()):
        start = time.perf_counter()
        log(f"[linear_gaussian] training the {name} against the true model ({c.encoder_epochs} epochs)")
        params = oracles.train_encoder(jax.random.fold_in(key, 10 + index), model, family, encoder, x,
                                       num_epochs=c.encoder_epochs, batch_size=c.encoder_batch_size,
                                       learning_rate=c.encoder_learning_rate,
                                       final_learning_rate=c.encoder_final_learning_rate,
                                       metrics=rundir.live_path(workdir, f"metrics_{name}.jsonl"))
        tables[name] = jax.vmap(family.unflatten)(encoder.apply(params, jnp.asarray(x)))
        seconds[f"{name}/train"] = time.perf_counter() - start
        elbo_q = oracles.gaussian_elbo(theta, x, _q_numpy(tables[name]))
        exacts[name] = {"log_px": log_px, "elbo_amortized": elbo_q, "elbo_local_ffg": elbo_star,
                        "approximation_gap_ffg": log_px - elbo_star, "amortization_gap_ffg": elbo_star - elbo_q}

    # One evaluate_gaps call for both encoders (their rows stacked: every row is independent and
    # gets its own key), so its functions are compiled once.
    start = time.perf_counter()
    log(f"[linear_gaussian] the project's estimates with both encoders ({c.num_points} points each)")
    stacked = jax.tree.map(lambda *t: jnp.concatenate(t), *tables.values())
    both, info = _estimate(jax.random.fold_in(key, 20), model, theta, family, stacked,
                           np.concatenate([x] * len(tables)), config.protocol, log)
    seconds["estimate"] = time.perf_counter() - start
    for index, name in enumerate(tables):
        part = slice(index * len(x), (index + 1) * len(x))
        estimate = {k: v[part] for k, v in both.items()}
        _, best_gap = oracles.optimal_affine_encoder(theta, x, None if name == "linear_encoder" else visible)
        sections[f"linear_gaussian/{name}"] = {
            "n": len(x), "rows": compare(exacts[name], estimate), "local_fits": info["local_fits"],
            "local_fits_scope": "the rows of both linear_gaussian encoders, one evaluate_gaps call",
            "notes": {"ffg_approximation_gap_closed_form": oracles.ffg_approximation_gap(theta),
                      "best_amortization_gap_of_this_encoder_class": best_gap,
                      "mean_iwae_delta_method_stderr": iwae_stderr(estimate)}}
        npz |= {f"linear/{name}/q_mean": np.asarray(tables[name]["mean"]),
                f"linear/{name}/q_log_scale": np.asarray(tables[name]["log_scale"])}
        npz |= {f"linear/{name}/exact_{k}": np.asarray(v) for k, v in exacts[name].items()}
        npz |= {f"linear/{name}/estimate_{k}": np.asarray(estimate[k]) for k, _ in QUANTITIES}
    return sections, {"seconds": seconds, "npz": npz}


def run_vae(config: OracleGapConfig, key, log, progress: bool, workdir: str) -> tuple[dict, dict]:
    c = config.vae
    vae_config = c.vae
    seconds = {}
    start = time.perf_counter()
    dataset, train, test = load_training_data(vae_config)
    log(f"[vae] training the VAE ({vae_config.num_epochs} epochs)")
    vae = build_vae(vae_config, dataset.dim, len(train) // vae_config.batch_size)
    params = train_vae(vae, vae_config, train, progress=progress,
                       metrics=rundir.live_path(workdir, "metrics_vae.jsonl")).state.params
    seconds["train"] = time.perf_counter() - start
    rows, x = subset(jax.random.fold_in(key, 0), test, c.num_points)
    theta = params["decoder"]
    q_phi = vae.encode(params["encoder"], jnp.asarray(x))

    start = time.perf_counter()
    log(f"[vae] quadrature oracle on {len(x)} test points")
    quad = oracles.quadrature_log_marginal(vae.model, theta, x, c.quadrature)
    check = oracles.grid_log_marginal(vae.model, theta, x, box=c.quadrature.box, points=c.check_points)
    q_star = oracles.quadrature_optimal_ffg(vae.model, theta, x, quad, c.quadrature, starts=[_q_numpy(q_phi)])
    elbo_q = oracles.quadrature_elbo(vae.model, theta, x, _q_numpy(q_phi), points=c.quadrature.elbo_points,
                                     radius=c.quadrature.elbo_radius)
    seconds["quadrature"] = time.perf_counter() - start
    exact = {"log_px": quad.log_px, "elbo_amortized": elbo_q.elbo, "elbo_local_ffg": q_star.elbo,
             "approximation_gap_ffg": quad.log_px - q_star.elbo, "amortization_gap_ffg": q_star.elbo - elbo_q.elbo}
    accuracy = {
        "log_px_max_abs_vs_brute_force_grid": float(np.max(np.abs(quad.log_px - check.log_px))),
        "log_px_mean_abs_vs_brute_force_grid": float(np.mean(np.abs(quad.log_px - check.log_px))),
        "brute_force_grid": f"{c.check_points}^2 nodes on [-{c.quadrature.box}, {c.quadrature.box}]^2",
        "log_px_max_h_vs_2h": float(np.max(quad.log_px_error)),
        "max_posterior_mass_on_grid_edge": float(max(np.max(quad.edge_mass), np.max(check.edge_mass))),
        "max_posterior_mass_outside_fine_grid": float(np.max(quad.outside_mass)),
        "elbo_q_phi_max_h_vs_2h": float(np.max(elbo_q.error)),
        "elbo_q_phi_mean_h_vs_2h": float(np.mean(elbo_q.error)),
        "elbo_q_star_max_h_vs_2h": float(np.max(q_star.elbo_error)),
        "elbo_q_star_mean_h_vs_2h": float(np.mean(q_star.elbo_error)),
        "q_star_last_polish_gain_max": float(np.max(q_star.polish_gain)),
        "q_star_winning_start_counts": {name: int(np.sum(q_star.start == i)) for i, name in
                                        enumerate(("posterior_moments", "posterior_mode", "encoder"))},
    }

    start = time.perf_counter()
    log(f"[vae] the project's estimates ({len(x)} points)")
    estimate, info = _estimate(jax.random.fold_in(key, 1), vae.model, theta, vae.family, q_phi, x,
                               config.protocol, log)
    seconds["estimate"] = time.perf_counter() - start
    chi2 = oracles.quadrature_chi_square(quad, q_star.params)
    section = {"n": len(x), "rows": compare(exact, estimate), "local_fits": info["local_fits"],
               "quadrature_accuracy": accuracy,
               "notes": {"points_where_chi2_of_posterior_to_q_star_diverges": int(np.sum(~np.isfinite(chi2))),
                         "mean_iwae_delta_method_stderr": iwae_stderr(estimate)}}
    npz = {"vae/x": x, "vae/test_rows": rows, "vae/q_phi_mean": np.asarray(q_phi["mean"]),
           "vae/q_phi_log_scale": np.asarray(q_phi["log_scale"]), "vae/exact_q_star_mean": q_star.params["mean"],
           "vae/exact_q_star_log_scale": q_star.params["log_scale"], "vae/brute_force_log_px": check.log_px}
    npz |= {"vae/decoder/" + "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(theta)}
    npz |= {f"vae/exact_{k}": np.asarray(v) for k, v in exact.items()}
    npz |= {f"vae/estimate_{k}": np.asarray(estimate[k]) for k, _ in QUANTITIES}
    name = f"vae_{vae_config.dataset}_{vae_config.latent_dim}d"
    extra = {"seconds": seconds, "npz": npz, "vae": vae, "params": params, "quad": quad, "q_star": q_star,
             "q_phi": _q_numpy(q_phi), "image_shape": dataset.image_shape, "x": x}
    return {name: section}, extra


def manifold_figure(vae, params, side: int, image_shape, path: str) -> None:
    """E[x | z] on a side x side grid of z at the prior's quantiles (the learned manifold)."""
    quantiles = stats.norm.ppf(np.linspace(0.05, 0.95, side))
    z = np.stack(np.meshgrid(quantiles, quantiles[::-1], indexing="xy"), axis=-1).reshape(-1, 2)
    means = jax.vmap(vae.model.mean, in_axes=(None, 0))(params["decoder"], jnp.asarray(z, jnp.float32))
    fig = plotting.image_grid(np.asarray(means), image_shape, side,
                              "E[x | z] on a grid of z at prior quantiles 0.05 ... 0.95")
    save_figure(fig, path)


def posteriors_figure(extra: dict, path: str, count: int = 6) -> None:
    """Exact posteriors (fine-grid contours) of the test digits with the largest approximation
    gaps, with the 2-sigma ellipses of q_phi (encoder) and q*_FFG."""
    plt = plotting.plt
    quad, q_star, q_phi, x = extra["quad"], extra["q_star"], extra["q_phi"], extra["x"]
    gap = quad.log_px - q_star.elbo
    picks = np.argsort(-gap)[:count]
    points = int(round(np.sqrt(quad.nodes.shape[1])))
    fig, axes = plt.subplots(2, count, figsize=(3 * count, 6), gridspec_kw={"height_ratios": [3, 1]})
    t = np.linspace(0, 2 * np.pi, 100)
    for ax, img_ax, i in zip(axes[0], axes[1], picks):
        nodes = quad.nodes[i].reshape(points, points, 2)
        density = np.exp(quad.log_joint[i] - quad.log_joint[i].max()).reshape(points, points)
        ax.contour(nodes[..., 0], nodes[..., 1], density, levels=[0.01, 0.05, 0.2, 0.5, 0.9], cmap="Greys")
        for q, color, label in ((q_phi, "C1", "q_phi"), (q_star.params, "C0", "q*_FFG")):
            m, s = q["mean"][i], np.exp(q["log_scale"][i])
            ax.plot(m[0] + 2 * s[0] * np.cos(t), m[1] + 2 * s[1] * np.sin(t), color=color, label=label)
        ax.set_title(f"gap_FFG {gap[i]:.2f} nats", fontsize=9)
        img_ax.imshow(x[i].reshape(extra["image_shape"]), cmap="gray_r")
        img_ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("exact posteriors p(z|x) (contours) with 2-sigma ellipses of q_phi and q*_FFG")
    save_figure(fig, path)


def markdown(result: dict) -> str:
    protocol = result["config"]["protocol"]
    lines = ["# Exact oracles vs the project's estimates", "",
             f"seed {result['seed']}; estimates: `vi_jax.gap.evaluate_gaps` (ELBOs with "
             f"{protocol['elbo_samples']} samples, q*_FFG by the local fit from the encoder, log p(x) by "
             f"IWAE K={protocol['iwae_samples']} with q* as proposal). Nats per datapoint; difference = "
             "estimate - exact; SE = standard error of the mean difference over datapoints.", ""]
    for name, section in result["models"].items():
        lines += [f"## {name} (n = {section['n']})", "",
                  "| quantity | exact | estimate | difference | SE | difference / SE |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for key, label in QUANTITIES:
            r = section["rows"][key]
            lines.append(f"| {label} | {r['exact']:.4f} | {r['estimate']:.4f} | {r['difference']:+.4f} | "
                         f"{r['stderr']:.4f} | {r['z']:+.1f} |")
        fits = section["local_fits"]["ffg"]
        scope = f" (over {section['local_fits_scope']})" if "local_fits_scope" in section else ""
        lines += ["", f"Local fit{scope}: {fits['converged']}/{fits['n']} converged, median "
                      f"{fits['median_steps']:.0f} steps (max {fits['max_steps']})."]
        for key, value in section.get("notes", {}).items():
            lines.append(f"- {key}: {value:.6g}" if isinstance(value, float) else f"- {key}: {value}")
        for key, value in section.get("quadrature_accuracy", {}).items():
            text = f"{value:.3g}" if isinstance(value, float) else str(value)
            lines.append(f"- accuracy, {key}: {text}")
        lines.append("")
    lines.append(f"Wall seconds: {result['wall_seconds']}")
    return "\n".join(lines) + "\n"


@rundir.staged
def run(config: OracleGapConfig, workdir: str, *, progress: bool = True) -> dict:
    """Both oracles, the project's estimates, the files; returns the oracle.json dict."""
    log = progress_log(progress)
    config.validate()
    start = time.perf_counter()
    key = jax.random.PRNGKey(config.seed)
    linear_sections, linear_info = run_linear(config, jax.random.fold_in(key, 0), log, workdir)
    vae_sections, vae_info = run_vae(config, jax.random.fold_in(key, 1), log, progress, workdir)
    seconds = {f"linear_gaussian/{k}": round(v, 2) for k, v in linear_info["seconds"].items()}
    seconds |= {f"vae/{k}": round(v, 2) for k, v in vae_info["seconds"].items()}

    manifold_figure(vae_info["vae"], vae_info["params"], config.vae.manifold_side, vae_info["image_shape"],
                    os.path.join(workdir, "manifold.png"))
    posteriors_figure(vae_info, os.path.join(workdir, "posteriors.png"))
    storage.atomic_save_npz(os.path.join(workdir, "oracle.npz"), **linear_info["npz"], **vae_info["npz"])
    seconds["total"] = round(time.perf_counter() - start, 2)
    result = {"models": linear_sections | vae_sections, **header(config), "wall_seconds": seconds}
    return write_report(workdir, "oracle", result, markdown(result))


main = CLI.main(run, report=markdown)


if __name__ == "__main__":
    main()
