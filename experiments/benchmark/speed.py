"""Speed benchmarks. Ratios are medians over repetitions of per-repetition ratios (ours and the
other contestant from the same round); the ratio of the medians is kept beside them."""
from __future__ import annotations

import statistics
from typing import Optional

from .harness import (Context, gemm_contestant, gemm_rate, loglog_slope, median_of, ours, paired, peer, ratio,
                      run_alternating, summarize_runs, target)
from .workers import (ANATOMY_STAGES, DECODER_FORWARD_FLOPS, LOCAL_LR, LOCAL_N, LOCAL_STEP_FLOPS, LOCAL_STEPS,
                      amortized_step_flops)


def bench_amortized_training(ctx: Context) -> dict:
    quick = ctx.quick
    mine = ours("vi_jax_make_epoch", "amortized", "steps_per_sec",
                **({"rows": 128 * 40, "epochs": 2} if quick else {"rows": 60000, "epochs": 3}))
    short = ["--warmup-steps", "10", "--timed-steps", "100"] if quick else []
    contestants = [
        mine,
        gemm_contestant(ctx),  # next to ours in every round: the fraction of the limit pairs them
        peer("torch_eager", "torch_vae.py", *short, metric="steps_per_sec", interpreter="torch",
             note="pytorch/examples: DataLoader, loss.item() per step"),
        peer("flax_loop_jit", "flax_loop_vae.py", *short, metric="steps_per_sec",
             note="flax example style: jitted train_step in a Python loop"),
        peer("numpyro_fori", "numpyro_vae.py", metric="steps_per_sec",
             note="numpyro examples/vae.py: epoch fused in lax.fori_loop"),
        peer("jax_scan_chunk468", "jax_scan_vae.py", "--chunk", "468",
             *(["--min-timed-steps", "468"] if quick else []), metric="steps_per_sec",
             note="hand-fused: one epoch per jitted lax.scan"),
    ]
    runs, skipped = run_alternating(ctx, contestants, ctx.reps)
    rows = summarize_runs(contestants, runs, skipped)
    ours_sps = rows[mine.label]["median"]
    pairs = {c.label: paired(runs, mine.label, mine.metric, c.label, lambda r, m=c.metric: r.get(m))
             for c in contestants[1:]}
    ratios = {label: p["median"] for label, p in pairs.items()}
    flops = amortized_step_flops()
    fraction = ratios.get("gemm_limit_jax")
    return {
        "unit": "steps/s (batch 128)", "rows": rows, "ratios_ours_over": ratios, "paired_ratios": pairs,
        "ratio_of_medians": {label: ratio(ours_sps, rows[label].get("median")) for label in pairs},
        "step_flops_exact": flops, "ours_gflops": ours_sps * flops / 1e9 if ours_sps else None,
        "gemm_rate": gemm_rate(runs), "fraction_of_skeleton_limit": fraction,
        "targets": [target(">= 90% of the skeleton limit", fraction, 0.90, "fraction"),
                    target(">= 1.10x NumPyro fused epoch", ratios.get("numpyro_fori"), 1.10),
                    target(">= 3.5x torch eager", ratios.get("torch_eager"), 3.5)],
    }


def bench_amortized_step_anatomy(ctx: Context) -> dict:
    """worker_amortized_anatomy in ctx.reps processes: medians over processes of each stage's
    in-process median rate and per-round fraction of the GEMM skeleton."""
    mine = ours("vi_jax_and_references", "amortized_anatomy", "vi_jax_over_by_hand",
                **({"steps": 20, "rounds": 2} if ctx.quick else {}))
    runs, skipped = run_alternating(ctx, [mine], ctx.reps)
    rows = summarize_runs([mine], runs, skipped)
    records = [r for r in runs.get(mine.label, []) if "error" not in r]
    if not records:
        return {"rows": rows, "error": "no successful run"}

    def median_stage(key: str) -> dict:
        return {stage: float(statistics.median(r[key][stage] for r in records)) for stage in ANATOMY_STAGES}

    return {"unit": "vi_jax ÷ the same step written out by hand (model_adam_shuffled), per round", "rows": rows,
            "stages": list(ANATOMY_STAGES), "steps_per_sec": median_stage("steps_per_sec"),
            "fraction_of_gemms_sgd": median_stage("fraction_of_gemms_sgd"),
            "vi_jax_over_by_hand": median_of(records, "vi_jax_over_by_hand"),
            "steps": records[0]["steps"], "rounds": records[0]["rounds"],
            "explanation": "in one process, alternating scans: the 11 GEMMs + SGD (the skeleton limit), + Adam, "
                           "+ the model's elementwise work and one N(0, I) draw per step, + shuffled batches, "
                           "and the project's make_epoch; each stage runs the same GEMMs (worker_amortized_anatomy)"}


