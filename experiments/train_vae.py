"""Train an amortized VAE and report held-out ELBO and IWAE.

    python -m experiments.train_vae --workdir runs/vae            # digits, ~30 s on 2 CPU cores
    python -m experiments.train_vae --workdir runs/vae --quick    # smoke run
    python -m experiments.train_vae --dataset binarized_mnist --data-dir DIR --set latent_dim=50

Writes into --workdir: metrics.json (test_elbo, test_iwae with its K, train_elbo, each as
{"mean", "stderr"} over datapoints; seed, config, environment, history, wall times),
reconstructions.png, prior_samples.png, interpolation.png, elbo_curve.png (train ELBO per
epoch, held-out ELBO and IWAE at the evaluations), manifold.png (latent_dim == 2 only) and
params.msgpack (flax serialization of
{"encoder", "decoder"}), published together with MANIFEST.json (vi_jax.rundir); metrics.jsonl
grows by a line per epoch and per evaluation while the run trains (vi_jax.metrics).
Expected figures: experiments/benchmark/references/default.json; check a fresh run against them with
    python -m experiments.benchmark --only train_vae --no-peers --check experiments/benchmark/references/default.json
"""
from __future__ import annotations

import os
import time

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from vi_jax import plotting, rundir, storage, streams, visualize
from vi_jax.vae import VAEConfig, build_vae, load_training_data, make_evaluator, train_vae

from ._common import DATASET, RESUME, Cli, RunFlags, data_sizes, elbo_metrics, header, save_figure

INTERPOLATION_STEPS = 10
MANIFOLD_SIDE = 15


def _add_distributed(parser) -> None:
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (one process per host)")


def _join_hosts(args) -> dict:
    if args.distributed:  # before run() touches a device
        jax.distributed.initialize()
    return {}


QUICK = ["latent_dim=2", "encoder_hidden=16", "decoder_hidden=16", "num_epochs=2", "batch_size=100",
         "eval_elbo_samples=5", "eval_iwae_samples=5", "final_iwae_samples=20"]

CLI = Cli(__doc__, VAEConfig, workdir="runs/train_vae", writes="metrics.json", quick=QUICK,
          flags=[DATASET], data_dir=True,
          extra=[RESUME, RunFlags(_add_distributed, _join_hosts)],
          example="--set latent_dim=4 --set encoder_hidden=64,64")


def save_pictures(vae, params, test: np.ndarray, image_shape, key, history: list, workdir: str) -> None:
    """reconstructions.png (the first 16 test images over E[x | z = encoder mean]),
    prior_samples.png (E[x | z], z ~ p(z)), interpolation.png (E[x | z] along the line between
    the encoder means of test images 0-1, 2-3, 4-5, 6-7), elbo_curve.png (the training history)
    and, for a 2-D latent, manifold.png (E[x | z] on a grid of prior quantiles)."""
    def save(fig, name):
        save_figure(fig, os.path.join(workdir, name))

    originals = test[:16]
    recon = visualize.reconstructions(vae, params, originals)
    save(plotting.image_grid(np.concatenate([originals, np.asarray(recon)]), image_shape, 16,
                             "test images (top) and reconstructions (bottom)"), "reconstructions.png")
    samples = visualize.prior_samples(key, vae.model, params["decoder"], 32)
    save(plotting.image_grid(np.asarray(samples), image_shape, 16, "E[x | z], z ~ p(z)"), "prior_samples.png")
    paths = [visualize.interpolate(vae, params, test[i], test[i + 1], INTERPOLATION_STEPS) for i in range(0, 8, 2)]
    save(plotting.image_grid(np.concatenate(paths), image_shape, INTERPOLATION_STEPS,
                             "E[x | z] on the line between two test images' encoder means"), "interpolation.png")
    save(plotting.training_curves(visualize.history_curves(history), "training history"), "elbo_curve.png")
    if vae.model.latent_dim == 2:
        images = visualize.manifold(vae.model, params["decoder"], MANIFOLD_SIDE)
        save(plotting.manifold(np.asarray(images), image_shape, np.asarray(visualize.grid_quantiles(MANIFOLD_SIDE)),
                               "E[x | z], z = Phi^-1(u) on a uniform grid of u"), "manifold.png")


