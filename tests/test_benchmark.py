"""The benchmark suite: its registry, the --check comparison (pure functions, synthetic inputs),
the committed references and the experiment docstrings that name them (read, never rerun), and
one --quick speed benchmark of our own code path (no peers, no timing assertions)."""
import ast
import glob
import json
import os
import re

import pytest

from experiments.benchmark import check, harness, results, suite, workers
from experiments.benchmark.report import check_markdown

REFERENCES = os.path.join(os.path.dirname(suite.__file__), "references")
EXPERIMENTS_DIR = os.path.dirname(os.path.dirname(suite.__file__))
ENV = {"backend": "cpu", "devices": ["cpu:cpu"], "versions": {"jax": "0.10.2", "jaxlib": "0.10.2"}}


def result_bench(figures, *, seed=0, env=ENV, config=None, cpu="AMD EPYC"):
    return {"kind": "result", "seed": seed, "config": config or {"n_eval": 300}, "environment": env,
            "cpu_model": cpu, "result": figures}


def figures(log_px=-30.0, gap=2.0, gap_se=0.1, n_eval=300):
    return {"splits": {"train": {"n_eval": n_eval, "log_px": {"mean": log_px, "stderr": 0.5},
                                 "inference_gap": {"mean": gap, "stderr": gap_se},
                                 "semi_amortized": {"k": [0, 1], "elbo": [{"mean": -33.0, "stderr": 0.4},
                                                                          {"mean": -32.5, "stderr": 0.4}]}}},
            "wall_seconds": {"total": 123.0}}


def test_registry_has_the_named_benchmarks():
    result_names = {"gap", "oracle_gap", "compare_training", "local_fit_accuracy", "train_vae", "cvae", "vqvae",
                    "mixture_vi", "gap_over_training", "marginal_likelihood", "estimator_variance"}
    speed = {"amortized_training", "local_fit", "local_fit_early_stop", "iwae", "scaling_local_fit",
             "scaling_iwae"}
    assert result_names | speed <= set(suite.REGISTRY)
    for name in result_names:
        assert suite.REGISTRY[name].kind == "result"
    for name in speed:
        assert suite.REGISTRY[name].kind == "speed"
    assert [b.name for b in suite.select("iwae,gap")] == ["iwae", "gap"]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        suite.select("no_such_benchmark")


def test_oracle_benchmark_skips_clearly_when_the_module_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(results, "oracle_available", lambda: False)
    out = results.bench_oracle_gap(harness.Context(workdir=str(tmp_path)))
    assert "not available" in out["skipped"]


def test_flatten_figures_skips_timings_and_provenance():
    flat = check.flatten_figures(figures())
    assert flat["splits/train/log_px"] == (-30.0, 0.5)
    assert flat["splits/train/semi_amortized/elbo[1]"] == (-32.5, 0.4)
    assert flat["splits/train/n_eval"] == (300.0, None)
    assert not any(path.startswith("wall_seconds") for path in flat)
    oracle = {"models": {"m": {"rows": {"log_px": {"exact": -22.9, "estimate": -22.91, "difference": -0.01,
                                                   "stderr": 0.005, "z": -2.0}}}}}
    assert check.flatten_figures(oracle) == {"models/m/rows/log_px": (-22.91, 0.005),
                                                 "models/m/rows/log_px/exact": (-22.9, None)}


def test_check_identical_conditions_require_bit_equality():
    ref = {"gap": result_bench(figures())}
    same = check.compare_benchmarks(ref, {"gap": result_bench(figures())})
    assert same["ok"] and same["benchmarks"]["gap"]["mode"] == "identical"
    assert same["benchmarks"]["gap"]["counts"]["unchanged"] == len(check.flatten_figures(figures()))
    # a change far inside the standard error still counts as a move when backend and seed match
    tiny = check.compare_benchmarks(ref, {"gap": result_bench(figures(log_px=-30.0 + 1e-6))})
    assert not tiny["ok"]
    assert tiny["benchmarks"]["gap"]["moved"] == ["splits/train/log_px"]
    # so does a changed count
    count = check.compare_benchmarks(ref, {"gap": result_bench(figures(n_eval=299))})
    assert count["benchmarks"]["gap"]["moved"] == ["splits/train/n_eval"]


