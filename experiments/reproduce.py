"""Reproduce a published binarized-MNIST experiment from its preset (vi_jax.presets).

    python -m experiments.reproduce --preset iwae_k1 --workdir runs/iwae_k1 --data-dir DIR
    python -m experiments.reproduce --preset iwae_k1 --workdir runs/iwae_k1 --data-dir DIR --resume
    python -m experiments.reproduce --preset cremer_ffg --workdir runs/cremer_ffg --epochs-scale 0.01

Trains with the preset's full published schedule (or every stage shortened by --epochs-scale),
checkpointing every --checkpoint-every epochs into WORKDIR/checkpoints (--resume continues an
interrupted run exactly); the progress bar shows stage, epoch, ELBO and ETA, and the validation
ELBO / IWAE_100 curve is recorded every eval_every epochs on --num-valid validation points.
Then evaluates the test log-likelihood with IWAE K = 5000 (the preset's final_iwae_samples), and
for the Cremer presets runs the gap protocol of experiments.gap on the first --gap-points
training and test points (into WORKDIR/gap), with log p(x) the larger of IWAE_5000 and AIS per
datapoint (the preset's gap_overrides; --gap-set adds to them).

Writes into --workdir (atomically, metrics.json last): metrics.json (test_log_px, test_elbo,
train_elbo as {"mean", "stderr"}; the published figure and our difference; the schedule run;
seed, config, environment, wall seconds, history), reproduce.md, elbo_curve.png (training and
validation curves), the pictures of experiments.train_vae, params.msgpack (so that experiments.gap --checkpoint
WORKDIR can evaluate the model again).
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import jax.numpy as jnp

from experiments.train_vae import evaluate_and_save
from vi_jax import io, rundir
from vi_jax.config import apply_overrides
from vi_jax.presets import PRESETS, get_preset, scale_epochs
from vi_jax.vae import build_vae, load_training_data, train_vae

EVALUATIONS_PER_RUN = 40  # validation points on the curve (eval_every = num_epochs / this)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What varies between a full reproduction and a quick or partial one."""

    epochs_scale: float = 1.0
    num_train: int = 0  # train on the first num_train points (0: all)
    num_test: int = 0  # evaluate on the first num_test test points (0: all)
    num_valid: int = 1000  # validation points on the curve
    checkpoint_every: int = 10  # epochs
    gap_points: int = 1000  # Cremer presets: first gap_points training and test points
    gap_overrides: tuple[str, ...] = ()  # GapConfig overrides for the gap protocol


