"""Machine description and the Markdown of a suite run and of a --check."""
from __future__ import annotations

import os
import platform

from .check import flatten_figures


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = f.readline().split()[1]
            mem = round(int(mem) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    from vi_jax.provenance import usable_cores  # the local fit's block layout depends on it

    return {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "memory_gib": mem,
            "platform": platform.platform(), "load_average": list(os.getloadavg())}


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _speed_table(name: str, b: dict) -> list:
    lines = [f"### {name}", "", f"unit: {b.get('unit', '')}"]
    if b.get("load_before"):
        lines.append(f"; load average (1 min) before / after: {b['load_before'][0]:.2f} / {b['load_after'][0]:.2f}")
    if b.get("from_run"):
        lines.append(f"; measured in the follow-up run `{b['from_run']['command']}` ({b['from_run']['created']})")
    lines += ["", "| contestant | median | runs | compile s | ours ÷ this (median of per-round ratios) | what |",
             "| --- | ---: | --- | ---: | ---: | --- |"]
    ratios = b.get("ratios_ours_over", {})
    for label, r in b.get("rows", {}).items():
        if "skipped" in r:
            lines.append(f"| {label} | skipped | | | | {r['skipped']} |")
            continue
        runs = ", ".join(_fmt(v, 3) for v in r["runs"])
        err = f" ({len(r['errors'])} failed: {r['errors'][0][-160:]!r})" if r["errors"] else ""
        lines.append(f"| {'**' + label + '**' if r['ours'] else label} | {_fmt(r['median'])} | {runs} | "
                     f"{_fmt(r.get('compile_s'), 3)} | {_fmt(ratios.get(label), 3)} | "
                     f"{r.get('note', r['describe'])}{err} |")
    extra = [(k, b.get(k)) for k in ("fraction_of_skeleton_limit", "fraction_of_gemm_limit",
                                     "fraction_of_flop_limit", "ours_gflops", "limit_datapoints_per_sec",
                                     "max_rss_mb", "loglog_slope", "loglog_slope_all", "rss_growth_fraction",
                                     "loop_steps", "step_cap", "row_steps_mean", "effective_speedup_vs_cap",
                                     "row_step_utilisation", "one_block_row_step_utilisation",
                                     "speedup_from_skipping_converged_rows", "converged") if b.get(k) is not None]
    if b.get("gemm_rate"):
        extra.append(("GEMM rate (skeleton, GFLOP/s)", b["gemm_rate"]["skeleton_rate_exact_gflops"]))
    if extra:
        lines += [""] + [f"- {k}: {_fmt(v) if not isinstance(v, list) else ', '.join(_fmt(x, 3) for x in v)}"
                         for k, v in extra]
    if b.get("paired_ratios"):
        lines += ["- per-round ratios (ours ÷ this, same round of the alternation): " + "; ".join(
            f"{label} {', '.join(_fmt(x, 3) for x in p['per_rep'])}" for label, p in b["paired_ratios"].items())]
    if "stages" in b:
        lines += ["", "| stage | steps/s | fraction of gemms_sgd |", "| --- | ---: | ---: |"]
        lines += [f"| {stage} | {_fmt(b['steps_per_sec'][stage], 4)} | {_fmt(b['fraction_of_gemms_sgd'][stage], 3)} |"
                  for stage in b["stages"]]
    if "n" in b and "seconds" in b and isinstance(b["seconds"], list):
        lines += ["", "| N | seconds | max RSS MB |", "| ---: | ---: | ---: |"]
        lines += [f"| {n} | {_fmt(s, 3)} | {_fmt(m, 4)} |" for n, s, m in zip(b["n"], b["seconds"], b["max_rss_mb"])]
    if "k" in b and isinstance(b.get("seconds"), list):
        lines += ["", "| K | seconds | max RSS MB |", "| ---: | ---: | ---: |"]
        lines += [f"| {k} | {_fmt(s, 3)} | {_fmt(m, 4)} |" for k, s, m in zip(b["k"], b["seconds"], b["max_rss_mb"])]
    return lines + [""]


def _result_table(name: str, b: dict) -> list:
    lines = [f"### {name}", "", f"`{b.get('command', '')}`: wall {b.get('wall_s')} s, seed {b.get('seed')}", ""]
    figures = flatten_figures(b.get("result", {}))
    shown = [(p, m, s) for p, (m, s) in figures.items() if s is not None]
    lines += ["| figure | mean | stderr |", "| --- | ---: | ---: |"]
    lines += [f"| {p} | {m:.3f} | {_fmt(s, 3)} |" for p, m, s in shown]
    return lines + [""]


def markdown(report: dict) -> str:
    m = report["machine"]
    env = report["environment"]
    lines = ["# vi_jax benchmarks", "",
             f"{report['created']}; {'QUICK run; ' if report['quick'] else ''}{report['reps']} repetitions "
             f"(fresh process each, alternating), medians.",
             f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, {m['memory_gib']} GiB; backend "
             f"{env['backend']} ({', '.join(env['devices'])}); jax {env['versions']['jax']}.",
             f"Load average (1/5/15 min) before: {', '.join(f'{x:.2f}' for x in report['load_before'])}; "
             f"after: {', '.join(f'{x:.2f}' for x in report['load_after'])}.",
             f"Command: `{report['command']}`", ""]
    targets = [(name, t) for name, b in report["benchmarks"].items() for t in b.get("targets", [])]
    if targets:
        lines += ["## Targets", "", "| benchmark | target | value | met |", "| --- | --- | ---: | --- |"]
        lines += [f"| {name} | {t['target']} | {_fmt(t['value'], 3)} | "
                  f"{'n/a' if t['met'] is None else ('yes' if t['met'] else '**no**')} |" for name, t in targets]
        lines.append("")
    speed = [(n, b) for n, b in report["benchmarks"].items() if b.get("kind") == "speed"]
    if speed:
        lines += [f"## Speed ({env['backend']}; ratios are what carry over between machines)", ""]
        for name, b in speed:
            lines += _speed_table(name, b) if "rows" in b else [f"### {name}", "", f"{b.get('error')}", ""]
    results = [(n, b) for n, b in report["benchmarks"].items() if b.get("kind") == "result"]
    if results:
        lines += ["## Results", ""]
        for name, b in results:
            if "result" in b:
                lines += _result_table(name, b)
            else:
                lines += [f"### {name}", "", str(b.get("skipped") or b.get("error", ""))[-1000:], ""]
    return "\n".join(lines)


def check_markdown(report: dict) -> str:
    lines = ["# Benchmark check", "", f"ok: {report['ok']}", ""]
    for name, r in report["benchmarks"].items():
        lines.append(f"## {name}: {r['mode']}")
        if r.get("differs"):
            lines.append(f"conditions that differ from the reference: {', '.join(r['differs'])}")
        if "counts" in r:
            lines.append("figures: " + ", ".join(f"{k} {v}" for k, v in r["counts"].items()))
            shown = [row for row in r["rows"] if row["status"] in ("moved", "missing")]
            if shown:
                lines += ["", "| figure | status | reference | current | difference | tolerance |",
                          "| --- | --- | ---: | ---: | ---: | ---: |"]
                for row in shown:
                    lines.append("| {path} | {status} | {ref} | {cur} | {diff} | {tol} |".format(
                        path=row["path"], status=row["status"], ref=_fmt(row.get("reference")),
                        cur=_fmt(row.get("current")), diff=_fmt(row.get("difference")),
                        tol=_fmt(row.get("tolerance"))))
        if r.get("error"):
            lines.append(f"error: {str(r['error'])[-500:]}")
        lines.append("")
    return "\n".join(lines)