def test_check_different_backend_uses_combined_standard_errors():
    ref = {"gap": result_bench(figures())}
    gpu = dict(ENV, backend="gpu", devices=["gpu:H100"])
    # 2 combined standard errors of the gap: 2 * sqrt(0.1^2 + 0.1^2) = 0.283
    within = check.compare_benchmarks(ref, {"gap": result_bench(figures(gap=2.25), env=gpu)})
    report = within["benchmarks"]["gap"]
    assert within["ok"] and report["differs"] == ["backend", "devices"]
    assert report["counts"]["unchecked"] == 3  # n_eval and the two k: counts have no standard error
    moved = check.compare_benchmarks(ref, {"gap": result_bench(figures(gap=2.35), env=gpu)})
    assert not moved["ok"] and moved["benchmarks"]["gap"]["moved"] == ["splits/train/inference_gap"]
    row = next(r for r in moved["benchmarks"]["gap"]["rows"] if r["path"] == "splits/train/inference_gap")
    assert row["tolerance"] == pytest.approx(2 * 2 ** 0.5 * 0.1)
    # a wider tolerance accepts it; a different seed alone also switches to the statistical rule
    assert check.compare_benchmarks(ref, {"gap": result_bench(figures(gap=2.35), env=gpu)}, sigmas=3)["ok"]
    seed = check.compare_benchmarks(ref, {"gap": result_bench(figures(gap=2.25), seed=1)})
    assert seed["ok"] and seed["benchmarks"]["gap"]["differs"] == ["seed"]
    # so does another number of usable cores (the local fit's blocks depend on it)
    cores = check.compare_benchmarks(ref, {"gap": result_bench(figures(gap=2.25), env=dict(ENV, usable_cores=8))})
    assert cores["ok"] and cores["benchmarks"]["gap"]["differs"] == ["usable_cores"]


def test_check_missing_and_new_figures_and_benchmarks():
    ref = {"gap": result_bench(figures()), "compare_training": result_bench(figures()),
           "iwae": {"kind": "speed", "rows": {}}}
    cur_fig = figures()
    del cur_fig["splits"]["train"]["inference_gap"]
    cur_fig["splits"]["train"]["extra"] = {"mean": 1.0, "stderr": 0.1}
    report = check.compare_benchmarks(ref, {"gap": result_bench(cur_fig)})
    assert not report["ok"]
    gap = report["benchmarks"]["gap"]
    assert gap["missing"] == ["splits/train/inference_gap"] and gap["counts"]["new"] == 1
    assert report["benchmarks"]["compare_training"]["mode"] == "not run"  # absent now: reported, not failed
    assert "iwae" not in report["benchmarks"]  # speed benchmarks are not checked
    failed = check.compare_benchmarks({"gap": result_bench(figures())}, {"gap": {"kind": "result",
                                                                                    "error": "boom"}})
    assert not failed["ok"] and failed["benchmarks"]["gap"]["mode"] == "failed"
    assert "missing" in check_markdown(report)


def test_loglog_slope():
    assert harness.loglog_slope([1e2, 1e3, 1e4], [0.1, 1.0, 10.0]) == pytest.approx(1.0)
    assert harness.loglog_slope([1e2], [0.1]) is None


