"""Train a conditional VAE p(x | c) (Sohn et al. 2015) on digit images given their labels; report
held-out ELBO(x | c) and IWAE estimates of log p(x | c); draw each class.

    python -m experiments.cvae --workdir runs/cvae           # digits, about 25 s training on 2 CPU cores
    python -m experiments.cvae --workdir runs/cvae --quick   # smoke run
    python -m experiments.cvae --workdir runs/cvae --set latent_dim=2 --set num_epochs=100

Writes into --workdir (each file atomically, metrics.json last): metrics.json (test_elbo,
test_iwae with its K, train_elbo, each {"mean", "stderr"} over datapoints; seed, config,
environment, per-epoch training ELBO, wall times) and class_samples.png (row c = class c,
E[x | z, c] for z ~ p(z | c)).
Expected figures: experiments/benchmark/references/default.json; check a fresh run against them with
    python -m experiments.benchmark --only cvae --no-peers --check experiments/benchmark/references/default.json
Per datapoint log p(x | c) - log p(x) = log p(c | x) - log p(c) <= log 10 = 2.30 nats (classes
near uniform), with equality when the image determines its label: that is the most by which this
test IWAE can exceed that of experiments/train_vae.py with the same networks (the train_vae
benchmark, in the same reference), and the default runs come close to it.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax import data, plotting, rundir, storage, streams
from vi_jax.cvae import CVAEConfig, build_cvae, generate, make_evaluator, one_hot_labels, train_cvae

from ._common import Cli, FieldFlag, data_sizes, elbo_metrics, header, load_splits, save_figure

QUICK = ["latent_dim=2", "encoder_hidden=16", "decoder_hidden=16", "prior_hidden=8", "num_epochs=2",
         "batch_size=100", "eval_elbo_samples=5", "final_iwae_samples=20", "samples_per_class=4"]

CLI = Cli(__doc__, CVAEConfig, workdir="runs/cvae", writes="metrics.json", quick=QUICK,
          flags=[FieldFlag("--dataset", "dataset", f"one of {data.DATASETS} that has labels")], data_dir=True,
          example="--set latent_dim=4 --set encoder_hidden=64,64")


@rundir.staged
def run(config: CVAEConfig, workdir: str, *, data_dir: str | None = None, progress: bool = True) -> dict:
    """Train, evaluate, write the workdir's files; return the metrics dict."""
    config.validate()
    dataset, train, test = load_splits(config, data_dir)
    unlabelled = [split for split in ("train", "test") if getattr(dataset, f"{split}_labels") is None]
    if unlabelled:  # binarized_mnist: only its class-sorted test file has labels; mnist has both
        raise ValueError(f"dataset {config.dataset!r} has no {' and '.join(unlabelled)} labels to condition on")
    c_train = one_hot_labels(dataset.train_labels, config.num_classes, len(train))
    c_test = one_hot_labels(dataset.test_labels, config.num_classes, len(test))
    cvae = build_cvae(config, dataset.dim)
    result = train_cvae(cvae, config, train, dataset.train_labels, progress=progress,
                        metrics=rundir.live_path(workdir, "metrics.jsonl"))
    params = result.state.params

    start = time.perf_counter()
    keys = jax.random.split(streams.stream(config.seed, streams.EVALUATIONS), 4)  # training evaluates nothing
    evaluator = make_evaluator(cvae, config, config.final_iwae_samples)
    test_elbo = evaluator.elbo(keys[0], params, jnp.asarray(test), c_test)
    train_elbo = evaluator.elbo(keys[1], params, jnp.asarray(train), c_train)
    test_iwae = evaluator.iwae(keys[2], params, jnp.asarray(test), c_test)
    jax.block_until_ready((test_elbo, train_elbo, test_iwae))  # dispatch is asynchronous: time the work, not the call
    eval_seconds = time.perf_counter() - start

    metrics = {
        **elbo_metrics(test_elbo, train_elbo, test_iwae, config.final_iwae_samples),
        **data_sizes(dataset, train, test),
        **header(config),
        "wall_seconds": {"train": round(result.seconds, 2), "evaluate": round(eval_seconds, 2)},
        "history": result.history,
    }
    labels = np.repeat(np.arange(config.num_classes), config.samples_per_class)
    samples = generate(keys[3], cvae, params, labels)
    fig = plotting.image_grid(np.asarray(samples), dataset.image_shape, config.samples_per_class,
                              "E[x | z, c], z ~ p(z | c); row = class c")
    save_figure(fig, os.path.join(workdir, "class_samples.png"))
    storage.atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    return metrics


def summary(metrics: dict) -> str:
    rows = [("test ELBO(x|c)    ", metrics["test_elbo"]),
            (f"test IWAE_{metrics['test_iwae']['k']}(x|c)", metrics["test_iwae"])]
    return "\n".join(f"{label} {m['mean']:.3f} ± {m['stderr']:.3f} nats" for label, m in rows)


main = CLI.main(run, report=summary)


if __name__ == "__main__":
    main()
