"""Running contestants (ours and the peers) as separate processes, alternating, and the medians
and per-round ratios of their runs."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import numpy as np

# This package's import name, so that worker processes run the same code under either name of
# the experiments package; the repository root, the working directory of every subprocess.
PACKAGE = __package__
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Contestant:
    label: str
    metric: str  # the key of the JSON line that is the rate
    ours: bool
    worker: str = ""  # ours: a WORKERS name
    params: tuple = ()  # ours: (key, value) pairs (hashable)
    script: str = ""  # peer: a script in the peers directory
    args: tuple = ()
    interpreter: str = "jax"  # peer: "jax" or "torch"
    note: str = ""

    def describe(self) -> str:
        if self.ours:
            return f"vi_jax ({self.worker}: {dict(self.params)})"
        return f"{self.interpreter} peer: {' '.join((self.script,) + self.args)}"


def ours(label: str, worker: str, metric: str, **params) -> Contestant:
    return Contestant(label, metric, True, worker=worker, params=tuple(sorted(params.items())))


def peer(label: str, script: str, *args: str, metric: str, interpreter: str = "jax", note: str = "") -> Contestant:
    return Contestant(label, metric, False, script=script, args=tuple(args), interpreter=interpreter, note=note)


def last_json_line(text: str) -> Optional[dict]:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


@dataclasses.dataclass
class Context:
    """What every benchmark of one suite run shares."""

    workdir: str
    quick: bool = False
    reps: int = 3
    scaling_reps: int = 1
    peers_dir: Optional[str] = None  # None: no peers
    jax_python: str = sys.executable
    torch_python: Optional[str] = None  # None: no torch peers
    jax_numpyro: bool = True
    timeout: int = 1800
    log: Callable[[str], None] = print
    notes: list = dataclasses.field(default_factory=list)

    def available(self, c: Contestant) -> Optional[str]:
        """None if the contestant can run, else why not."""
        if c.ours:
            return None
        if self.peers_dir is None:
            return "peers directory not found (--peers-dir)"
        if not os.path.exists(os.path.join(self.peers_dir, c.script)):
            return f"{c.script} not in {self.peers_dir}"
        if c.interpreter == "torch" and self.torch_python is None:
            return "no torch interpreter (--torch-python / PEERS_TORCH_PYTHON)"
        if c.script == "numpyro_vae.py" and not self.jax_numpyro:
            return "numpyro not installed for --jax-python (pip install numpyro)"
        return None

    def command(self, c: Contestant) -> tuple[list, str]:
        if c.ours:
            params = dict(c.params, peers_dir=self.peers_dir)
            return ([sys.executable, "-m", PACKAGE, "--worker", c.worker,
                     "--params", json.dumps(params)], REPO_ROOT)
        python = self.torch_python if c.interpreter == "torch" else self.jax_python
        return [python, c.script, *c.args], self.peers_dir

    def run_once(self, c: Contestant, rep: int) -> dict:
        cmd, cwd = self.command(c)
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=self.timeout)
            record = last_json_line(proc.stdout)
            if proc.returncode != 0 or record is None:
                record = {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
        except subprocess.TimeoutExpired:
            record = {"error": f"timed out after {self.timeout} s"}
        record.update(label=c.label, rep=rep, process_wall_s=round(time.perf_counter() - start, 2))
        value = record.get(c.metric)
        self.log(f"    {c.label:<28} rep {rep}: " + (f"{c.metric} = {value:.4g}" if isinstance(value, (int, float))
                                                      else record.get("error", "no value")[-300:]))
        return record


def run_alternating(ctx: Context, contestants: list, reps: int) -> tuple[dict, dict]:
    """Every available contestant `reps` times, one process at a time, interleaved (ABC, CBA,
    ABC, ...). Returns (runs: label -> records, skipped: label -> reason)."""
    skipped = {c.label: why for c in contestants if (why := ctx.available(c))}
    active = [c for c in contestants if c.label not in skipped]
    runs = {c.label: [] for c in active}
    for rep in range(reps):
        order = active if rep % 2 == 0 else active[::-1]
        for c in order:
            runs[c.label].append(ctx.run_once(c, rep))
    return runs, skipped


def median_of(records: list, metric: str) -> Optional[float]:
    values = [r[metric] for r in records if isinstance(r.get(metric), (int, float))]
    return float(statistics.median(values)) if values else None


def summarize_runs(contestants: list, runs: dict, skipped: dict) -> dict:
    rows = {}
    for c in contestants:
        if c.label in skipped:
            rows[c.label] = {"skipped": skipped[c.label], "describe": c.describe()}
            continue
        records = runs[c.label]
        rows[c.label] = {"describe": c.describe(), "metric": c.metric, "ours": c.ours,
                         "median": median_of(records, c.metric),
                         "runs": [r.get(c.metric) for r in records],
                         "compile_s": median_of(records, "compile_s"),
                         "warmup_s": median_of(records, "warmup_s"),
                         "errors": [r["error"] for r in records if "error" in r]}
        if c.note:
            rows[c.label]["note"] = c.note
    return rows


def gemm_contestant(ctx: Context) -> Contestant:
    return peer("gemm_limit_jax", "gemm_peak.py", "--backend", "jax", *(["--reps", "100"] if ctx.quick else []),
                metric="skeleton_steps_per_sec", note="the limit: 11 step GEMMs + SGD, jitted scan (same shapes)")


def gemm_rate(runs: dict) -> Optional[dict]:
    """Medians of this benchmark's gemm_peak.py --backend jax runs (the achieved fp32 GEMM rate)."""
    ok = [r for r in runs.get("gemm_limit_jax", []) if "skeleton_rate_exact_gflops" in r]
    if not ok:
        return None
    return {"skeleton_steps_per_sec": median_of(ok, "skeleton_steps_per_sec"),
            "skeleton_rate_exact_gflops": median_of(ok, "skeleton_rate_exact_gflops"),
            "gemm_rate_exact_gflops": median_of(ok, "gemm_rate_exact_gflops"), "runs": len(ok)}


def paired(runs: dict, label: str, metric: str, other: str, value: Callable[[dict], Optional[float]]) -> dict:
    """Per-repetition ratios runs[label][r][metric] / value(runs[other][r]): both measured in the
    same round of the alternation, so a change of machine load between rounds cancels. Returns
    {"per_rep", "median"}."""
    out = []
    for a, b in zip(runs.get(label, []), runs.get(other, [])):
        x, y = a.get(metric), value(b)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y > 0:
            out.append(x / y)
    return {"per_rep": out, "median": float(statistics.median(out)) if out else None}


def target(name: str, value: Optional[float], threshold: float, unit: str = "x") -> dict:
    return {"target": name, "value": value, "threshold": threshold, "unit": unit,
            "met": None if value is None else bool(value >= threshold)}


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def loglog_slope(xs, ys) -> Optional[float]:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x and y]
    if len(pts) < 2:
        return None
    lx, ly = np.array(pts).T
    return float(np.polyfit(lx, ly, 1)[0])
