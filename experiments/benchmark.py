"""Reproducible, seeded benchmark suite: result benchmarks (the experiments' tables, checkable
against a reference run) and speed benchmarks (the project's own code paths measured side by
side with the peer reference scripts, reported as ratios).

    python -m experiments.benchmark                         # everything -> runs/benchmark/
    python -m experiments.benchmark --quick                 # small sizes, 1 repetition (a smoke run)
    python -m experiments.benchmark --only amortized_training,local_fit
    python -m experiments.benchmark --check runs/benchmark/benchmark.json   # rerun the result
                                                            # benchmarks and list every figure that moved
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
--quick under --quick) and keep its JSON. See BENCHMARKS.md for the `--check` rule.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PEERS_DIR = os.path.join(REPO_ROOT, "..", "shared", "peers")
DEFAULT_TORCH_PYTHON = os.path.join(REPO_ROOT, ".venv-torch", "bin", "python")

# The peers' model: 784-400-(20+20) encoder, 20-400-784 Bernoulli decoder, batch 128.
X_DIM, H_DIM, Z_DIM, BATCH = 784, 400, 20, 128
LOCAL_LR, LOCAL_STEPS, LOCAL_N = 1e-2, 500, 2000  # nonamortized_*.py defaults


def amortized_step_flops(batch: int = BATCH) -> int:
    """Exact GEMM FLOPs of one training step (forward, all weight gradients, every input
    gradient except the data's): gemm_peak.py's 419.8 MFLOP at batch 128."""
    forward = 2 * batch * (X_DIM * H_DIM + H_DIM * 2 * Z_DIM + Z_DIM * H_DIM + H_DIM * X_DIM)
    return 3 * forward - 2 * batch * X_DIM * H_DIM


DECODER_FORWARD_FLOPS = 2 * (Z_DIM * H_DIM + H_DIM * X_DIM)  # one z -> logits: 643,200
# one datapoint-step of a local fit: the decoder forward plus the two input-gradient GEMMs
# (dlogits W4^T, dh W3^T); the decoder gets no weight gradient: 1,286,400 (RESULTS.md's 1.286 M)
LOCAL_STEP_FLOPS = DECODER_FORWARD_FLOPS + 2 * (X_DIM * H_DIM + H_DIM * Z_DIM)


# --------------------------------------------------------------------------------------------
# Our side of the speed benchmarks: workers, each run in a fresh process
#   python -m experiments.benchmark --worker NAME --params JSON   -> one JSON line on stdout
# --------------------------------------------------------------------------------------------

def synthetic_binary_data(rows: int, peers_dir: Optional[str]) -> np.ndarray:
    """The first `rows` rows of the peers' data set: common.load_data()'s file when the peers
    are there (created by it if missing; memory-mapped, so only these rows are read), else the
    same recipe made here: Bernoulli(0.13) pixels from numpy default_rng(0), rows of 784, float32
    (a prefix of the (60000, 784) draw, since the generator fills the array in order). More
    than 60000 rows (the N = 1e5 scaling point) repeat the 60000 cyclically."""
    common_py = os.path.join(peers_dir, "common.py") if peers_dir else ""
    if common_py and os.path.exists(common_py):
        sys.path.insert(0, os.path.abspath(peers_dir))
        try:
            import common  # the peers' module: one data set for every contestant
        finally:
            sys.path.pop(0)
        if not os.path.exists(common.DATA_PATH):
            common.load_data()
        x = np.load(common.DATA_PATH, mmap_mode="r")
        if rows > x.shape[0]:  # scaling runs past the 60000 rows: repeat them
            return np.resize(np.asarray(x, dtype=np.float32), (rows, X_DIM))
        return np.asarray(x[:rows], dtype=np.float32)
    rng = np.random.default_rng(0)
    x = (rng.random((min(rows, 60000), X_DIM), dtype=np.float32) < 0.13).astype(np.float32)
    return np.resize(x, (rows, X_DIM)) if rows > x.shape[0] else x


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _peers_decoder_model():
    """A fixed random decoder 20-400-784 (ReLU, Bernoulli logits) as the project builds it."""
    import jax

    from vi_jax import networks
    from vi_jax.distributions import BERNOULLI
    from vi_jax.families import diagonal_gaussian
    from vi_jax.models import decoder_model

    decoder = networks.decoder((H_DIM,), BERNOULLI.num_outputs(X_DIM))
    model = decoder_model(decoder, BERNOULLI, Z_DIM, X_DIM)
    return model, model.init(jax.random.PRNGKey(0)), diagonal_gaussian(Z_DIM)


def _peers_vae():
    """(config, VAE): the peers' 784-400-(20+20) | 20-400-784 Bernoulli VAE, batch 128, Adam 1e-3,
    as the project builds it."""
    from vi_jax.vae import VAEConfig, build_vae

    config = VAEConfig(seed=0, latent_dim=Z_DIM, encoder_hidden=(H_DIM,), decoder_hidden=(H_DIM,),
                       batch_size=BATCH, learning_rate=1e-3)
    return config, build_vae(config, X_DIM)


def worker_amortized(p: dict) -> dict:
    """Whole epochs of the project's amortized training (make_epoch over vae.algorithm.step)."""
    import jax
    import jax.numpy as jnp

    from vi_jax.train import make_epoch

    rows = p.get("rows", 60000)
    data = jax.device_put(jnp.asarray(synthetic_binary_data(rows, p.get("peers_dir"))))
    config, vae = _peers_vae()
    root = jax.random.PRNGKey(config.seed)
    state = vae.algorithm.init(jax.random.fold_in(root, 0), data[0])
    epoch = make_epoch(vae.algorithm.step, config.batch_size)
    steps_per_epoch = rows // config.batch_size
    train_key = jax.random.fold_in(root, 1)

    start = time.perf_counter()
    compiled = epoch.lower(train_key, state, data).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()  # warm-up: one epoch, not timed (first-run allocations)
    state, infos = compiled(jax.random.fold_in(train_key, 0), state, data)
    jax.block_until_ready(state)
    warmup_s = time.perf_counter() - start
    epochs = p.get("epochs", 3)
    start = time.perf_counter()
    for e in range(1, epochs + 1):
        state, infos = compiled(jax.random.fold_in(train_key, e), state, data)
    jax.block_until_ready((state, infos))
    seconds = time.perf_counter() - start
    steps = epochs * steps_per_epoch
    return {"steps_per_sec": steps / seconds, "timed_steps": steps, "seconds": seconds,
            "compile_s": compile_s, "warmup_s": warmup_s,
            "last_loss_per_example": float(infos.loss[-1]), "max_rss_mb": _max_rss_mb()}


ANATOMY_STAGES = ("gemms_sgd", "gemms_adam", "model_adam", "model_adam_shuffled", "vi_jax")


def worker_amortized_anatomy(p: dict) -> dict:
    """Where the amortized step's time goes beyond its GEMMs. In one process, alternating whole
    scans of `steps` steps (batch 128, the peers' 784-400-(20+20) | 20-400-784 shapes):
      gemms_sgd            the step's 11 GEMMs with their data dependencies and an SGD update
                           (gemm_peak.py's skeleton, the benchmark's limit, rewritten here);
      gemms_adam           the same GEMMs, updated with optax.adam;
      model_adam           the whole model written out: biases, ReLU, one N(0, I) draw per step,
                           the Bernoulli log-density x l - softplus(l), the closed-form KL;
                           batches are contiguous slices of the data;
      model_adam_shuffled  the same, batches gathered through a permutation of the rows;
      vi_jax               make_epoch(vae.algorithm.step), the project's training path.
    Every stage runs the same GEMMs, so each one's rate against the one before is what its
    addition costs; vi_jax against model_adam_shuffled is what the library costs over the same
    step written out by hand."""
    import jax
    import jax.numpy as jnp
    import optax

    from vi_jax.distributions import softplus
    from vi_jax.train import make_epoch

    steps, rounds = p.get("steps", 200), p.get("rounds", 10)
    rows = steps * BATCH
    data = jax.device_put(jnp.asarray(synthetic_binary_data(rows, p.get("peers_dir"))))
    batches = data.reshape(steps, BATCH, X_DIM)
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    weights = {"W1": 0.03 * jax.random.normal(k1, (X_DIM, H_DIM)), "Wh": 0.05 * jax.random.normal(k2, (H_DIM, 2 * Z_DIM)),
               "W3": 0.2 * jax.random.normal(k3, (Z_DIM, H_DIM)), "W4": 0.05 * jax.random.normal(k4, (H_DIM, X_DIM))}
    biases = {"b1": jnp.zeros(H_DIM), "bh": jnp.zeros(2 * Z_DIM), "b3": jnp.zeros(H_DIM), "b4": jnp.zeros(X_DIM)}
    adam = optax.adam(1e-3)

    def gemm_grads(w, x):
        """Forward x W1, h Wh, z W3, h3 W4; the weight gradients and the input gradients but x's."""
        h = x @ w["W1"]
        head = h @ w["Wh"]
        z = head[:, :Z_DIM]
        h3 = z @ w["W3"]
        g = h3 @ w["W4"] - x  # stands in for dL/dlogits
        dh3 = g @ w["W4"].T
        dz = dh3 @ w["W3"].T
        dhead = jnp.concatenate([dz, dz], axis=1)
        return {"W1": x.T @ (dhead @ w["Wh"].T), "Wh": h.T @ dhead, "W3": z.T @ dh3, "W4": h3.T @ g}

    def model_loss(w, x, eps):
        """-(1/B) sum_i [log p(x_i | z_i) - KL(q(z|x_i) || N(0, I))], z_i = mu_i + sigma_i eps_i."""
        h = jax.nn.relu(x @ w["W1"] + w["b1"][None])
        head = h @ w["Wh"] + w["bh"][None]
        mean, log_scale = head[:, :Z_DIM], head[:, Z_DIM:]
        z = mean + jnp.exp(log_scale) * eps
        logits = jax.nn.relu(z @ w["W3"] + w["b3"][None]) @ w["W4"] + w["b4"][None]
        log_lik = jnp.sum(x * logits - softplus(logits), axis=1)
        kl = 0.5 * jnp.sum(mean ** 2 + jnp.exp(2 * log_scale) - 2 * log_scale - 1, axis=1)
        return -jnp.mean(log_lik - kl)

    def by_hand(stage):
        @jax.jit
        def scan(key, carry):
            order = jax.random.permutation(key, rows)

            def step(carry, t):
                w, opt_state = carry
                if stage == "model_adam_shuffled":
                    x = jnp.take(data, jax.lax.dynamic_slice_in_dim(order, t * BATCH, BATCH), axis=0)
                else:
                    x = batches[t]
                if stage == "gemms_sgd":
                    return (jax.tree.map(lambda v, d: v - 1e-9 * d, w, gemm_grads(w, x)), opt_state), None
                if stage == "gemms_adam":
                    grads = gemm_grads(w, x)
                else:
                    eps = jax.random.normal(jax.random.fold_in(key, t), (BATCH, Z_DIM))
                    grads = jax.grad(model_loss)(w, x, eps)
                updates, opt_state = adam.update(grads, opt_state, w)
                return (optax.apply_updates(w, updates), opt_state), None

            return jax.lax.scan(step, carry, jnp.arange(steps))[0]

        w = dict(weights) if stage.startswith("gemms") else {**weights, **biases}
        return scan, (w, adam.init(w))

    _, vae = _peers_vae()
    epoch = make_epoch(vae.algorithm.step, BATCH)
    runners = {stage: by_hand(stage) for stage in ANATOMY_STAGES[:-1]}
    runners["vi_jax"] = (lambda key, state: epoch(key, state, data)[0],
                         vae.algorithm.init(jax.random.PRNGKey(0), data[0]))
    states = {}
    for stage, (run, state) in runners.items():  # compile and warm up
        states[stage] = jax.block_until_ready(run(jax.random.PRNGKey(0), state))
    rates = {stage: [] for stage in runners}
    for r in range(rounds):
        for stage in (ANATOMY_STAGES if r % 2 == 0 else ANATOMY_STAGES[::-1]):
            start = time.perf_counter()
            states[stage] = jax.block_until_ready(runners[stage][0](jax.random.PRNGKey(r + 1), states[stage]))
            rates[stage].append(steps / (time.perf_counter() - start))
    base = np.array(rates["gemms_sgd"])
    per_round = {stage: np.array(v) / base for stage, v in rates.items()}
    return {"steps_per_sec": {stage: float(np.median(v)) for stage, v in rates.items()},
            "fraction_of_gemms_sgd": {stage: float(np.median(v)) for stage, v in per_round.items()},
            "vi_jax_over_by_hand": float(np.median(np.array(rates["vi_jax"]) / np.array(rates["model_adam_shuffled"]))),
            "steps": steps, "rounds": rounds, "max_rss_mb": _max_rss_mb()}


def _local_fit_setup(p: dict, fit_config):
    import jax
    import jax.numpy as jnp

    from vi_jax.local import make_local_fit, tile_rows

    n = p["n"]
    model, theta, family = _peers_decoder_model()
    data = jax.device_put(jnp.asarray(synthetic_binary_data(n, p.get("peers_dir"))))
    table = tile_rows(family.init(), n)
    fit = jax.jit(make_local_fit(model, family, fit_config))
    key = jax.random.PRNGKey(p.get("seed", 0))
    start = time.perf_counter()
    compiled = fit.lower(key, theta, table, data).compile()
    return compiled, (key, theta, table, data), time.perf_counter() - start


def worker_local_fit(p: dict) -> dict:
    """The project's per-datapoint fit, forced to run exactly `steps` Adam steps on every row:
    one check of `steps` steps (max_steps = check_every = steps), so the while loop runs once."""
    import jax

    from vi_jax.local import LocalFitConfig

    steps = p.get("steps", LOCAL_STEPS)
    config = LocalFitConfig(learning_rate=p.get("lr", LOCAL_LR), num_samples=1, check_every=steps,
                            patience=1, max_steps=steps, block_rows=p.get("block_rows", 0))
    compiled, args, compile_s = _local_fit_setup(p, config)
    start = time.perf_counter()
    result = compiled(*args)
    jax.block_until_ready(result)
    seconds = time.perf_counter() - start
    row_steps = np.asarray(result.steps)
    if not np.all(row_steps == steps):
        raise RuntimeError(f"local fit ran {sorted(set(row_steps.tolist()))} steps, expected {steps}")
    n = p["n"]
    return {"datapoints_per_sec": n / seconds, "seconds": seconds, "n": n, "steps": steps,
            "compile_s": compile_s, "final_elbo_mean": float(np.mean(np.asarray(result.best_average_elbo))),
            "max_rss_mb": _max_rss_mb()}


def worker_local_fit_early_stop(p: dict) -> dict:
    """The default convergence rule (LocalFitConfig(), overrides in p["config"]): wall time, how
    many steps the loop ran, the steps each row needed, and the row-steps computed: at each check,
    the active rows rounded up to whole blocks."""
    import jax

    from vi_jax.local import LocalFitConfig, rows_per_block

    config = dataclasses.replace(LocalFitConfig(), **p.get("config", {}))
    compiled, args, compile_s = _local_fit_setup(p, config)
    start = time.perf_counter()
    result = compiled(*args)
    jax.block_until_ready(result)
    seconds = time.perf_counter() - start
    row_steps = np.asarray(result.steps)
    loop_steps = int(row_steps.max())  # rows still active run until the last one stops
    cap = -(-config.max_steps // config.check_every) * config.check_every
    n = p["n"]
    block = rows_per_block(config, n)
    active_per_check = [int(np.sum(row_steps > c * config.check_every))
                        for c in range(loop_steps // config.check_every)]
    computed = sum(-(-a // block) * block * config.check_every for a in active_per_check)
    return {"datapoints_per_sec": n / seconds, "seconds": seconds, "n": n, "compile_s": compile_s,
            "config": dataclasses.asdict(config), "loop_steps": loop_steps, "step_cap": cap,
            "converged": int(np.sum(np.asarray(result.converged))),
            "row_steps_mean": float(row_steps.mean()), "row_steps_median": float(np.median(row_steps)),
            "effective_speedup_vs_cap": cap / loop_steps,
            "block_rows": block, "row_steps_computed": computed,
            "row_step_utilisation": float(row_steps.sum()) / computed,
            "seconds_per_step": seconds / loop_steps, "max_rss_mb": _max_rss_mb()}


def worker_iwae(p: dict) -> dict:
    """make_iwae (chunked running logsumexp) through map_datapoints, as the gap protocol runs it."""
    import jax
    import jax.numpy as jnp

    from vi_jax.elbo import IWAE_CHUNK_SIZE, make_iwae, map_datapoints

    n, k = p["n"], p["k"]
    model, theta, family = _peers_decoder_model()
    data = jax.device_put(jnp.asarray(synthetic_binary_data(n, p.get("peers_dir"))))
    q = {"mean": 0.5 * jax.random.normal(jax.random.PRNGKey(1), (n, Z_DIM)),
         "log_scale": jnp.full((n, Z_DIM), -0.5)}
    iwae_fn = make_iwae(model, family, num_samples=k, chunk_size=p.get("chunk_size", IWAE_CHUNK_SIZE))
    batch_size = p.get("batch_size", 100)
    fn = jax.jit(lambda key, th, t, x: map_datapoints(iwae_fn, key, th, t, x, batch_size))
    key = jax.random.PRNGKey(p.get("seed", 0))
    rss_before = _max_rss_mb()
    start = time.perf_counter()
    compiled = fn.lower(key, theta, q, data).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = compiled(key, theta, q, data)
    jax.block_until_ready(result)
    seconds = time.perf_counter() - start
    return {"datapoints_per_sec": n / seconds, "seconds": seconds, "n": n, "k": k, "compile_s": compile_s,
            "bound_mean": float(jnp.mean(result.bound)), "max_rss_mb": _max_rss_mb(),
            "max_rss_before_compile_mb": rss_before}


WORKERS: dict[str, Callable[[dict], dict]] = {
    "amortized": worker_amortized,
    "amortized_anatomy": worker_amortized_anatomy,
    "local_fit": worker_local_fit,
    "local_fit_early_stop": worker_local_fit_early_stop,
    "iwae": worker_iwae,
}


# --------------------------------------------------------------------------------------------
# Running contestants (ours and the peers) as separate processes
# --------------------------------------------------------------------------------------------

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
            return ([sys.executable, "-m", "experiments.benchmark", "--worker", c.worker,
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


# --------------------------------------------------------------------------------------------
# Speed benchmarks. Ratios are medians over repetitions of per-repetition ratios (ours and the
# other contestant from the same round); the ratio of the medians is kept beside them.
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Result benchmarks: the experiments' default (or --quick) runs
# --------------------------------------------------------------------------------------------

def run_experiment(ctx: Context, module: str, output: str) -> dict:
    """python -m experiments.<module> --workdir ... [--quick] --no-progress; its JSON and wall time."""
    workdir = os.path.join(ctx.workdir, "results", module)
    cmd = [sys.executable, "-m", f"experiments.{module}", "--workdir", workdir, "--no-progress"]
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
        return importlib.util.find_spec("experiments.oracle_gap") is not None
    except (ImportError, ValueError):
        return False


def bench_oracle_gap(ctx: Context) -> dict:
    if not oracle_available():
        return {"skipped": "not available: experiments.oracle_gap is not importable"}
    return run_experiment(ctx, "oracle_gap", "oracle.json")


def bench_local_fit_accuracy(ctx: Context) -> dict:
    return run_experiment(ctx, "local_fit_accuracy", "local_fit_accuracy.json")


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


# --------------------------------------------------------------------------------------------
# --check: which figures of the result benchmarks moved (pure functions)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Machine description, Markdown, main
# --------------------------------------------------------------------------------------------

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
    from vi_jax import io, provenance

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
        io.atomic_write_json(os.path.join(ctx.workdir, "benchmark.json"), _finite(report))
    report["load_after"] = list(os.getloadavg())
    report = _finite(report)
    io.atomic_write_json(os.path.join(ctx.workdir, "benchmark.json"), report)
    io.atomic_write_text(os.path.join(ctx.workdir, "benchmark.md"), markdown(report))
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    command = "python -m experiments.benchmark " + shlex.join(argv if argv is not None else sys.argv[1:])
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
        from vi_jax import io
        io.atomic_write_json(os.path.join(ctx.workdir, "check.json"), _finite(check))
        text = check_markdown(check)
        io.atomic_write_text(os.path.join(ctx.workdir, "check.md"), text)
        print(text)
        return 0 if check["ok"] else 1
    report = run_suite(ctx, select(args.only), command)
    print(markdown(report))
    print(f"wrote {os.path.join(ctx.workdir, 'benchmark.json')} and benchmark.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
