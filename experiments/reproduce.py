"""Reproduce a published binarized-MNIST experiment from its preset (vi_jax.presets).

    python -m experiments.reproduce --preset iwae_k1 --workdir runs/iwae_k1 --data-dir DIR
    python -m experiments.reproduce --preset iwae_k1 --workdir runs/iwae_k1 --data-dir DIR --resume
    python -m experiments.reproduce --preset cremer_ffg --workdir runs/cremer_ffg --epochs-scale 0.01

Trains with the preset's full published schedule (or every stage shortened by --epochs-scale),
checkpointing every --checkpoint-every epochs into WORKDIR/checkpoints (--resume continues an
interrupted run exactly: the training from its newest checkpoint, the gap protocol from the stages
it finished, WORKDIR/gap*/checkpoints); the progress bar shows stage, epoch, ELBO and ETA, and the validation
ELBO / IWAE_100 curve is recorded every eval_every epochs on --num-valid validation points.
Then evaluates the test log-likelihood with IWAE K = 5000 (the preset's final_iwae_samples), and
for the Cremer presets runs the gap protocol of experiments.gap on the first --gap-points
training points and a seeded random --gap-points of the test split (into WORKDIR/gap), with
the `accurate` local fit and log p(x) the larger of IWAE_5000 and AIS per datapoint (the
preset's gap_overrides; --gap-set adds to them), then the authors' local fit on
--authors-points of the same rows (into WORKDIR/gap_authors).

    python -m experiments.reproduce --publish WORKDIR --to results/NAME   # an artifact (vi_jax.artifacts)
    python -m experiments.reproduce --verify results/NAME --data-dir DIR  # recheck every figure
    python -m experiments.reproduce --table results/*                     # the figures as Markdown

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
import shutil
import sys
import tempfile
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vi_jax import artifacts, rundir, storage, streams
from vi_jax.config import Rule, apply_overrides, check_fields, count, from_dict, real
from vi_jax.data import subset
from vi_jax.presets import PRESETS, get_preset, scale_epochs
from vi_jax.vae import VAEConfig, build_vae, load_training_data, train_vae

from . import gap
from ._common import RESUME, base_parser, progress_log, run_kwargs
from .train_vae import evaluate_and_save

EVALUATIONS_PER_RUN = 40  # validation points on the curve (eval_every = num_epochs / this)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What varies between a full reproduction and a quick or partial one."""

    epochs_scale: float = 1.0
    num_train: int = 0  # train on the first num_train points (0: all)
    num_test: int = 0  # evaluate on a seeded random num_test test points (0: all)
    num_valid: int = 1000  # validation points on the curve
    checkpoint_every: int = 10  # epochs
    gap_points: int = 1000  # Cremer presets: the first gap_points training, a random gap_points test points
    # Cremer presets: the authors' local-fit protocol again on min(authors_points, gap_points) of
    # those rows (the same key, so a subset of them; 0: not run)
    authors_points: int = 200
    gap_overrides: tuple[str, ...] = ()  # GapConfig overrides for the gap protocol (both runs)

    RULES: ClassVar[dict[str, Rule]] = {
        "epochs_scale": real(0, 1, high_closed=True), "num_train": count(0), "num_test": count(0),
        "num_valid": count(0), "checkpoint_every": count(0), "gap_points": count(1), "authors_points": count(0)}

    def validate(self) -> None:
        check_fields(self, self.RULES)


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
    options.validate()
    preset = get_preset(preset_name)
    config = preset_config(preset_name, options, overrides)
    log = progress_log(progress)
    dataset, train, test = load_training_data(config, data_dir)
    gap_configs = {}
    if preset.gap_protocol:  # its row choice refused now, not after hours of training
        gap_configs = gap_protocol_configs(workdir, preset.gap_overrides + options.gap_overrides, options)
        for gap_config in gap_configs.values():
            gap_config.validate()
            gap.choose_rows(gap_config, dataset, {"train": train, "test": test})
    # held-out subsets: fold_in(held_out_key, i), i = 0 the test rows, 1 the test rows standing in for validation
    held_out_key = streams.stream(config.seed, streams.HELD_OUT_ROWS)
    if dataset.valid is not None:  # Larochelle's validation file is in random order
        valid = subset(None, dataset.valid, options.num_valid, "first", order=dataset.ordered_splits.get("valid"),
                       name=f"{config.dataset} valid")[1]
    else:  # MNIST has no validation split: random test rows stand in (its test split is ordered)
        valid = subset(jax.random.fold_in(held_out_key, 1), test, options.num_valid)[1]
    valid = jnp.asarray(valid)
    if options.num_train:
        train = subset(None, train, options.num_train, "first", order=dataset.ordered_splits.get("train"),
                       name=f"{config.dataset} train")[1]
    test_rows = {"choice": "all", "n": len(test), "of": len(test)}
    if options.num_test:
        index, test = subset(jax.random.fold_in(held_out_key, 0), test, options.num_test)
        test_rows = {"choice": "random", "n": len(index), "of": test_rows["of"],
                     "subset_key": f"fold_in(fold_in(PRNGKey({config.seed}), {streams.HELD_OUT_ROWS}), 0)",
                     "indices": index.tolist()}
    vae = build_vae(config, dataset.dim, steps_per_epoch=len(train) // config.batch_size)
    log(f"{preset_name}: {config.num_epochs} epochs in stages {config.stage_epochs} at batch "
        f"{config.batch_size} on {len(train)} points ({len(train) // config.batch_size} steps per epoch)")
    result = train_vae(vae, config, train, valid, progress=progress,
                       checkpoint_dir=rundir.checkpoint_dir(workdir), resume=resume, resume_fallback=resume_fallback,
                       metrics=rundir.live_path(workdir, "metrics.jsonl"))
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
        "overrides": list(overrides),
        "test_rows": test_rows,
    })
    storage.atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    for folder, gap_config in gap_configs.items():
        metrics[folder] = gap.run(gap_config, os.path.join(workdir, folder), data_dir=data_dir,
                                  progress=progress, resume=resume)["splits"]
        storage.atomic_write_json(os.path.join(workdir, "metrics.json"), metrics)
    storage.atomic_write_text(os.path.join(workdir, "reproduce.md"), markdown(metrics))
    return metrics


