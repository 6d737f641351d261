"""Beyond one device and one uninterrupted run: 8-device equivalence (simulated CPU devices in a
subprocess), kill-and-resume equality, checkpoint errors, the divergence guard."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments import train_vae
from vi_jax import rundir
from vi_jax.checkpoint import CheckpointError, DamagedCheckpoint
from vi_jax.rundir import RunDirError
from vi_jax.vae import load_trained_vae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MULTI_DEVICE = textwrap.dedent("""
    import dataclasses, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from vi_jax import data, sharding
    from vi_jax.local import LocalFitConfig, make_local_fit
    from vi_jax.vae import VAEConfig, build_vae, train_vae
    assert len(jax.devices()) == 8, jax.devices()
    x = data.load_dataset("digits").train[:1496]          # 1496 = 8 * 187 rows
    out = {}
    for mode in ("amortized", "non_amortized", "semi_amortized"):
        base = VAEConfig(mode=mode, latent_dim=2, encoder_hidden=(16,), decoder_hidden=(16,), batch_size=88,
                         num_epochs=2, eval_every=0, refine_steps=2)
        runs = {}
        for devices in (1, 8):
            config = dataclasses.replace(base, num_devices=devices)
            vae = build_vae(config, x.shape[1], num_train=len(x))
            runs[devices] = train_vae(vae, config, x, progress=False).state
        diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), runs[1].params, runs[8].params)
        out[mode] = max(jax.tree.leaves(diffs))
        if mode == "non_amortized":
            non_amortized = runs
            table = runs[8].params["local"]["mean"]
            out["table_devices"] = len({s.device for s in table.addressable_shards})
            out["table_shard_rows"] = sorted({s.data.shape[0] for s in table.addressable_shards})
    # a full-set local fit with the table sharded by rows equals the single-device fit
    fit = jax.jit(make_local_fit(vae.model, vae.family, LocalFitConfig(learning_rate=1e-2, check_every=10,
                                                                        patience=2, max_steps=100)))
    theta = non_amortized[1].params["decoder"]
    init = jax.tree.map(lambda v: v[:64], non_amortized[1].params["local"])
    single = fit(jax.random.PRNGKey(0), theta, init, jnp.asarray(x[:64]))
    mesh = sharding.data_mesh(8)
    multi = fit(jax.random.PRNGKey(0), theta, sharding.shard_rows(init, mesh), sharding.shard_rows(jnp.asarray(x[:64]), mesh))
    out["local_fit"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params)))
    out["local_fit_converged_equal"] = bool(jnp.array_equal(single.converged, multi.converged))
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_eight_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT")[-1])
    # float32 training: only the order of the gradient reductions differs; 2 epochs of Adam
    for mode in ("amortized", "non_amortized", "semi_amortized"):
        assert out[mode] < 1e-4, out
    assert out["table_devices"] == 8 and out["table_shard_rows"] == [187]
    assert out["local_fit"] < 1e-4 and out["local_fit_converged_equal"], out


TINY = ["--no-progress", "--set", "latent_dim=2", "--set", "encoder_hidden=16", "--set", "decoder_hidden=16",
        "--set", "eval_every=0", "--set", "final_iwae_samples=20", "--set", "eval_elbo_samples=5",
        "--set", "batch_size=10"]
NUMBERS = ("test_elbo", "test_iwae", "train_elbo", "history")


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, persistent_compilation_cache):
    epochs = ["--set", "num_epochs=6", "--set", "checkpoint_every=1"]
    train_vae.main(["--workdir", str(tmp_path / "full")] + TINY + epochs)
    full = read_metrics(tmp_path / "full")

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.train_vae", "--workdir", str(killed)] + TINY + epochs
    # the child loads the executables the uninterrupted run compiled (and has nothing left to write)
    proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **persistent_compilation_cache},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        saved = [d for d in os.listdir(killed / "checkpoints")] if (killed / "checkpoints").exists() else []
        if any(d.isdigit() and int(d) >= 2 for d in saved):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    with pytest.raises(RunDirError, match="MANIFEST.json: missing"):  # nothing of the killed run is loadable
        load_trained_vae(str(killed))
    with pytest.raises(RunDirError, match=rf"stale lock .*pid {proc.pid} .*--clear-stale-lock"):
        train_vae.main(["--workdir", str(killed), "--resume"] + TINY + epochs)
    last = max(int(d) for d in os.listdir(killed / "checkpoints") if d.isdigit())
    with open(killed / "checkpoints" / str(last) / "metadata" / "metadata") as f:
        killed_seconds = json.load(f)["train_seconds"]
    train_vae.main(["--workdir", str(killed), "--resume", "--clear-stale-lock"] + TINY + epochs)
    resumed = read_metrics(killed)
    for name in NUMBERS:
        assert resumed[name] == full[name], name
    # the training time adds the killed segment's (recorded in its checkpoint) to the resumed one's
    assert killed_seconds > 0 and resumed["wall_seconds"]["train"] > killed_seconds
    assert resumed["wall_seconds"]["train_timed_from_epoch"] == 1


