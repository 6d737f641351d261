"""The scaffold every experiment script stands on: flags -> config -> run(config, workdir).

An experiment module holds its config (a frozen dataclass with the seed inside), QUICK (the
overrides of --quick), an importable `run(config, workdir, ...)`, and gets its command line
from `command`:

    main = command(__doc__, run, GapConfig, workdir="runs/gap", writes="gap.json", quick=QUICK,
                   seed=("seed", "vae.seed"), data_dir=True, report=markdown,
                   flags=[FieldFlag("--checkpoint", "checkpoint", "a train_vae workdir whose VAE to evaluate")],
                   example="--set n_eval=100")

The flags it declares, and what they pass on:
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
config of its own, builds its parser from `base_parser` and `run_kwargs`, the pieces `command`
is made of. Also here: `header`, the provenance every result records, and `subset`, the one
seeded choice of evaluated rows.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from vi_jax import provenance, rundir
from vi_jax.config import apply_overrides


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
        p.add_argument("--data-dir", default=None, help="directory holding downloaded datasets (default $VI_JAX_DATA_DIR)")
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


def command(doc: str, run: Callable, config: type, *, workdir: str, writes: str, example: str,
            quick: Sequence[str] | None = None, seed: Sequence[str] = ("seed",), flags: Sequence[FieldFlag] = (),
            extra: Sequence[RunFlags] = (), data_dir: bool = False, progress: bool = True, staged: bool = True,
            report: Callable[[Any], str] | None = None) -> Callable[[Sequence[str] | None], None]:
    """main(argv) of an experiment: parse the flags (module docstring above), build the config
    from config() and the overrides, call run(config, workdir, ...), print report(result) and
    the path of `writes`, the file the run writes last. No --quick without `quick`, no --seed
    without `seed`; `staged=False` for a run that vi_jax.rundir does not stage."""
    def main(argv: Sequence[str] | None = None) -> None:
        p = base_parser(doc, workdir=workdir, staged=staged, data_dir=data_dir, progress=progress)
        if seed:
            p.add_argument("--seed", type=int, default=None, help="overrides " + " and ".join(f"config.{f}" for f in seed))
        for flag in flags:
            flag.add(p)
        if quick is not None:
            p.add_argument("--quick", action="store_true", help="a small smoke configuration")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                       help=f"override any {config.__name__} field, e.g. {example}")
        for more in extra:
            more.add(p)
        args = p.parse_args(argv)
        overrides = (list(quick) if quick is not None and args.quick else []) + args.overrides
        if seed and args.seed is not None:
            overrides += [f"{field}={args.seed}" for field in seed]
        for flag in flags:
            overrides += flag.overrides(args)
        cfg = apply_overrides(config(), overrides)
        kwargs = run_kwargs(args)
        for more in extra:
            kwargs |= more.kwargs(args)
        start = time.perf_counter()
        result = run(cfg, args.workdir, **kwargs)
        if report is not None:
            print(report(result))
        print(f"wrote {args.workdir}/{writes} in {time.perf_counter() - start:.0f} s")
    return main


def header(config) -> dict:
    """The provenance every result records: the seed, the whole config and the environment."""
    return {"seed": config.seed, "config": dataclasses.asdict(config), "environment": provenance.environment()}


ROW_CHOICES = ("random", "first")


def subset(key, x: np.ndarray, n: int, rows: str = "random", *, order: str | None = None,
           name: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """(sorted row indices, rows) of a seeded random subset of n rows, or of the first n rows
    (Cremer et al. evaluate the first 1000 training points); all rows if n >= len(x).

    order: why the row order of `x` is meaningful (Dataset.ordered_splits), or None; then its
    first n rows are a biased sample and rows="first" raises a ValueError starting with `name`.
    """
    if rows not in ROW_CHOICES:
        raise ValueError(f"{name}: unknown rows choice {rows!r}; known: {ROW_CHOICES}")
    if rows == "first" and order is not None and n < len(x):
        raise ValueError(f"{name}: rows='first' refused: the split is {order}, so its first {n} rows are not a "
                         f"fair sample of its {len(x)}; use rows='random' (a seeded random subset) or all rows")
    if rows == "first":
        index = np.arange(min(n, len(x)))
    else:
        index = np.sort(np.asarray(jax.random.permutation(key, len(x)))[:n])
    return index, x[index]