AUTHORS_GAP = ("protocol.local_fit=authors", "protocol.local_init=prior", "protocol.ais_proposal=")


def gap_protocol_configs(workdir: str, overrides: tuple[str, ...], options: RunOptions) -> dict:
    """{results folder: GapConfig} of the Cremer protocol on the model trained in `workdir`.

    "gap": the first options.gap_points training points (Cremer et al.; Larochelle's training
    file is in random order) and a seeded random options.gap_points of the test split (the file
    is sorted by class), then GapConfig `overrides` (the preset's, then the user's).
    "gap_authors" (when options.authors_points > 0): the same with the authors' local fit
    (AUTHORS_GAP: lxuechen local_ffg.py's settings from the prior, no AIS) on the first
    min(authors_points, gap_points) of those rows: the same seed draws a subset of the same rows,
    so the two protocols' q* can be compared datapoint by datapoint."""
    base = gap.GapConfig(checkpoint=workdir, n_eval=options.gap_points, rows="random", train_rows="first")
    configs = {"gap": apply_overrides(base, overrides)}
    if options.authors_points:
        n = min(options.authors_points, options.gap_points)
        configs["gap_authors"] = apply_overrides(base, overrides + AUTHORS_GAP + (f"n_eval={n}",))
    return configs


def count_at_least(minimum: int):
    """An argparse type: an integer >= minimum, else a usage error naming the value."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    return parse


GAP_FIGURE_QUANTITIES = ("log_px", "elbo_amortized", "inference_gap")  # plus, per local family, its ELBO and gaps


def gap_figures(file_name: str, label: str, arrays) -> list[tuple[str, str]]:
    """(name, source) of every published figure of one gap npz: log p(x), the amortized ELBO,
    the inference gap, and per local family its ELBO, both gaps and their paired difference."""
    figures = [(f"{label}: {q}", f"{file_name}:{q}") for q in GAP_FIGURE_QUANTITIES]
    for family in sorted(n[len("elbo_local_"):] for n in arrays if n.startswith("elbo_local_")):
        figures += [(f"{label}: {q}_{family}", f"{file_name}:{q}_{family}")
                    for q in ("elbo_local", "approximation_gap", "amortization_gap")]
        figures.append((f"{label}: amortization_minus_approximation_{family}",
                        f"{file_name}:amortization_gap_{family}-approximation_gap_{family}"))
    return figures


PROTOCOL_QUANTITIES = ("elbo_local", "approximation_gap", "amortization_gap")


def protocol_differences(reference: str, other: str) -> dict:
    """Per-datapoint differences other - reference of every local family's ELBO and gaps, over
    the rows of the gap npz `other` (which must all be rows of `reference`), with those rows."""
    with np.load(reference) as ref, np.load(other) as oth:
        position = {int(row): i for i, row in enumerate(ref["rows"])}
        missing = [int(row) for row in oth["rows"] if int(row) not in position]
        if missing:
            raise ValueError(f"{other}: rows {missing[:5]} are not rows of {reference}")
        where = np.array([position[int(row)] for row in oth["rows"]], dtype=np.int64)
        names = [n for n in oth.files if n.startswith(PROTOCOL_QUANTITIES) and n in ref.files]
        return {"rows": oth["rows"], **{n: oth[n] - ref[n][where] for n in names}}


def publish(workdir: str, dest: str) -> dict:
    """The artifact (vi_jax.artifacts) of a finished reproduction in `workdir`: its
    parameters, evaluation.npz (test log p(x), test and train ELBO), every gap run in a
    WORKDIR/gap* folder (each split's npz, figures labelled by folder and split), and for every
    other gap run the paired differences of its local fits from those of WORKDIR/gap
    (protocols_{folder}_{split}.npz). The workdir must verify against its manifest first."""
    rundir.verify(workdir)
    metrics = artifacts.read_json(os.path.join(workdir, "metrics.json"))
    arrays = {"evaluation.npz": os.path.join(workdir, "evaluation.npz")}
    figures = [(artifacts.TEST_LOG_PX, "evaluation.npz:test_iwae"), ("test_elbo", "evaluation.npz:test_elbo"),
               ("train_elbo", "evaluation.npz:train_elbo")]
    gap_runs = {}
    for folder in sorted(f for f in os.listdir(workdir) if f.startswith("gap") and os.path.isdir(os.path.join(workdir, f))):
        gap_runs[folder] = artifacts.read_json(os.path.join(workdir, folder, "gap.json"))
        for split in gap_runs[folder]["splits"]:
            file_name, source = f"{folder}_{split}.npz", os.path.join(workdir, folder, f"gap_{split}.npz")
            arrays[file_name] = source
            with np.load(source) as a:
                figures += gap_figures(file_name, f"{folder} {split}", list(a.keys()))
    derived = tempfile.mkdtemp(prefix="vi_jax-publish-")
    for folder in gap_runs:
        for split in gap_runs[folder]["splits"] if folder != "gap" and "gap" in gap_runs else ():
            file_name = f"protocols_{folder}_{split}.npz"
            difference = protocol_differences(os.path.join(workdir, "gap", f"gap_{split}.npz"),
                                              os.path.join(workdir, folder, f"gap_{split}.npz"))
            arrays[file_name] = os.path.join(derived, file_name)
            storage.atomic_save_npz(arrays[file_name], **difference)
            figures += [(f"protocols {split}: {n}, {folder} - gap", f"{file_name}:{n}") for n in difference if n != "rows"]
    info = {"preset": metrics["preset"]["name"], "run_options": metrics["run_options"],
            "overrides": metrics.get("overrides", []), "seed": metrics["seed"],
            "environment": metrics["environment"], "wall_seconds": metrics["wall_seconds"],
            "gap": {folder: {k: g[k] for k in ("config", "environment", "wall_seconds")} for folder, g in gap_runs.items()}}
    try:
        return artifacts.publish(dest, name=os.path.basename(os.path.normpath(dest)),
                                 vae_config=from_dict(VAEConfig, metrics["config"]),
                                 params_path=os.path.join(workdir, "params.msgpack"), arrays=arrays, figures=figures,
                                 info=info, data_dim=metrics["data_dim"])
    finally:
        shutil.rmtree(derived, ignore_errors=True)


def verify(directory: str, *, data_dir: str | None, fresh_points: int, fresh_seed: int) -> bool:
    """Print a PASS/FAIL line per check of the artifact (vi_jax.artifacts.verify); True if all pass."""
    def expected_config(info):
        options = from_dict(RunOptions, info["run_options"])
        return preset_config(info["preset"], options, info["overrides"])

    checks = artifacts.verify(directory, data_dir=data_dir, fresh_points=fresh_points, fresh_seed=fresh_seed,
                              expected_config=expected_config)
    for check in checks:
        print(f"{'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    passed = sum(c.ok for c in checks)
    print(f"{directory}: {passed} of {len(checks)} checks passed")
    return passed == len(checks)


def main(argv=None) -> None:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("--verify", "--publish", "--table"):
        return artifact_main(argv)
    parser = base_parser(__doc__, workdir=None, workdir_help="output directory (default runs/PRESET)", data_dir=True)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="shorten every stage to max(1, round(F * epochs)) epochs")
    RESUME.add(parser)
    parser.add_argument("--num-train", type=count_at_least(0), default=0, help="train on the first N points (0: all)")
    parser.add_argument("--num-test", type=count_at_least(0), default=0,
                        help="evaluate a seeded random N of the test points (0: all)")
    parser.add_argument("--num-valid", type=count_at_least(0), default=1000, help="validation points on the curve")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints")
    parser.add_argument("--gap-points", type=count_at_least(1), default=1000,
                        help="Cremer presets: the first N training and a seeded random N test points")
    parser.add_argument("--authors-points", type=count_at_least(0), default=200,
                        help="Cremer presets: the authors' local fit again on N of those points (0: not run)")
    parser.add_argument("--gap-set", dest="gap_overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a GapConfig field of the gap protocol (Cremer presets)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a VAEConfig field of the preset (the result is no longer the preset)")
    args = parser.parse_args(argv)
    options = RunOptions(epochs_scale=args.epochs_scale, num_train=args.num_train, num_test=args.num_test,
                         num_valid=args.num_valid, checkpoint_every=args.checkpoint_every,
                         gap_points=args.gap_points, authors_points=args.authors_points,
                         gap_overrides=tuple(args.gap_overrides))
    workdir = os.path.join("runs", args.preset) if args.workdir is None else args.workdir  # "" is an error
    metrics = run(args.preset, workdir, options, overrides=args.overrides, **run_kwargs(args),
                  **RESUME.kwargs(args))
    print(markdown(metrics))
    print(f"wrote {workdir}/metrics.json")


def artifact_main(argv) -> None:
    parser = argparse.ArgumentParser(description="Publish, verify or tabulate reproduction artifacts (results/NAME).")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--verify", nargs="+", metavar="ARTIFACT", help="check artifacts; exit 1 if any check fails")
    action.add_argument("--publish", metavar="WORKDIR", help="make an artifact of a finished reproduction")
    action.add_argument("--table", nargs="+", metavar="ARTIFACT", help="print the figures of artifacts as Markdown")
    parser.add_argument("--to", metavar="ARTIFACT", help="--publish: the artifact folder to create (results/NAME)")
    parser.add_argument("--data-dir", default=None, help="--verify: directory holding the data (or $VI_JAX_DATA_DIR)")
    parser.add_argument("--fresh-points", type=int, default=500, help="--verify: random test points re-estimated")
    parser.add_argument("--fresh-seed", type=int, default=1, help="--verify: key of the re-estimate")
    args = parser.parse_args(argv)
    if args.publish:
        if not args.to:
            parser.error("--publish needs --to results/NAME")
        record = publish(args.publish, args.to)
        print(f"wrote {args.to}: {len(record['figures'])} figures")
    elif args.table:
        print(artifacts.figures_table(args.table), end="")
    elif not all([verify(d, data_dir=args.data_dir, fresh_points=args.fresh_points, fresh_seed=args.fresh_seed)
                  for d in args.verify]):
        sys.exit(1)


if __name__ == "__main__":
    main()
