"""Train a VQ-VAE (van den Oord et al. 2017) and report held-out reconstruction and codebook usage.

    python -m experiments.vqvae --workdir runs/vqvae            # digits, ~20 s on 2 CPU cores
    python -m experiments.vqvae --workdir runs/vqvae --quick    # smoke run, ~5 s
    python -m experiments.vqvae --set codebook_size=128 --set num_latents=2

Writes into --workdir (each file atomically, metrics.json last): metrics.json (test and train
reconstruction NLL -log p(x | z_q) and the uniform-prior ELBO -NLL - L log K, each as
{"mean", "stderr"} over datapoints; test codebook and commitment terms; codebook usage on the
test set: per-code counts, perplexity exp(H(usage)) out of K, dead codes; seed, config,
environment, wall times, per-epoch history) and reconstructions.png.
Expected figures: experiments/benchmark/references/default.json; check a fresh run against them with
    python -m experiments.benchmark --only vqvae --no-peers --check experiments/benchmark/references/default.json
(The defaults: L = 4 codes of D = 8 from K = 32, so the ELBO's L log K = 13.86 nats; the
discrete code overfits the 1497 training digits: train NLL well below test.)
"""
from __future__ import annotations

import os
import time

import numpy as np

from vi_jax import plotting, rundir, storage
from vi_jax.stats import mean_and_stderr
from vi_jax.vqvae import VQVAEConfig, build_vqvae, codebook_usage, evaluate, reconstruct, train_vqvae

from ._common import DATASET, Cli, data_sizes, header, load_splits, save_figure

QUICK = ["num_epochs=5", "encoder_hidden=32", "decoder_hidden=32"]

CLI = Cli(__doc__, VQVAEConfig, workdir="runs/vqvae", writes="metrics.json", quick=QUICK,
          flags=[DATASET], data_dir=True,
          example="--set codebook_size=64 --set num_latents=2")


@rundir.staged
def run(config: VQVAEConfig, workdir: str, *, data_dir: str | None = None, progress: bool = True) -> dict:
    """Train, evaluate, write the workdir's files; return the metrics dict."""
    config.validate()
    dataset, train, test = load_splits(config, data_dir)
    vq = build_vqvae(config, dataset.dim)
    result = train_vqvae(vq, config, train, progress=progress, metrics=rundir.live_path(workdir, "metrics.jsonl"))
    params, history, train_seconds = result.state.params, result.history, result.seconds

    start = time.perf_counter()
    test_terms, train_terms = (evaluate(vq, params, x, config.eval_batch_size) for x in (test, train))
    usage = codebook_usage(test_terms.codes, config.codebook_size)
    eval_seconds = time.perf_counter() - start

    metrics = {
        "test_reconstruction_nll": mean_and_stderr(test_terms.reconstruction),
        "train_reconstruction_nll": mean_and_stderr(train_terms.reconstruction),
        "test_elbo_uniform_prior": mean_and_stderr(test_terms.elbo),
        "test_codebook_loss": mean_and_stderr(test_terms.codebook),
        "test_commitment_loss": mean_and_stderr(test_terms.commitment),
        "codebook_usage": {"counts": usage.counts.tolist(), "perplexity": usage.perplexity,
                           "max_perplexity": config.codebook_size, "dead_codes": usage.dead_codes,
                           "split": "test"},
        **data_sizes(dataset, train, test),
        **header(config),
        "wall_seconds": {"train": round(train_seconds, 2), "evaluate": round(eval_seconds, 2)},
        "history": history,
    }
    originals = test[:16]
    recon = np.asarray(reconstruct(vq, params, originals))
    fig = plotting.image_grid(np.concatenate([originals, recon]), dataset.image_shape, 16,
                              "test images (top) and E[x | z_q(x)] (bottom)")
    save_figure(fig, os.path.join(workdir, "reconstructions.png"))
    storage.atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    return metrics


def summary(metrics: dict) -> str:
    nll, usage = metrics["test_reconstruction_nll"], metrics["codebook_usage"]
    return "\n".join([f"test reconstruction NLL {nll['mean']:.3f} ± {nll['stderr']:.3f} nats",
                      f"test ELBO (uniform prior) {metrics['test_elbo_uniform_prior']['mean']:.3f} nats",
                      f"codebook perplexity {usage['perplexity']:.2f} of {usage['max_perplexity']}, "
                      f"{usage['dead_codes']} dead codes"])


main = CLI.main(run, report=summary)


if __name__ == "__main__":
    main()