def test_checkpoint_errors_are_clear(tmp_path):
    workdir = str(tmp_path / "run")
    two = ["--set", "num_epochs=2", "--set", "checkpoint_every=1"]
    train_vae.main(["--workdir", workdir] + TINY + two)
    with pytest.raises(RunDirError, match="holds the results of another run"):
        train_vae.main(["--workdir", workdir] + TINY + two)
    with pytest.raises(CheckpointError, match=r"different config \(latent_dim: checkpoint 2 vs now 3"):
        train_vae.main(["--workdir", workdir, "--resume"] + TINY + ["--set", "latent_dim=3", "--set", "num_epochs=2"])
    with pytest.raises(CheckpointError, match=r"checkpoints/2: the checkpoint is of epoch 2, beyond num_epochs=1"):
        train_vae.main(["--workdir", workdir, "--resume"] + TINY + ["--set", "num_epochs=1"])
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        train_vae.main(["--workdir", str(tmp_path / "empty"), "--resume"] + TINY)
    # damage every file of the newest saved state: resuming must fail loudly, not start afresh ...
    for directory, _, files in os.walk(os.path.join(workdir, "checkpoints", "2", "state")):
        for name in files:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(b"garbage")
    with pytest.raises(DamagedCheckpoint, match=r"checkpoints/2 is unreadable.*--fallback-to-intact"):
        train_vae.main(["--workdir", workdir, "--resume"] + TINY + two)
    rundir.verify(workdir)  # the refused resume left the finished run as it was
    # ... and resumes from the older intact one only when asked, to the uninterrupted result
    finished = read_metrics(workdir)
    with pytest.warns(UserWarning, match="falling back to the older checkpoint 1"):
        train_vae.main(["--workdir", workdir, "--resume", "--fallback-to-intact"] + TINY + two)
    for name in NUMBERS:
        assert read_metrics(workdir)[name] == finished[name], name


def test_divergence_stops_before_writing_anything(tmp_path):
    workdir = tmp_path / "diverge"
    with pytest.raises(FloatingPointError, match=r"non-finite training objective at epoch 1, step \d+ of the epoch "
                                                 r"\((loss and elbo|loss|elbo) non-finite\)"):
        train_vae.main(["--workdir", str(workdir)] + TINY + ["--set", "learning_rate=1e9", "--set", "num_epochs=3",
                                                             "--set", "checkpoint_every=1"])
    assert not (workdir / "metrics.json").exists()
    assert not any(d.isdigit() for d in os.listdir(workdir / "checkpoints"))


def test_gradient_clipping_bounds_the_gradient_adam_sees():
    import jax
    import numpy as np

    from vi_jax import data
    from vi_jax.vae import VAEConfig, build_vae
    config = VAEConfig(latent_dim=2, encoder_hidden=(16,), decoder_hidden=(16,), grad_clip_norm=1.0)
    x = data.load_dataset("digits").train
    algorithm = build_vae(config, x.shape[1]).algorithm
    state, _ = jax.jit(algorithm.step)(jax.random.PRNGKey(1), algorithm.init(jax.random.PRNGKey(0), x[0]), x[:100])
    # after one step Adam's first moment is (1 - b1) g = 0.1 g, g the clipped gradient
    mu = state.opt_state[1][0].mu
    clipped_norm = np.sqrt(sum(float(np.sum((np.asarray(m) / 0.1) ** 2)) for m in jax.tree.leaves(mu)))
    assert clipped_norm <= 1.0 + 1e-4
    unclipped = build_vae(VAEConfig(latent_dim=2, encoder_hidden=(16,), decoder_hidden=(16,)), x.shape[1]).algorithm
    state, _ = jax.jit(unclipped.step)(jax.random.PRNGKey(1), unclipped.init(jax.random.PRNGKey(0), x[0]), x[:100])
    raw_norm = np.sqrt(sum(float(np.sum((np.asarray(m) / 0.1) ** 2)) for m in jax.tree.leaves(state.opt_state[0].mu)))
    assert raw_norm > 1.0  # so the clip was active