def test_quick_speed_benchmark_of_our_code_path(tmp_path):
    """The amortized-training benchmark end to end (fresh worker process, the project's
    make_epoch), at tiny size and without peers; only the structure of the output is checked."""
    workdir = tmp_path / "bench"
    code = suite.main(["--quick", "--no-peers", "--only", "amortized_training", "--workdir", str(workdir),
                           "--quiet"])
    assert code == 0
    with open(workdir / "benchmark.json") as f:
        report = json.load(f)
    bench = report["benchmarks"]["amortized_training"]
    ours = bench["rows"]["vi_jax_make_epoch"]
    assert ours["errors"] == [] and len(ours["runs"]) == 1 and ours["median"] > 0
    assert ours["compile_s"] is not None
    assert bench["rows"]["torch_eager"]["skipped"].startswith("peers directory")
    assert {t["target"] for t in bench["targets"]} >= {">= 3.5x torch eager"}
    assert report["environment"]["backend"] and report["machine"]["cpu_count"]
    assert os.path.exists(workdir / "benchmark.md")


def test_amortized_anatomy_worker_runs_every_stage():
    """The anatomy worker at tiny size, in-process: every stage measured, fractions against the
    GEMM skeleton from the same rounds (structure only; no timing assertions)."""
    record = workers.worker_amortized_anatomy({"steps": 4, "rounds": 2, "peers_dir": None})
    assert set(record["steps_per_sec"]) == set(workers.ANATOMY_STAGES)
    assert all(rate > 0 for rate in record["steps_per_sec"].values())
    assert record["fraction_of_gemms_sgd"]["gemms_sgd"] == 1.0
    assert record["vi_jax_over_by_hand"] > 0 and record["rounds"] == 2


def load_reference(name):
    with open(os.path.join(REFERENCES, name)) as f:
        return json.load(f)


def test_committed_references_are_checkable_and_identical_to_themselves():
    """Every reference under experiments/benchmark/references/ names only registered result
    benchmarks, each with its result and the conditions --check compares, and --check of it
    against itself is identical in every figure; quick.json covers every result benchmark."""
    paths = sorted(glob.glob(os.path.join(REFERENCES, "*.json")))
    assert {os.path.basename(p) for p in paths} >= {"quick.json", "default.json"}
    result_names = {b.name for b in suite.REGISTRY.values() if b.kind == "result"}
    for path in paths:
        reference = load_reference(os.path.basename(path))
        benches = reference["benchmarks"]
        assert benches and set(benches) <= result_names, path
        for name, bench in benches.items():
            assert bench["kind"] == "result" and "result" in bench, f"{path}: {name} has no result"
            assert bench["seed"] is not None and bench["config"] and bench["environment"]["backend"], (path, name)
        report = check.compare_benchmarks(benches, benches)
        assert report["ok"] and set(report["benchmarks"]) == set(benches), path
        for name, r in report["benchmarks"].items():
            assert r["mode"] == "identical" and r["counts"]["unchanged"] > 0, (path, name)
            assert r["counts"]["unchanged"] == len(r["rows"]), (path, name)
    assert load_reference("quick.json")["quick"] is True and set(load_reference("quick.json")["benchmarks"]) == result_names
    assert load_reference("default.json")["quick"] is False


def test_experiment_docstrings_name_a_reference_that_holds_their_benchmark():
    """No experiment docstring quotes expected figures by hand: an "Expected figures:" line names
    a committed reference and the --check command of the experiment's own benchmark, which that
    reference holds."""
    named = {}
    for path in sorted(glob.glob(os.path.join(EXPERIMENTS_DIR, "*.py"))):
        doc = ast.get_docstring(ast.parse(open(path).read())) or ""
        assert not re.search(r"^Expected with", doc, re.M), f"{path}: hand-quoted expected figures"
        match = re.search(r"Expected figures: (experiments/benchmark/references/(\w+\.json))( \([^)]*\))?; check "
                          r"a fresh run against them with python -m experiments\.benchmark --only (\w+) --no-peers "
                          r"--check \1(?!\S)", " ".join(doc.split()))
        if match:
            module = os.path.basename(path)[:-3]
            assert match.group(4) == module, path
            assert module in load_reference(match.group(2))["benchmarks"], path
            named[module] = match.group(2)
    assert set(named) >= {"gap", "oracle_gap", "train_vae", "cvae", "vqvae", "mixture_vi", "gap_over_training",
                          "local_fit_accuracy", "marginal_likelihood", "estimator_variance"}