def _limit_dps(record: dict, flops_per_datapoint: float) -> Optional[float]:
    rate = record.get("skeleton_rate_exact_gflops")
    return rate * 1e9 / flops_per_datapoint if isinstance(rate, (int, float)) else None


def bench_local_fit(ctx: Context) -> dict:
    n, steps = (200, 100) if ctx.quick else (LOCAL_N, LOCAL_STEPS)
    mine = ours("vi_jax_make_local_fit", "local_fit", "datapoints_per_sec", n=n, steps=steps, lr=LOCAL_LR)
    size = ["--n", str(n), "--steps", str(steps)]
    contestants = [
        mine,
        gemm_contestant(ctx),
        ours("vi_jax_one_block", "local_fit", "datapoints_per_sec", n=n, steps=steps, lr=LOCAL_LR, block_rows=n),
        peer("torch_minibatch100", "nonamortized_torch.py", *size, "--batch", "100",
             metric="datapoints_per_sec", interpreter="torch",
             note="Cremer-style loop: 100 datapoints at a time, eager torch Adam"),
        peer("jax_vmap_scan", "nonamortized_jax.py", *size, metric="datapoints_per_sec",
             note="all N vmapped in one jitted lax.scan"),
    ]
    runs, skipped = run_alternating(ctx, contestants, ctx.reps)
    rows = summarize_runs(contestants, runs, skipped)
    ours_dps = rows[mine.label]["median"]
    rate = gemm_rate(runs)
    per_datapoint = steps * LOCAL_STEP_FLOPS
    fraction = paired(runs, mine.label, mine.metric, "gemm_limit_jax", lambda r: _limit_dps(r, per_datapoint))
    pairs = {c.label: paired(runs, mine.label, mine.metric, c.label, lambda r, m=c.metric: r.get(m))
             for c in contestants[2:]}
    ratios = {label: p["median"] for label, p in pairs.items()}
    return {
        "unit": f"datapoints/s (N = {n}, {steps} Adam steps, 1 sample)", "rows": rows,
        "ratios_ours_over": ratios, "paired_ratios": {**pairs, "gemm_limit": fraction},
        "flops_per_datapoint_step": LOCAL_STEP_FLOPS,
        "ours_gflops": ours_dps * per_datapoint / 1e9 if ours_dps else None, "gemm_rate": rate,
        "limit_datapoints_per_sec": rate["skeleton_rate_exact_gflops"] * 1e9 / per_datapoint if rate else None,
        "fraction_of_gemm_limit": fraction["median"],
        "targets": [target(">= 85% of the GEMM-rate limit", fraction["median"], 0.85, "fraction"),
                    target(">= 2.5x torch minibatch-100 loop", ratios.get("torch_minibatch100"), 2.5)],
    }


def bench_local_fit_early_stop(ctx: Context) -> dict:
    """The default convergence rule on the same problem; one process per repetition."""
    if ctx.quick:
        n, overrides = 100, {"check_every": 20, "patience": 3, "max_steps": 400, "block_rows": 32}
    else:
        n, overrides = 500, {}
    mine = ours("vi_jax_default_rule", "local_fit_early_stop", "datapoints_per_sec", n=n, config=overrides)
    one_block = ours("vi_jax_one_block", "local_fit_early_stop", "datapoints_per_sec", n=n,
                     config={**overrides, "block_rows": n})
    runs, skipped = run_alternating(ctx, [mine, one_block], ctx.reps)
    records = [r for r in runs[mine.label] if "error" not in r]
    rows = summarize_runs([mine, one_block], runs, skipped)
    if not records:
        return {"rows": rows, "error": "no successful run"}
    med = {k: median_of(records, k) for k in ("seconds", "loop_steps", "row_steps_mean", "row_steps_median",
                                              "effective_speedup_vs_cap", "row_step_utilisation",
                                              "seconds_per_step", "converged")}
    skipping = paired(runs, mine.label, mine.metric, one_block.label, lambda r: r.get(one_block.metric))
    return {"unit": f"datapoints/s (N = {n}, lr 1e-3, default convergence rule)", "rows": rows,
            "config": records[0]["config"], "step_cap": records[0]["step_cap"], **med,
            "block_rows": records[0]["block_rows"],
            "one_block_row_step_utilisation": median_of(runs.get(one_block.label, []), "row_step_utilisation"),
            "speedup_from_skipping_converged_rows": skipping["median"], "paired_ratios": {one_block.label: skipping},
            "ratios_ours_over": {one_block.label: skipping["median"]},
            "explanation": "effective_speedup_vs_cap = step cap / steps the loop ran; row_step_utilisation = "
                           "row-steps the rows needed / row-steps computed (at each check, the active rows "
                           "rounded up to whole blocks; converged rows leave the blocks); "
                           "speedup_from_skipping_converged_rows = ours / the same fit in one block of all "
                           "rows (every row computed until the last one converges), per round"}


