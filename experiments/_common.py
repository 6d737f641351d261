"""The scaffold every experiment script stands on: flags -> config -> run(config, workdir).

An experiment module holds its config (a frozen dataclass with the seed inside), QUICK (the
overrides of --quick), its command line CLI beside them, an importable
`run(config, workdir, ...)`, and main:

    CLI = Cli(__doc__, GapConfig, workdir="runs/gap", writes="gap.json", quick=QUICK,
              seed=("seed", "vae.seed"), data_dir=True, example="--set n_eval=100",
              flags=[FieldFlag("--checkpoint", "checkpoint", "a train_vae workdir whose VAE to evaluate")])
    ...
    main = CLI.main(run, report=markdown)

The flags a Cli declares, and what they pass on:
  --workdir DIR                       run(config, DIR)
  --overwrite, --clear-stale-lock     run()'s keywords of the same names (vi_jax.rundir.staged)
  --seed N                            the config fields named in `seed`
  --quick                             QUICK, before every other override
  --set FIELD=VALUE                   any config field (vi_jax.config.apply_overrides)
  --data-dir DIR                      run(..., data_dir=DIR)
  --no-progress                       run(..., progress=False)
Overrides apply in the order --quick, --set, --seed, then the FieldFlag flags, so --seed and the
named flags win over --set. Flags that are no config field (train_vae's --resume, --distributed)
come through RunFlags. experiments.reproduce, whose --set applies to a preset rather than to a
config of its own, builds its parser from `base_parser` and `run_kwargs`, the pieces a Cli is
made of. Also here: the fields results share (`header`: the provenance every result records;
`data_sizes`, `elbo_metrics`), `load_splits`, `save_figure`, `write_report` (NAME.md and NAME.json), and `subset`, the one
seeded choice of evaluated rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from vi_jax import data, plotting, provenance, rundir, storage
from vi_jax.config import apply_overrides
from vi_jax.stats import mean_and_stderr


class FieldFlag(NamedTuple):
    """A flag that sets one config field: `--checkpoint DIR` sets checkpoint=DIR. With `value`,
    a switch: `--vae` sets include_vae=true."""

    flag: str
    field: str
    help: str
    value: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add(self, parser: argparse.ArgumentParser) -> None:
        if self.value is None:
            parser.add_argument(self.flag, dest=self.dest, default=None, help=self.help)
        else:
            parser.add_argument(self.flag, dest=self.dest, action="store_true", help=self.help)

    def overrides(self, args: argparse.Namespace) -> list[str]:
        given = getattr(args, self.dest)
        if self.value is None:
            return [] if given is None else [f"{self.field}={given}"]
        return [f"{self.field}={self.value}"] if given else []


DATASET = FieldFlag("--dataset", "dataset", f"one of {data.DATASETS}")


class RunFlags(NamedTuple):
    """Flags that are no config field: add(parser) declares them, kwargs(args) returns run()'s
    keyword arguments from them (and may prepare the process first, e.g. join other hosts)."""

    add: Callable[[argparse.ArgumentParser], None]
    kwargs: Callable[[argparse.Namespace], dict]


def _add_resume(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the workdir")
    parser.add_argument("--fallback-to-intact", action="store_true",
                        help="with --resume: if the newest checkpoint is damaged, continue from an older intact one")


# run(..., resume=, resume_fallback=) of a run that checkpoints (train_vae, reproduce)
RESUME = RunFlags(_add_resume, lambda args: {"resume": args.resume, "resume_fallback": args.fallback_to_intact})
# run(..., resume=) of a run that keeps its finished stages (gap: vi_jax.checkpoint.StageCache)
RESUME_STAGES = RunFlags(
    lambda parser: parser.add_argument("--resume", action="store_true",
                                       help="keep the finished stages of an interrupted run in the workdir"),
    lambda args: {"resume": args.resume})


def base_parser(doc: str, *, workdir: str | None, workdir_help: str = "output directory", staged: bool = True,
                data_dir: bool = False, progress: bool = True) -> argparse.ArgumentParser:
    """A parser with the flags that `run_kwargs` reads: --workdir; --overwrite and
    --clear-stale-lock for a run that vi_jax.rundir stages; --data-dir and --no-progress when
    run() takes data_dir and progress."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=workdir, help=workdir_help)
    if staged:
        rundir.add_arguments(p)
    if data_dir:
        p.add_argument("--data-dir", default=None,
                       help="directory holding downloaded datasets (default $VI_JAX_DATA_DIR)")
    if progress:
        p.add_argument("--no-progress", action="store_true", help="print no progress while running")
    return p


def run_kwargs(args: argparse.Namespace) -> dict:
    """run()'s keyword arguments from the flags `base_parser` declared."""
    kwargs = {}
    if hasattr(args, "overwrite"):
        kwargs |= rundir.arguments(args)
    if hasattr(args, "data_dir"):
        kwargs["data_dir"] = args.data_dir
    if hasattr(args, "no_progress"):
        kwargs["progress"] = not args.no_progress
    return kwargs


