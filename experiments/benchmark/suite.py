"""The registry of benchmarks, the suite run and its command line (main)."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Optional

import numpy as np

from . import __doc__ as USAGE
from .check import compare_benchmarks
from .harness import PACKAGE, REPO_ROOT, Context
from .report import check_markdown, machine, markdown
from .results import (bench_compare_training, bench_cvae, bench_estimator_variance, bench_gap,
                      bench_gap_over_training, bench_local_fit_accuracy, bench_marginal_likelihood, bench_mixture_vi,
                      bench_oracle_gap, bench_train_vae, bench_vqvae, oracle_available)
from .speed import (bench_amortized_step_anatomy, bench_amortized_training, bench_iwae, bench_local_fit,
                    bench_local_fit_early_stop, bench_scaling_iwae, bench_scaling_local_fit)
from .workers import WORKERS

DEFAULT_PEERS_DIR = os.path.join(REPO_ROOT, "..", "shared", "peers")
DEFAULT_TORCH_PYTHON = os.path.join(REPO_ROOT, ".venv-torch", "bin", "python")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # "result" or "speed"
    description: str
    run: Callable[[Context], dict]


REGISTRY: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("gap", "result", "experiments.gap default run (digits): the gap table", bench_gap),
    Benchmark("oracle_gap", "result", "experiments.oracle_gap default run: the oracle table", bench_oracle_gap),
    Benchmark("compare_training", "result", "experiments.compare_training: the training-mode comparison",
              bench_compare_training),
    Benchmark("local_fit_accuracy", "result", "experiments.local_fit_accuracy: each named local-fit protocol's "
              "shortfall from the exact q*_FFG on the oracles, and its cost", bench_local_fit_accuracy),
    Benchmark("train_vae", "result", "experiments.train_vae default run (digits): held-out ELBO and IWAE",
              bench_train_vae),
    Benchmark("cvae", "result", "experiments.cvae default run (digits): held-out ELBO(x | c) and IWAE", bench_cvae),
    Benchmark("vqvae", "result", "experiments.vqvae default run (digits): reconstruction NLL and codebook usage",
              bench_vqvae),
    Benchmark("mixture_vi", "result", "experiments.mixture_vi default run: KL(q || p(z|x)) of local and "
              "amortized q on a Gaussian mixture", bench_mixture_vi),
    Benchmark("gap_over_training", "result", "experiments.gap_over_training default run: the gaps at each "
              "checkpoint of training", bench_gap_over_training),
    Benchmark("marginal_likelihood", "result", "experiments.marginal_likelihood default run: log p(x) "
              "estimators' errors against the latent dimension", bench_marginal_likelihood),
    Benchmark("estimator_variance", "result", "experiments.estimator_variance --vae: each ELBO gradient "
              "estimator's variance (linear oracle and a digits VAE)", bench_estimator_variance),
    Benchmark("amortized_training", "speed", "amortized VAE training steps/s vs torch / flax / NumPyro / "
              "hand-fused scan / GEMM skeleton limit", bench_amortized_training),
    Benchmark("amortized_step_anatomy", "speed", "where the amortized step's time goes beyond its GEMMs: "
              "the skeleton + Adam, + the model's elementwise work, + shuffled batches, and ours against the "
              "same step written out by hand (one process, alternating)", bench_amortized_step_anatomy),
    Benchmark("local_fit", "speed", "per-datapoint fit (N=2000, 500 Adam steps) datapoints/s vs torch / JAX "
              "peers and the GEMM-rate limit", bench_local_fit),
    Benchmark("local_fit_early_stop", "speed", "the default convergence rule: effective speed-up of "
              "stopping converged rows, and of skipping them (against one block of all rows)",
              bench_local_fit_early_stop),
    Benchmark("iwae", "speed", "IWAE K=5000 on 1000 datapoints: datapoints/s, FLOP-limit fraction, peak RSS",
              bench_iwae),
    Benchmark("scaling_local_fit", "speed", "local-fit time against N (1e3..1e5), log-log slope",
              bench_scaling_local_fit),
    Benchmark("scaling_iwae", "speed", "IWAE time and peak RSS against K (1e2..1e4), log-log slope",
              bench_scaling_iwae),
]}


def _has_module(python: str, module: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def make_context(args) -> Context:
    peers_dir = os.path.abspath(args.peers_dir)
    notes = []
    if args.no_peers:
        peers_dir = None
        notes.append("peers disabled (--no-peers)")
    elif not os.path.isdir(peers_dir):
        notes.append(f"peers directory {peers_dir} not found: peer rows skipped")
        peers_dir = None
    jax_python = args.jax_python or os.environ.get("PEERS_JAX_PYTHON") or sys.executable
    torch_python = args.torch_python or os.environ.get("PEERS_TORCH_PYTHON") or DEFAULT_TORCH_PYTHON
    if peers_dir is None or not (os.path.exists(torch_python) or os.sep not in torch_python) \
            or not _has_module(torch_python, "torch"):
        if peers_dir is not None:
            notes.append(f"torch not importable with {torch_python}: torch rows skipped")
        torch_python = None
    jax_numpyro = peers_dir is not None and _has_module(jax_python, "numpyro")
    if peers_dir is not None and not jax_numpyro:
        notes.append(f"numpyro not importable with {jax_python}: NumPyro row skipped")
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    scaling_reps = args.scaling_reps if args.scaling_reps is not None else 1
    return Context(workdir=args.workdir, quick=args.quick, reps=reps, scaling_reps=scaling_reps,
                   peers_dir=peers_dir, jax_python=jax_python, torch_python=torch_python,
                   jax_numpyro=jax_numpyro, log=(lambda s: None) if args.quiet else print, notes=notes)


def interpreter_versions(ctx: Context) -> dict:
    out = {"jax_python": ctx.jax_python, "torch_python": ctx.torch_python}
    for key, python, code in (("jax_peers", ctx.jax_python, "import jax; print(jax.__version__)"),
                              ("numpyro", ctx.jax_python, "import numpyro; print(numpyro.__version__)"),
                              ("torch", ctx.torch_python, "import torch; print(torch.__version__)")):
        if python and ctx.peers_dir:
            proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
            out[key] = proc.stdout.strip() or None
    return out


def select(only: Optional[str], kinds=("result", "speed")) -> list:
    if not only:
        return [b for b in REGISTRY.values() if b.kind in kinds]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {list(REGISTRY)}")
    return [REGISTRY[n] for n in names]


def run_suite(ctx: Context, benchmarks: list, command: str) -> dict:
    from vi_jax import provenance, storage

    os.makedirs(ctx.workdir, exist_ok=True)
    report = {"suite": "vi_jax benchmarks", "created": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": command, "quick": ctx.quick, "reps": ctx.reps, "scaling_reps": ctx.scaling_reps,
              "load_before": list(os.getloadavg()), "machine": machine(),
              "environment": provenance.environment(), "peers_dir": ctx.peers_dir,
              "interpreters": interpreter_versions(ctx), "notes": ctx.notes, "benchmarks": {}}
    for note in ctx.notes:
        ctx.log(f"note: {note}")
    for bench in benchmarks:
        ctx.log(f"[{bench.name}] {bench.description}")
        start, load_before = time.perf_counter(), list(os.getloadavg())
        try:
            out = bench.run(ctx)
        except Exception as err:  # one failing benchmark must not lose the others' results
            out = {"error": f"{type(err).__name__}: {err}"}
        out.update(kind=bench.kind, description=bench.description,
                   benchmark_wall_s=round(time.perf_counter() - start, 1), cpu_model=report["machine"]["cpu_model"],
                   load_before=load_before, load_after=list(os.getloadavg()))
        report["benchmarks"][bench.name] = out
        report["load_after"] = list(os.getloadavg())
        storage.atomic_write_json(os.path.join(ctx.workdir, "benchmark.json"), _finite(report))
    report["load_after"] = list(os.getloadavg())
    report = _finite(report)
    storage.atomic_write_json(os.path.join(ctx.workdir, "benchmark.json"), report)
    storage.atomic_write_text(os.path.join(ctx.workdir, "benchmark.md"), markdown(report))
    return report


def _finite(obj):
    """JSON-safe copy: non-finite floats become None (benchmark.json refuses NaN/inf)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PACKAGE}", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/benchmark", help="where benchmark.json / benchmark.md go")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (see --list)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repetition: a smoke run")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per contestant (default 3; quick 1)")
    parser.add_argument("--scaling-reps", type=int, default=None,
                        help="repetitions of the scaling runs (default 1)")
    parser.add_argument("--peers-dir", default=DEFAULT_PEERS_DIR, help="the peer reference scripts")
    parser.add_argument("--no-peers", action="store_true", help="run only our own rows")
    parser.add_argument("--jax-python", default=None, help="interpreter of the JAX peers ($PEERS_JAX_PYTHON)")
    parser.add_argument("--torch-python", default=None, help="interpreter of the torch peers ($PEERS_TORCH_PYTHON)")
    parser.add_argument("--check", default=None, metavar="REFERENCE.json",
                        help="rerun the reference's result benchmarks and list every figure that moved")
    parser.add_argument("--check-sigmas", type=float, default=2.0,
                        help="--check across different conditions: tolerance in combined standard errors")
    parser.add_argument("--list", action="store_true", help="list the registry and exit")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:  # one measurement of our code path, in this (fresh) process
        print(json.dumps(_finite(WORKERS[args.worker](json.loads(args.params)))), flush=True)
        return 0
    if args.list:
        for b in REGISTRY.values():
            extra = "" if b.name != "oracle_gap" or oracle_available() else " [not available]"
            print(f"{b.name:<22} {b.kind:<7} {b.description}{extra}")
        return 0
    command = f"python -m {PACKAGE} " + shlex.join(argv if argv is not None else sys.argv[1:])
    ctx = make_context(args)
    if args.check:
        with open(args.check) as f:
            reference = json.load(f)
        names = [n for n, b in reference["benchmarks"].items() if b.get("kind") == "result" and "result" in b]
        if args.only:
            names = [b.name for b in select(args.only) if b.name in names]
        ctx.quick = bool(reference.get("quick")) if not args.quick else True
        current = run_suite(ctx, [REGISTRY[n] for n in names], command)
        check = compare_benchmarks(reference["benchmarks"], current["benchmarks"], sigmas=args.check_sigmas)
        from vi_jax import storage
        storage.atomic_write_json(os.path.join(ctx.workdir, "check.json"), _finite(check))
        text = check_markdown(check)
        storage.atomic_write_text(os.path.join(ctx.workdir, "check.md"), text)
        print(text)
        return 0 if check["ok"] else 1
    report = run_suite(ctx, select(args.only), command)
    print(markdown(report))
    print(f"wrote {os.path.join(ctx.workdir, 'benchmark.json')} and benchmark.md")
    return 0