def bench_iwae(ctx: Context) -> dict:
    from vi_jax.elbo import IWAE_CHUNK_SIZE  # the chunk the worker's make_iwae uses

    n, k = (100, 500) if ctx.quick else (1000, 5000)
    mine = ours("vi_jax_make_iwae", "iwae", "datapoints_per_sec", n=n, k=k)
    contestants = [mine, gemm_contestant(ctx)]
    runs, skipped = run_alternating(ctx, contestants, ctx.reps)
    rows = summarize_runs(contestants, runs, skipped)
    dps = rows[mine.label].get("median")
    rate = gemm_rate(runs)
    flops = k * DECODER_FORWARD_FLOPS
    fraction = paired(runs, mine.label, mine.metric, "gemm_limit_jax", lambda r: _limit_dps(r, flops))
    records = [r for r in runs[mine.label] if "max_rss_mb" in r]
    return {"unit": f"datapoints/s (K = {k}, {n} datapoints, chunk {IWAE_CHUNK_SIZE}, 100 rows at a time)", "rows": rows,
            "flops_per_datapoint": flops, "ours_gflops": dps * flops / 1e9 if dps else None,
            "gemm_rate": rate, "paired_ratios": {"gemm_limit": fraction},
            "limit_datapoints_per_sec": rate["skeleton_rate_exact_gflops"] * 1e9 / flops if rate else None,
            "fraction_of_flop_limit": fraction["median"], "max_rss_mb": median_of(records, "max_rss_mb"),
            "targets": [target(">= 75% of the decoder-forward FLOP limit", fraction["median"], 0.75, "fraction")],
            "memory_note": "peak memory against K: see scaling_iwae"}


def bench_scaling_local_fit(ctx: Context) -> dict:
    ns, steps = ([100, 300, 1000], 20) if ctx.quick else ([1000, 3000, 10000, 30000, 100000], 100)
    contestants = [ours(f"n={n}", "local_fit", "seconds", n=n, steps=steps, lr=LOCAL_LR) for n in ns]
    runs, skipped = run_alternating(ctx, contestants, ctx.scaling_reps)
    rows = summarize_runs(contestants, runs, skipped)
    secs = [rows[c.label]["median"] for c in contestants]
    return {"unit": f"seconds for {steps} Adam steps on N rows", "rows": rows, "n": ns, "seconds": secs,
            "loglog_slope": loglog_slope(ns, secs), "expected_slope": 1.0,
            "max_rss_mb": [median_of(runs.get(c.label, []), "max_rss_mb") for c in contestants]}


def bench_scaling_iwae(ctx: Context) -> dict:
    n, ks = (50, [100, 300, 1000]) if ctx.quick else (1000, [100, 300, 1000, 3000, 10000])
    contestants = [ours(f"k={k}", "iwae", "seconds", n=n, k=k) for k in ks]
    runs, skipped = run_alternating(ctx, contestants, ctx.scaling_reps)
    rows = summarize_runs(contestants, runs, skipped)
    secs = [rows[c.label]["median"] for c in contestants]
    rss = [median_of(runs.get(c.label, []), "max_rss_mb") for c in contestants]
    known = [r for r in rss if r]
    growth = (max(known) - min(known)) / min(known) if len(known) > 1 else None
    return {"unit": f"seconds for IWAE_K on {n} datapoints", "rows": rows, "k": ks, "seconds": secs,
            "loglog_slope": loglog_slope(ks[1:], secs[1:]), "loglog_slope_all": loglog_slope(ks, secs),
            "expected_slope": 1.0, "max_rss_mb": rss, "rss_growth_fraction": growth,
            "targets": [target("peak RSS flat in K (growth <= 10% from smallest to largest K)",
                               None if growth is None else 1.0 - growth, 0.90, "1 - growth")]}