@dataclasses.dataclass(frozen=True)
class Cli:
    """An experiment's command line (the flags in the module docstring above): `parse` turns argv
    into run()'s arguments, `main` runs it. No --quick without `quick`, no --seed without `seed`;
    staged=False for a run that vi_jax.rundir does not stage. `writes` is the file run() writes
    last, named when it is done."""

    doc: str
    config: type
    workdir: str
    writes: str
    example: str  # --set's example in --help
    quick: Sequence[str] | None = None
    seed: Sequence[str] = ("seed",)
    flags: Sequence[FieldFlag] = ()
    extra: Sequence[RunFlags] = ()
    data_dir: bool = False
    progress: bool = True
    staged: bool = True

    def parser(self) -> argparse.ArgumentParser:
        p = base_parser(self.doc, workdir=self.workdir, staged=self.staged, data_dir=self.data_dir,
                        progress=self.progress)
        if self.seed:
            p.add_argument("--seed", type=int, default=None,
                           help="overrides " + " and ".join(f"config.{f}" for f in self.seed))
        for flag in self.flags:
            flag.add(p)
        if self.quick is not None:
            p.add_argument("--quick", action="store_true", help="a small smoke configuration")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help=f"override any {self.config.__name__} field, e.g. {self.example}")
        for more in self.extra:
            more.add(p)
        return p

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, str, dict]:
        """(config, workdir, run()'s keyword arguments) of a command line."""
        args = self.parser().parse_args(argv)
        overrides = (list(self.quick) if self.quick is not None and args.quick else []) + args.overrides
        if self.seed and args.seed is not None:
            overrides += [f"{field}={args.seed}" for field in self.seed]
        for flag in self.flags:
            overrides += flag.overrides(args)
        config = apply_overrides(self.config(), overrides)
        kwargs = run_kwargs(args)
        for more in self.extra:
            kwargs |= more.kwargs(args)
        return config, args.workdir, kwargs

    def main(self, run: Callable, report: Callable[[Any], str] | None = None) -> Callable[[Sequence[str] | None], None]:
        """main(argv): run(*parse(argv)), then print report(result) and where the results are."""
        def main(argv: Sequence[str] | None = None) -> None:
            config, workdir, kwargs = self.parse(argv)
            start = time.perf_counter()
            result = run(config, workdir, **kwargs)
            if report is not None:
                print(report(result))
            print(f"wrote {workdir}/{self.writes} in {time.perf_counter() - start:.0f} s")
        return main


def progress_log(progress: bool) -> Callable[[str], None]:
    """A run's progress printer: print, or a no-op under --no-progress."""
    return print if progress else (lambda message: None)


def header(config) -> dict:
    """The provenance every result records: the seed, the whole config and the environment."""
    return {"seed": config.seed, "config": dataclasses.asdict(config), "environment": provenance.environment()}


def load_splits(config, data_dir: str | None) -> tuple:
    """(dataset, train, test): config.dataset with both splits validated for config.likelihood."""
    dataset = data.load_dataset(config.dataset, data_dir=data_dir, seed=config.seed)
    train, test = (data.validate_data(getattr(dataset, split), likelihood=config.likelihood,
                                      name=f"{config.dataset} {split}") for split in ("train", "test"))
    return dataset, train, test


def data_sizes(dataset, train: np.ndarray, test: np.ndarray) -> dict:
    """data_dim, n_train and n_test of the splits a model was trained and evaluated on."""
    return {"data_dim": int(dataset.dim), "n_train": int(len(train)), "n_test": int(len(test))}


def elbo_metrics(test_elbo, train_elbo, test_iwae, k: int) -> dict:
    """test_elbo, test_iwae (an IWAE estimate with K = k, and the mean of its per-datapoint
    Monte-Carlo standard errors) and train_elbo, each {"mean", "stderr"} over datapoints."""
    return {"test_elbo": mean_and_stderr(test_elbo),
            "test_iwae": {**mean_and_stderr(test_iwae.bound), "k": k,
                          "mean_mc_stderr_per_datapoint": float(jnp.mean(test_iwae.stderr))},
            "train_elbo": mean_and_stderr(train_elbo)}


def save_figure(fig, path: str) -> None:
    """Write fig to path atomically and close it (pyplot holds every open figure)."""
    storage.atomic_save_figure(fig, path)
    plotting.close(fig)


def write_report(workdir: str, name: str, result: dict, markdown: str) -> dict:
    """NAME.md, then NAME.json (last: the result the script reports), each atomically; returns result."""
    storage.atomic_write_text(os.path.join(workdir, f"{name}.md"), markdown)
    storage.atomic_write_json(os.path.join(workdir, f"{name}.json"), result)
    return result
