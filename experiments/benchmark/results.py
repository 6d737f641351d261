"""Result benchmarks: the experiments' default (or --quick) runs, each in its own process."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time

from .harness import PACKAGE, REPO_ROOT, Context, target

# The experiments package this one belongs to, under whichever name it was imported.
EXPERIMENTS = PACKAGE.rpartition(".")[0]


def run_experiment(ctx: Context, module: str, output: str, *, args: tuple = (), progress: bool = True) -> dict:
    """python -m <experiments>.<module> --workdir ... --overwrite [args] [--no-progress] [--quick];
    its JSON and wall time. The benchmark owns WORKDIR/results/<module>: each run replaces the
    last one's. progress=False for an experiment that prints no progress (it has no --no-progress)."""
    workdir = os.path.join(ctx.workdir, "results", module)
    cmd = [sys.executable, "-m", f"{EXPERIMENTS}.{module}", "--workdir", workdir, "--overwrite", *args]
    if progress:
        cmd.append("--no-progress")
    if ctx.quick:
        cmd.append("--quick")
    ctx.log(f"  {' '.join(cmd[1:])}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=ctx.timeout * 4)
    wall = time.perf_counter() - start
    path = os.path.join(workdir, output)
    if proc.returncode == 0 and not os.path.exists(path) and os.path.isdir(workdir):
        found = sorted(name for name in os.listdir(workdir) if name.endswith(".json"))
        path = os.path.join(workdir, found[0]) if len(found) == 1 else path  # output named otherwise
    if proc.returncode != 0 or not os.path.exists(path):
        return {"error": f"exit {proc.returncode}: {proc.stderr[-3000:]}", "command": shlex.join(cmd[1:]),
                "wall_s": round(wall, 1)}
    with open(path) as f:
        result = json.load(f)
    return {"command": "python " + shlex.join(cmd[1:]), "wall_s": round(wall, 1), "output": path,
            "seed": result.get("seed"), "config": result.get("config"),
            "environment": result.get("environment"), "experiment_wall_seconds": result.get("wall_seconds"),
            "result": {k: v for k, v in result.items() if k not in ("config", "environment")}}


def bench_gap(ctx: Context) -> dict:
    out = run_experiment(ctx, "gap", "gap.json")
    if "error" not in out:
        out["targets"] = [target("gap.py default run <= 10 min on 2 cores", 600.0 / max(out["wall_s"], 1e-9),
                                 1.0, "600 s / wall")] if not ctx.quick else []
    return out


def bench_compare_training(ctx: Context) -> dict:
    return run_experiment(ctx, "compare_training", "compare.json")


def oracle_available() -> bool:
    try:
        return importlib.util.find_spec(f"{EXPERIMENTS}.oracle_gap") is not None
    except (ImportError, ValueError):
        return False


def bench_oracle_gap(ctx: Context) -> dict:
    if not oracle_available():
        return {"skipped": f"not available: {EXPERIMENTS}.oracle_gap is not importable"}
    return run_experiment(ctx, "oracle_gap", "oracle.json")


def bench_local_fit_accuracy(ctx: Context) -> dict:
    return run_experiment(ctx, "local_fit_accuracy", "local_fit_accuracy.json")


def bench_cvae(ctx: Context) -> dict:
    return run_experiment(ctx, "cvae", "metrics.json")


def bench_estimator_variance(ctx: Context) -> dict:
    # --vae: the figures its docstring quotes include the digits VAE's column
    return run_experiment(ctx, "estimator_variance", "estimator_variance.json", args=("--vae",))


def bench_gap_over_training(ctx: Context) -> dict:
    return run_experiment(ctx, "gap_over_training", "gap_over_training.json")


def bench_marginal_likelihood(ctx: Context) -> dict:
    return run_experiment(ctx, "marginal_likelihood", "marginal_likelihood.json")


def bench_mixture_vi(ctx: Context) -> dict:
    return run_experiment(ctx, "mixture_vi", "metrics.json", progress=False)


def bench_train_vae(ctx: Context) -> dict:
    return run_experiment(ctx, "train_vae", "metrics.json")


def bench_vqvae(ctx: Context) -> dict:
    return run_experiment(ctx, "vqvae", "metrics.json")
