"""How the approximation and amortization gaps evolve while a VAE trains (Cremer, Li &
Duvenaud 2018 follow them over training epochs).

    python -m experiments.gap_over_training --workdir runs/gap_over_training           # ~90 s of CPU time
    python -m experiments.gap_over_training --workdir runs/gap_over_training --quick   # smoke run
    python -m experiments.gap_over_training --workdir runs/got --set include_flow=true # + a flow q*

Trains the digits VAE (vi_jax.vae.train_vae) in segments of `every` epochs; the state passes
between segments through a checkpoint (in a temporary directory), so the trajectory is exactly
that of one uninterrupted run. After each segment, on one fixed seeded subset of n_eval training
and n_eval test digits (the same rows and the same evaluation key at every checkpoint: common
random numbers across epochs), vi_jax.gap.evaluate_gaps computes per datapoint log p(x) (IWAE
with q* as proposal), L[q_phi], L[q*_FFG] (fitted per datapoint from the encoder's output),
and the inference, approximation and amortization gaps; the defaults use a looser, cheaper
protocol than experiments/gap.py (see GapOverTrainingConfig.protocol).

Writes into --workdir (each file atomically, gap_over_training.json last):
gap_over_training.json (epochs; per split and quantity the per-epoch means and standard errors
over datapoints; local-fit convergence per epoch; the training history; seed, config,
environment, wall seconds), gap_over_training.md (tables) and gap_over_training.png (the three
gaps against epoch, train and test panels).

Expected figures: experiments/benchmark/references/default.json; check a fresh run against them with
    python -m experiments.benchmark --only gap_over_training --no-peers --check experiments/benchmark/references/default.json
With the defaults, over epochs 25 -> 200 the test split's amortization gap grows (the encoder
overfits the 1497 training digits) while the training split's stays level, and the FFG
approximation gap grows on both as the decoder's posteriors become less Gaussian.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax import plotting, rundir
from vi_jax.config import Rule, check_fields, count
from vi_jax.data import subset
from vi_jax.families import coupling_flow
from vi_jax.gap import GapProtocol, evaluate_gaps, summarize
from vi_jax.local import LocalFitConfig
from vi_jax.vae import VAEConfig, build_vae, load_training_data, train_vae

from ._common import Cli, header, progress_log, save_figure, write_report

SPLITS = ("train", "test")
GAPS = {"inference_gap": "inference", "approximation_gap_ffg": "approximation (FFG)",
        "amortization_gap_ffg": "amortization (FFG)"}
FLOW_GAPS = {"approximation_gap_flow": "approximation (flow)", "amortization_gap_flow": "amortization (flow)"}


@dataclasses.dataclass(frozen=True)
class GapOverTrainingConfig:
    seed: int = 0
    vae: VAEConfig = VAEConfig(eval_every=0)
    every: int = 25  # epochs between gap evaluations (vae.num_epochs is evaluated last in any case)
    n_eval: int = 50  # datapoints per split, the same rows at every checkpoint
    include_flow: bool = False  # also fit a coupling-flow q* per datapoint (about twice the cost)
    flow_layers: int = 4
    flow_hidden: int = 16
    # looser than the reference protocol (experiments/gap.py's --quick settings, K = 1000):
    # the curves compare epochs, evaluated alike, rather than reporting final numbers
    protocol: GapProtocol = GapProtocol(
        local_fit=LocalFitConfig(learning_rate=3e-3, check_every=20, patience=5, max_steps=2000),
        elbo_samples=200, iwae_samples=1000, refine_steps=(0,))

    # n_eval >= 2: each curve point carries a standard error over the datapoints
    RULES: ClassVar[dict[str, Rule]] = {"seed": count(0), "every": count(1), "n_eval": count(2),
                                        "flow_layers": count(1), "flow_hidden": count(1)}

    def validate(self) -> None:
        check_fields(self, self.RULES)
        if self.vae.mode == "non_amortized":
            raise ValueError("the amortization gap needs an encoder; vae.mode must not be non_amortized")
        self.vae.validate()
        self.protocol.validate()


QUICK = ["vae.num_epochs=4", "every=2", "vae.encoder_hidden=32", "vae.decoder_hidden=32", "n_eval=10",
         "protocol.local_fit.max_steps=200", "protocol.elbo_samples=20", "protocol.iwae_samples=100"]

CLI = Cli(__doc__, GapOverTrainingConfig, workdir="runs/gap_over_training", writes="gap_over_training.json",
          quick=QUICK, seed=("seed", "vae.seed"), data_dir=True,
          example="--set every=10 --set vae.latent_dim=4 --set protocol.iwae_samples=5000")


def checkpoint_epochs(num_epochs: int, every: int) -> list[int]:
    """every, 2 every, ..., and num_epochs."""
    return sorted(set(range(every, num_epochs + 1, every)) | {num_epochs})


def markdown(result: dict) -> str:
    names = ["log_px", "elbo_amortized", "elbo_local_ffg", *result["gaps"]]
    lines = ["# Gaps over training", "",
             f"seed {result['seed']}; nats per datapoint, mean ± standard error over the same datapoints "
             f"at every epoch; log p(x): IWAE K={result['config']['protocol']['iwae_samples']} with q* as proposal.", ""]
    for split, r in result["splits"].items():
        lines += [f"## {split} split (n = {r['n_eval']})", "",
                  "| epoch | " + " | ".join(names) + " |", "| ---: |" + " ---: |" * len(names)]
        for i, epoch in enumerate(result["epochs"]):
            cells = [f"{r[q]['mean'][i]:.3f} ± {r[q]['stderr'][i]:.3f}" for q in names]
            lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


@rundir.staged
def run(config: GapOverTrainingConfig, workdir: str, *, data_dir: str | None = None, progress: bool = True) -> dict:
    config.validate()
    log = progress_log(progress)
    start = time.perf_counter()
    dataset, train, test = load_training_data(config.vae, data_dir)
    vae = build_vae(config.vae, dataset.dim, steps_per_epoch=len(train) // config.vae.batch_size)
    local_families = {"ffg": vae.family}
    if config.include_flow:
        local_families["flow"] = coupling_flow(config.vae.latent_dim, config.flow_layers, config.flow_hidden)
    key = jax.random.PRNGKey(config.seed)
    rows = {name: subset(jax.random.fold_in(key, i), x, config.n_eval)
            for i, (name, x) in enumerate(zip(SPLITS, (train, test)))}
    # both splits in one evaluate_gaps call (one compilation per checkpoint); datapoint j's draws
    # depend only on (key, j), so this equals separate calls with the rows numbered alike
    x_eval = jnp.asarray(np.concatenate([rows[name][1] for name in SPLITS]))
    sizes = [len(rows[name][0]) for name in SPLITS]
    quantities = ["log_px", "elbo_amortized", *[f"elbo_local_{n}" for n in local_families],
                  *GAPS, *(FLOW_GAPS if config.include_flow else {})]
    epochs = checkpoint_epochs(config.vae.num_epochs, config.every)
    per_epoch = {name: [] for name in SPLITS}
    fits, seconds = [], {"train": 0.0, "gaps": []}
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        for index, epoch in enumerate(epochs):
            segment = dataclasses.replace(config.vae, num_epochs=epoch)
            result = train_vae(vae, segment, train, progress=progress, checkpoint_dir=checkpoint_dir,
                               resume=index > 0, metrics=rundir.live_path(workdir, "metrics.jsonl"))
            seconds["train"] += result.seconds
            log(f"epoch {epoch}: gap decomposition on {sum(sizes)} datapoints")
            t = time.perf_counter()
            params = result.state.params
            arrays, info = evaluate_gaps(jax.random.fold_in(key, len(SPLITS)), vae.model, params["decoder"],
                                         vae.family, vae.encode(params["encoder"], x_eval), local_families,
                                         x_eval, config.protocol, log)
            seconds["gaps"].append(round(time.perf_counter() - t, 2))
            split_at = np.cumsum(sizes)[:-1]
            for name, part in zip(SPLITS, zip(*(np.split(arrays[q], split_at) for q in quantities))):
                per_epoch[name].append(summarize(dict(zip(quantities, part))))
            fits.append({"epoch": epoch, **info["local_fits"]})
    history = result.history
    splits = {name: {"n_eval": sizes[i], "rows": rows[name][0].tolist(),
                     **{q: {stat: [s[q][stat] for s in per_epoch[name]] for stat in ("mean", "stderr")}
                        for q in quantities}}
              for i, name in enumerate(SPLITS)}
    gaps = {**GAPS, **(FLOW_GAPS if config.include_flow else {})}
    seconds = {"train": round(seconds["train"], 2), "gaps": seconds["gaps"],
               "total": round(time.perf_counter() - start, 2)}
    out = {"epochs": epochs, "gaps": list(gaps), "splits": splits, "local_fits": fits, "history": history,
           **header(config), "wall_seconds": seconds}
    fig = plotting.gap_curves(epochs, {name: splits[name] for name in SPLITS}, gaps,
                              f"gaps over training ({config.vae.dataset}, {config.n_eval} datapoints per split)")
    save_figure(fig, os.path.join(workdir, "gap_over_training.png"))
    return write_report(workdir, "gap_over_training", out, markdown(out))


main = CLI.main(run, report=markdown)


if __name__ == "__main__":
    main()
