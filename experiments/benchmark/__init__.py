"""Reproducible, seeded benchmark suite: result benchmarks (the experiments' tables, checkable
against a reference run) and speed benchmarks (the project's own code paths measured side by
side with the peer reference scripts, reported as ratios).

    python -m experiments.benchmark                         # everything -> runs/benchmark/
    python -m experiments.benchmark --quick                 # small sizes, 1 repetition (a smoke run)
    python -m experiments.benchmark --only amortized_training,local_fit
    python -m experiments.benchmark --check runs/benchmark/benchmark.json   # rerun the result
                                                            # benchmarks and list every figure that moved
    python -m experiments.benchmark --no-peers --check experiments/benchmark/references/quick.json
                                                            # against the committed reference (see BENCHMARKS.md)
    python -m experiments.benchmark --list

Peers: the scripts in --peers-dir (default ../shared/peers beside the repository) run as
separate processes with --jax-python / $PEERS_JAX_PYTHON (default: this interpreter; needs
numpyro for the NumPyro peer) and --torch-python / $PEERS_TORCH_PYTHON (default
.venv-torch/bin/python in the repository, if present). Missing peers are skipped with a note;
our own rows always run.

Speed benchmarks run every contestant (ours included) in a fresh process per repetition,
alternating between contestants (the order is reversed on every other repetition), and report
medians; compile time is excluded from the rates and reported separately. Our side always goes
through the project's real code path:

  amortized_training  build_vae(VAEConfig(latent_dim=20, encoder_hidden=(400,), decoder_hidden=(400,),
                      batch_size=128)) on the peers' synthetic binary data; whole epochs of
                      make_epoch(vae.algorithm.step, 128). Limit: gemm_peak.py's skeleton step.
  amortized_step_anatomy  in one process, alternating: gemm_peak.py's skeleton rewritten here
                      (11 GEMMs + SGD), the same with Adam, the whole model written out by hand
                      (contiguous, then shuffled batches) and make_epoch: what each part of the
                      step costs beyond the GEMMs, and ours against the hand-written step.
  local_fit           make_local_fit (diagonal Gaussian, Adam lr 1e-2, 1 sample) on N = 2000 rows,
                      a LocalFitConfig that runs exactly 500 steps, a fixed random decoder 20-400-784.
  local_fit_early_stop the default convergence rule (LocalFitConfig()) on the same problem: the
                      effective speed-up of stopping when every row has converged, and of
                      skipping converged rows (against the same fit in one block of all rows).
  iwae                make_iwae(K = 5000, its default chunk) through map_datapoints (100 rows at a time), 1000 rows.
  scaling_local_fit   local-fit time against N (1e3 ... 1e5, 100 steps), log-log slope.
  scaling_iwae        IWAE time and peak RSS against K (1e2 ... 1e4), log-log slope.

Result benchmarks run `python -m experiments.<name> --workdir WORKDIR/results/<name>` (with
--quick under --quick; estimator_variance with --vae) and keep its JSON. See BENCHMARKS.md for
the `--check` rule and for the references in references/ (quick.json: every result benchmark's
--quick run; default.json: the default runs that take under about 2 minutes on one core).
"""

# The package, one module per part:
#   workers.py  our code paths, one measurement per fresh process (`--worker NAME --params JSON`)
#   harness.py  contestants run as separate processes, alternating; medians and per-round ratios
#   speed.py    the speed benchmarks
#   results.py  the result benchmarks: the experiments run as subprocesses
#   check.py    --check: which figures of the result benchmarks moved (pure functions)
#   report.py   the machine's description and the Markdown of a run and of a check
#   suite.py    the registry, the suite run and main (`python -m` runs it through __main__.py)