def preset_config(name: str, options: RunOptions, overrides=()):
    """The preset's VAEConfig, its stages scaled by options.epochs_scale, evaluation cadence and
    checkpoints set for a long run, then `overrides` ("field=value") applied."""
    config = get_preset(name).vae
    if options.epochs_scale != 1.0:
        config = scale_epochs(config, options.epochs_scale)
    config = dataclasses.replace(config, eval_every=max(1, config.num_epochs // EVALUATIONS_PER_RUN),
                                 checkpoint_every=options.checkpoint_every)
    config = apply_overrides(config, overrides)
    config.validate()
    return config


def timed_part(metrics: dict) -> str:
    """' (epochs e-N only)' when the training time misses segments run before checkpoints
    recorded their time, else ''."""
    first = metrics["wall_seconds"].get("train_timed_from_epoch", 1)
    return f" (epochs {first}-{metrics['schedule']['num_epochs']} only)" if first > 1 else ""


def markdown(metrics: dict) -> str:
    p = metrics["preset"]
    ours = metrics["test_log_px"]
    published = p["published"].get("test_log_px")
    diff = f"{ours['mean'] - published:+.2f}" if published is not None else "n/a"
    lines = [f"# {p['name']}: {p['source']}", "",
             "| quantity | published | ours | difference |", "| --- | ---: | ---: | ---: |",
             f"| test log p(x), IWAE K={ours['k']} | {published if published is not None else 'n/a'} | "
             f"{ours['mean']:.2f} ± {ours['stderr']:.2f} | {diff} |",
             f"| test ELBO | | {metrics['test_elbo']['mean']:.2f} ± {metrics['test_elbo']['stderr']:.2f} | |",
             f"| train ELBO | | {metrics['train_elbo']['mean']:.2f} ± {metrics['train_elbo']['stderr']:.2f} | |", "",
             f"Schedule run: {metrics['schedule']['num_epochs']} epochs (epochs scale "
             f"{metrics['schedule']['epochs_scale']}), stages {metrics['schedule']['stage_epochs']}; "
             f"{metrics['n_train']} training / {metrics['n_test']} test points; wall "
             f"{metrics['wall_seconds']['train'] / 3600:.2f} h training{timed_part(metrics)} + "
             f"{metrics['wall_seconds']['evaluate']:.0f} s evaluation on {metrics['environment']['devices']}."]
    return "\n".join(lines) + "\n"


@rundir.staged
def run(preset_name: str, workdir: str, options: RunOptions = RunOptions(), *, overrides=(),
        data_dir: str | None = None, resume: bool = False, resume_fallback: bool = False,
        progress: bool = True) -> dict:
    preset = get_preset(preset_name)
    config = preset_config(preset_name, options, overrides)
    log = print if progress else (lambda message: None)
    dataset, train, test = load_training_data(config, data_dir)
    valid = dataset.valid if dataset.valid is not None else test  # TFDS MNIST has no validation split
    if options.num_train:
        train = train[:options.num_train]
    if options.num_test:
        test = test[:options.num_test]
    valid = jnp.asarray(valid[:options.num_valid])
    vae = build_vae(config, dataset.dim, steps_per_epoch=len(train) // config.batch_size)
    log(f"{preset_name}: {config.num_epochs} epochs in stages {config.stage_epochs} at batch "
        f"{config.batch_size} on {len(train)} points ({len(train) // config.batch_size} steps per epoch)")
    result = train_vae(vae, config, train, valid, progress=progress,
                       checkpoint_dir=rundir.checkpoint_dir(workdir), resume=resume, resume_fallback=resume_fallback)
    log(f"evaluating test log p(x) with IWAE K={config.final_iwae_samples} on {len(test)} points")
    metrics = evaluate_and_save(vae, config, dataset, train, test, result, workdir)
    test_log_px = {name: metrics["test_iwae"][name] for name in ("mean", "stderr", "k")}
    published = preset.published.get("test_log_px")
    metrics.update({
        "preset": {"name": preset.name, "source": preset.source, "published": preset.published},
        "test_log_px": test_log_px,
        "difference_to_published": None if published is None else test_log_px["mean"] - published,
        "schedule": {"epochs_scale": options.epochs_scale, "num_epochs": config.num_epochs,
                     "stage_epochs": list(config.stage_epochs),
                     "stage_learning_rates": list(config.stage_learning_rates)},
        "run_options": dataclasses.asdict(options),
    })
    io.atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    if preset.gap_protocol:
        metrics["gap"] = run_gap(workdir, preset.gap_overrides + options.gap_overrides, options, data_dir, progress)
        io.atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    io.atomic_write_text(os.path.join(workdir, "reproduce.md"), markdown(metrics))
    return metrics


def run_gap(workdir: str, overrides: tuple[str, ...], options: RunOptions, data_dir: str | None,
            progress: bool) -> dict:
    """The gap protocol of experiments.gap, with GapConfig `overrides` (the preset's, then the
    user's), on the first options.gap_points training and test points of the model just trained
    (results in WORKDIR/gap); returns its per-split summary."""
    from experiments import gap

    config = apply_overrides(gap.GapConfig(checkpoint=workdir, n_eval=options.gap_points, rows="first"),
                             overrides)
    return gap.run(config, os.path.join(workdir, "gap"), data_dir=data_dir, progress=progress)["splits"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--workdir", default=None, help="output directory (default runs/PRESET)")
    rundir.add_arguments(parser)
    parser.add_argument("--data-dir", default=None, help="directory holding binarized_mnist (or $VI_JAX_DATA_DIR)")
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="shorten every stage to max(1, round(F * epochs)) epochs")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in WORKDIR")
    parser.add_argument("--fallback-to-intact", action="store_true",
                        help="with --resume: if the newest checkpoint is damaged, continue from an older intact one")
    parser.add_argument("--num-train", type=int, default=0, help="train on the first N points (0: all)")
    parser.add_argument("--num-test", type=int, default=0, help="evaluate the first N test points (0: all)")
    parser.add_argument("--num-valid", type=int, default=1000, help="validation points on the curve")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints")
    parser.add_argument("--gap-points", type=int, default=1000, help="Cremer presets: points per split")
    parser.add_argument("--gap-set", dest="gap_overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a GapConfig field of the gap protocol (Cremer presets)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a VAEConfig field of the preset (the result is no longer the preset)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    options = RunOptions(epochs_scale=args.epochs_scale, num_train=args.num_train, num_test=args.num_test,
                         num_valid=args.num_valid, checkpoint_every=args.checkpoint_every,
                         gap_points=args.gap_points, gap_overrides=tuple(args.gap_overrides))
    workdir = os.path.join("runs", args.preset) if args.workdir is None else args.workdir  # "" is an error
    metrics = run(args.preset, workdir, options, overrides=args.overrides, data_dir=args.data_dir,
                  resume=args.resume, resume_fallback=args.fallback_to_intact, progress=not args.no_progress,
                  **rundir.arguments(args))
    print(markdown(metrics))
    print(f"wrote {workdir}/metrics.json")


if __name__ == "__main__":
    main()
