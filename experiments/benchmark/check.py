"""--check: which figures of the result benchmarks moved (pure functions)."""
from __future__ import annotations

import math
from typing import Any


SKIP_KEYS = frozenset({"environment", "config", "vae_config", "wall_seconds", "train_seconds", "seconds",
                       "experiment_wall_seconds", "wall_s"})


def flatten_figures(obj: Any, prefix: str = "") -> dict:
    """{path: (value, stderr)} for every Monte-Carlo figure of a result, {"mean", "stderr"} (the
    experiments' tables) or {"estimate", "stderr", ...} (the oracle table, whose "exact" value
    is kept as its own number at path/exact and whose "difference" and "z" follow from the
    others), and {path: (value, None)} for every other number (counts such as n_eval or
    converged rows). Timing and provenance keys (SKIP_KEYS) are left out. Paths join keys with
    "/" and list items as [i]."""
    out = {}
    if isinstance(obj, dict):
        value_key = next((k for k in ("mean", "estimate") if isinstance(obj.get(k), (int, float))), None)
        if value_key is not None and "stderr" in obj:
            stderr = obj["stderr"]
            out[prefix] = (float(obj[value_key]), float(stderr) if isinstance(stderr, (int, float)) else None)
            if isinstance(obj.get("exact"), (int, float)):
                out[f"{prefix}/exact"] = (float(obj["exact"]), None)
            return out
        for key, value in obj.items():
            if key in SKIP_KEYS:
                continue
            out.update(flatten_figures(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            out.update(flatten_figures(value, f"{prefix}[{i}]"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix] = (float(obj), None)
    return out


CONDITION_KEYS = ("backend", "devices", "cpu_model", "usable_cores", "jax", "jaxlib", "seed", "config")


def run_conditions(bench: dict) -> dict:
    """What must match for a rerun to reproduce a result bit for bit."""
    env = bench.get("environment") or {}
    versions = env.get("versions") or {}
    return {"backend": env.get("backend"), "devices": env.get("devices"), "cpu_model": bench.get("cpu_model"),
            "usable_cores": env.get("usable_cores"), "jax": versions.get("jax"), "jaxlib": versions.get("jaxlib"),
            "seed": bench.get("seed"), "config": bench.get("config")}


def compare_figures(reference: dict, current: dict, *, identical: bool, sigmas: float = 2.0) -> list:
    """One row per figure path in either result: status "unchanged", "moved", "missing" (in the
    reference, not in the current run) or "new".

    identical=True (same backend, device, CPU, usable cores, jax/jaxlib, seed and config): any difference in
    a mean, a standard error or a count is a move. identical=False: a figure moved when
    |mean_cur - mean_ref| > sigmas * sqrt(se_ref^2 + se_cur^2); counts and figures without a
    finite standard error are not compared statistically (status "unchecked").
    """
    ref, cur = flatten_figures(reference), flatten_figures(current)
    rows = []
    for path in sorted(set(ref) | set(cur)):
        if path not in cur:
            rows.append({"path": path, "status": "missing", "reference": ref[path][0]})
            continue
        if path not in ref:
            rows.append({"path": path, "status": "new", "current": cur[path][0]})
            continue
        (a, se_a), (b, se_b) = ref[path], cur[path]
        row = {"path": path, "reference": a, "current": b, "difference": b - a}
        if identical:
            row["status"] = "unchanged" if (a == b and se_a == se_b) else "moved"
        elif se_a is None or se_b is None or not (math.isfinite(se_a) and math.isfinite(se_b)):
            row["status"] = "unchecked"
        else:
            tolerance = sigmas * math.sqrt(se_a ** 2 + se_b ** 2)
            row["tolerance"] = tolerance
            row["status"] = "unchanged" if abs(b - a) <= tolerance else "moved"
        rows.append(row)
    return rows


def compare_benchmarks(reference: dict, current: dict, *, sigmas: float = 2.0) -> dict:
    """Compare every result benchmark of two benchmark.json "benchmarks" maps.

    Returns {"ok", "benchmarks": {name: {"mode", "differs", "moved", "missing", "rows"}}}; a
    benchmark absent from the current run is reported as "not run" (not a failure), one that
    failed now but not in the reference is a failure; ok is False if any figure moved or went
    missing.
    """
    report, ok = {}, True
    for name, ref in sorted(reference.items()):
        if ref.get("kind") != "result" or "result" not in ref:
            continue
        cur = current.get(name)
        if cur is None:
            report[name] = {"mode": "not run"}
            continue
        if "result" not in cur:
            report[name] = {"mode": "failed", "error": cur.get("error") or cur.get("skipped")}
            ok = False
            continue
        rc, cc = run_conditions(ref), run_conditions(cur)
        differs = [k for k in CONDITION_KEYS if rc[k] != cc[k]]
        rows = compare_figures(ref["result"], cur["result"], identical=not differs, sigmas=sigmas)
        moved = [r["path"] for r in rows if r["status"] == "moved"]
        missing = [r["path"] for r in rows if r["status"] == "missing"]
        ok = ok and not moved and not missing
        report[name] = {"mode": "identical" if not differs else f"within {sigmas:g} combined standard errors",
                        "differs": differs, "moved": moved, "missing": missing,
                        "counts": {s: sum(r["status"] == s for r in rows)
                                   for s in ("unchanged", "moved", "missing", "new", "unchecked")},
                        "rows": rows}
    return {"ok": ok, "sigmas": sigmas, "benchmarks": report}