@rundir.staged
def run(config: VAEConfig, workdir: str, *, data_dir: str | None = None, progress: bool = True,
        resume: bool = False, resume_fallback: bool = False) -> dict:
    """Train, evaluate, write the workdir's files; return the metrics dict.

    Checkpoints go to workdir/checkpoints when config.checkpoint_every > 0 or resume is set."""
    config.validate()
    if config.mode == "non_amortized":
        raise ValueError("train_vae evaluates held-out data with the encoder, which a non_amortized model "
                         "lacks; experiments.compare_training trains and evaluates that mode")
    dataset, train, test = load_training_data(config, data_dir)
    vae = build_vae(config, dataset.dim, steps_per_epoch=len(train) // config.batch_size, num_train=len(train))
    checkpoint_dir = rundir.checkpoint_dir(workdir) if config.checkpoint_every or resume else None
    result = train_vae(vae, config, train, test, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume,
                       resume_fallback=resume_fallback, metrics=rundir.live_path(workdir, "metrics.jsonl"))
    metrics = evaluate_and_save(vae, config, dataset, train, test, result, workdir)
    storage.atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    return metrics


def evaluate_and_save(vae, config: VAEConfig, dataset, train: np.ndarray, test: np.ndarray, result,
                      workdir: str) -> dict:
    """Evaluate a trained VAE (test ELBO and IWAE_K with K = config.final_iwae_samples, train
    ELBO; keys from fold_in(seed, 3)), write its pictures, params.msgpack and the per-datapoint
    values behind every mean (evaluation.npz: test_elbo, train_elbo, test_iwae and the IWAE's
    Monte-Carlo test_iwae_stderr) into workdir, and return the metrics dict (the caller writes
    metrics.json last, after adding its own fields)."""
    params = result.state.params
    start = time.perf_counter()
    eval_key = streams.stream(config.seed, streams.FINAL_EVALUATION)
    keys = jax.random.split(eval_key, 4)
    evaluator = make_evaluator(vae, config, config.final_iwae_samples)
    test_elbo = evaluator.elbo(keys[0], params, jnp.asarray(test))
    train_elbo = evaluator.elbo(keys[1], params, jnp.asarray(train))
    test_iwae = evaluator.iwae(keys[2], params, jnp.asarray(test))
    jax.block_until_ready((test_elbo, train_elbo, test_iwae))  # dispatch is asynchronous: time the work, not the call
    eval_seconds = time.perf_counter() - start

    metrics = {
        **elbo_metrics(test_elbo, train_elbo, test_iwae, config.final_iwae_samples),
        **data_sizes(dataset, train, test),
        **header(config),
        "wall_seconds": {"train": round(result.seconds, 2), "train_timed_from_epoch": result.timed_from_epoch,
                         "evaluate": round(eval_seconds, 2)},
        "history": result.history,
    }
    save_pictures(vae, params, test, dataset.image_shape, keys[3], result.history, workdir)
    storage.atomic_write_bytes(os.path.join(workdir, "params.msgpack"), flax.serialization.to_bytes(params))
    storage.atomic_save_npz(os.path.join(workdir, "evaluation.npz"), test_elbo=test_elbo, train_elbo=train_elbo,
                            test_iwae=test_iwae.bound, test_iwae_stderr=test_iwae.stderr)
    return metrics


def summary(metrics: dict) -> str:
    rows = [("test ELBO    ", metrics["test_elbo"]), (f"test IWAE_{metrics['test_iwae']['k']}", metrics["test_iwae"]),
            ("train ELBO   ", metrics["train_elbo"])]
    return "\n".join(f"{label} {m['mean']:.3f} ± {m['stderr']:.3f} nats" for label, m in rows)


main = CLI.main(run, report=summary)


if __name__ == "__main__":
    main()
