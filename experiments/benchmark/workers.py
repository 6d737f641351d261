"""Our side of the speed benchmarks: the peers' problem sizes and the workers, each run in a
fresh process

    python -m experiments.benchmark --worker NAME --params JSON   -> one JSON line on stdout
"""
from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from typing import Callable, Optional

import numpy as np

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

    from vi_jax import streams
    from vi_jax.train import make_epoch

    rows = p.get("rows", 60000)
    data = jax.device_put(jnp.asarray(synthetic_binary_data(rows, p.get("peers_dir"))))
    config, vae = _peers_vae()
    state = vae.algorithm.init(streams.stream(config.seed, streams.INIT), data[0])
    epoch = make_epoch(vae.algorithm.step, config.batch_size)
    steps_per_epoch = rows // config.batch_size
    train_key = streams.stream(config.seed, streams.EPOCHS)  # train_vae's epoch keys

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


def _timed_local_fit(p: dict, fit_config):
    """The project's local fit on the peers' problem: (result, run seconds, compile seconds)."""
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
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(key, theta, table, data))
    return result, time.perf_counter() - start, compile_s


def worker_local_fit(p: dict) -> dict:
    """The project's per-datapoint fit, forced to run exactly `steps` Adam steps on every row:
    one check of `steps` steps (max_steps = check_every = steps), so the while loop runs once."""
    from vi_jax.local import LocalFitConfig

    steps = p.get("steps", LOCAL_STEPS)
    config = LocalFitConfig(learning_rate=p.get("lr", LOCAL_LR), num_samples=1, check_every=steps,
                            patience=1, max_steps=steps, block_rows=p.get("block_rows", 0))
    result, seconds, compile_s = _timed_local_fit(p, config)
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
    from vi_jax.local import LocalFitConfig, rows_per_block

    config = dataclasses.replace(LocalFitConfig(), **p.get("config", {}))
    result, seconds, compile_s = _timed_local_fit(p, config)
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
