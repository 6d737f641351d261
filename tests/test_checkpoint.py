"""Checkpoints carry checksums: a damaged one is named, an older intact one is used only when
asked, and an older version's checkpoint (no checksums) still restores, with a warning."""
import dataclasses
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vi_jax.checkpoint import (CheckpointError, Checkpointer, DamagedCheckpoint, UnverifiedCheckpointWarning,
                               state_checksums)
from vi_jax.vae import VAEConfig, build_vae, train_vae

CONFIG = {"latent_dim": 2, "hidden": [16]}
# random values: orbax stores them uncompressed, so a flipped bit reads back as a changed number
STATE = {"w": jax.random.normal(jax.random.PRNGKey(0), (1000,)), "b": jnp.ones(3), "step": jnp.array(7)}


def saved(tmp_path, epochs=(1, 2)):
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"))
    for epoch in epochs:
        checkpointer.save(epoch, jax.tree.map(lambda v: v + epoch, STATE), {"config": CONFIG, "history": [epoch]})
    return checkpointer


def data_file(checkpointer, epoch):
    """The largest array-data file of a checkpoint's state."""
    files = [os.path.join(d, name) for d, _, names in os.walk(os.path.join(checkpointer.directory, str(epoch), "state"))
             for name in names if os.sep + "d" + os.sep in os.path.join(d, name)]
    return max(files, key=os.path.getsize)


def flip_bit(path):
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 1
    open(path, "wb").write(bytes(raw))


def rewrite_metadata(checkpointer, epoch, change):
    path = os.path.join(checkpointer.directory, str(epoch), "metadata", "metadata")
    with open(path) as f:
        metadata = json.load(f)
    change(metadata)
    with open(path, "w") as f:
        json.dump(metadata, f)


def test_restore_verifies_and_returns_the_newest(tmp_path):
    epoch, state, metadata = saved(tmp_path).restore(STATE, CONFIG)
    assert epoch == 2 and metadata["history"] == [2]
    assert state_checksums(state) == state_checksums(jax.tree.map(lambda v: v + 2, STATE))


def test_a_flipped_bit_that_orbax_loads_silently_is_named(tmp_path):
    checkpointer = saved(tmp_path)
    flip_bit(data_file(checkpointer, 2))
    raw = ocp.CheckpointManager(checkpointer.directory).restore(
        2, args=ocp.args.Composite(state=ocp.args.StandardRestore(STATE)))["state"]
    assert float(jnp.max(jnp.abs(raw["w"] - (STATE["w"] + 2)))) > 0  # orbax alone returns changed numbers
    with pytest.raises(DamagedCheckpoint, match=r"checkpoint .*checkpoints/2 is damaged: 1 array\(s\) fail their "
                                                r"checksum, first \['w'\]; .*--fallback-to-intact"):
        checkpointer.restore(STATE, CONFIG)
    assert checkpointer.newest_verified(STATE) == 1


def test_fallback_to_an_older_intact_checkpoint_only_when_asked(tmp_path):
    checkpointer = saved(tmp_path)
    flip_bit(data_file(checkpointer, 2))
    with pytest.warns(UserWarning, match=r"checkpoints/2 is damaged.*deleting it and falling back to the older "
                                          r"checkpoint 1"):
        epoch, _, metadata = checkpointer.restore(STATE, CONFIG, fallback=True)
    assert epoch == 1 and metadata["history"] == [1] and checkpointer.latest_epoch() == 1
    flip_bit(data_file(checkpointer, 1))
    with pytest.raises(DamagedCheckpoint, match="checkpoints/1 is damaged"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpointer.restore(STATE, CONFIG, fallback=True)


DAMAGE = {
    "config_edited": (lambda c: rewrite_metadata(c, 2, lambda m: m["config"].update(latent_dim=3)),
                      "metadata/config fails its checksum"),
    "array_checksum_edited": (lambda c: rewrite_metadata(c, 2, lambda m: m["checksums"]["state"].update(
        {"['b']": "0" * 64})), r"fail their checksum, first \['b'\]"),
    "metadata_garbage": (lambda c: open(os.path.join(c.directory, "2", "metadata", "metadata"), "w").write("{"),
                         "is unreadable"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_metadata_is_named(tmp_path, case):
    checkpointer = saved(tmp_path)
    damage, message = DAMAGE[case]
    damage(checkpointer)
    with pytest.raises(DamagedCheckpoint, match=rf"checkpoints/2 .*{message}"):
        checkpointer.restore(STATE, CONFIG)


def test_an_older_versions_checkpoint_restores_unverified_with_a_warning(tmp_path):
    """Written as the code before checksums wrote it: state and metadata without "checksums"."""
    directory = str(tmp_path / "old")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False))
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(STATE),
                                            metadata=ocp.args.JsonSave({"config": CONFIG, "history": []})))
    manager.wait_until_finished()
    checkpointer = Checkpointer(directory)
    with pytest.warns(UnverifiedCheckpointWarning, match="old/3 has no checksums .*restored unverified"):
        epoch, state, _ = checkpointer.restore(STATE, CONFIG)
    assert epoch == 3 and state_checksums(state) == state_checksums(STATE)
    assert checkpointer.newest_verified(STATE) is None  # restorable, but never called verified


def test_a_different_config_is_not_damage_and_never_falls_back(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoints/2 was written by a different config \(latent_dim: "
                                              r"checkpoint 2 vs now 3\)") as info:
        saved(tmp_path).restore(STATE, {**CONFIG, "latent_dim": 3}, fallback=True)
    assert not isinstance(info.value, DamagedCheckpoint)


def test_divergence_names_the_quantity_and_the_last_verified_checkpoint(tmp_path):
    """A resumed run whose data turn NaN (data are not part of the config) diverges at epoch 2."""
    config = VAEConfig(latent_dim=2, encoder_hidden=(4,), decoder_hidden=(4,), batch_size=10, num_epochs=1,
                       eval_every=0, checkpoint_every=1)
    x = (np.random.default_rng(0).random((40, 5)) > 0.5).astype(np.float32)
    vae = build_vae(config, 5, steps_per_epoch=4)
    directory = str(tmp_path / "checkpoints")
    train_vae(vae, config, x, progress=False, checkpoint_dir=directory)
    x[3, 0] = np.nan
    with pytest.raises(FloatingPointError, match=r"epoch 2, step \d+ of the epoch \((loss and elbo|loss|elbo) "
                                                 r"non-finite\).*the last verified checkpoint is epoch 1 in "):
        train_vae(vae, dataclasses.replace(config, num_epochs=2), x, progress=False, checkpoint_dir=directory,
                  resume=True)
