"""Checkpoints of a training loop with orbax: the whole state pytree (parameters, optimizer
states, per-datapoint tables, step) plus JSON metadata (config, epoch, history), and sha256
checksums of both, so that a damaged checkpoint is named rather than resumed from.

The loop's randomness is a pure function of (seed, epoch) (see vae.train_vae), so a run
resumed from the checkpoint of epoch e continues exactly as the uninterrupted run would.

StageCache keeps the finished stages of a long evaluation (the gap protocol's local fits,
IWAE and AIS estimates), so that a resumed evaluation skips them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from vi_jax import storage

# Config fields a resumed run may change: they do not alter the trajectory up to the checkpoint.
RESUMABLE_CHANGES = ("num_epochs", "checkpoint_every", "eval_every")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, damaged, or written by a different config."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files do not read back as what was saved."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without checksums (written before they existed): restored, but unchecked."""


def state_checksums(state: Any) -> dict:
    """{leaf path: sha256 of its dtype, shape and bytes} of a pytree of arrays."""
    sums = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        value = np.asarray(leaf)
        digest = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).data)
        sums[jax.tree_util.keystr(path)] = digest.hexdigest()
    return sums


def differing_fields(saved: dict, now: dict, ignore=()) -> list[str]:
    """The sorted keys whose values differ between two JSON-like dicts (a key missing on one
    side differs), except those in `ignore`."""
    return sorted(k for k in set(saved) | set(now) if k not in ignore and saved.get(k) != now.get(k))


def config_checksum(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


class Checkpointer:
    """Save and restore {state, metadata} per epoch in `directory` (keeps the newest `keep`)."""

    def __init__(self, directory: str, keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_epoch(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, epoch: int, state: Any, metadata: dict) -> None:
        metadata = json.loads(json.dumps(metadata))  # tuples -> lists, as restore will see them
        metadata["checksums"] = {"state": state_checksums(state), "config": config_checksum(metadata.get("config", {}))}
        self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         metadata=ocp.args.JsonSave(metadata)))
        self.manager.wait_until_finished()

    def restore(self, template_state: Any, config: dict, defaults: Optional[dict] = None, *,
                fallback: bool = False) -> tuple[int, Any, dict]:
        """(epoch, state, metadata) of the newest checkpoint, its checksums verified.
        CheckpointError if there is none, or its config differs from `config` in a field outside
        RESUMABLE_CHANGES (a field the checkpoint's config lacks, added to the code later, matches
        when `config` holds its value in `defaults`, the config class's defaults);
        DamagedCheckpoint naming it if it is unreadable or fails its checksums, unless `fallback`,
        which then warns and tries the next older one. A checkpoint without checksums (an older
        version's) is restored with an UnverifiedCheckpointWarning."""
        epochs = sorted(self.manager.all_steps(), reverse=True)
        if not epochs:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        for i, epoch in enumerate(epochs):
            try:
                metadata = self._metadata(epoch)
                self._check_config(epoch, metadata, config, defaults)
                state = self._state(epoch, template_state, metadata)
            except DamagedCheckpoint as err:
                if not fallback or i == len(epochs) - 1:
                    hint = "" if fallback else (f"; to resume from an older intact checkpoint ({epochs[1:]}), ask "
                                                "for the fallback (--fallback-to-intact)" if len(epochs) > 1 else "")
                    raise DamagedCheckpoint(f"{err}{hint}") from err
                warnings.warn(f"{err}; deleting it and falling back to the older checkpoint {epochs[i + 1]}",
                              stacklevel=2)
                continue
            for damaged in epochs[:i]:  # the resumed run saves these epochs again
                self.manager.delete(damaged)
            return epoch, state, metadata
        raise AssertionError("unreachable")

    def newest_verified(self, template_state: Any) -> Optional[int]:
        """The newest epoch whose checkpoint reads back and passes its checksums (None if none)."""
        for epoch in sorted(self.manager.all_steps(), reverse=True):
            try:
                metadata = self._metadata(epoch)
                if "checksums" in metadata:
                    self._state(epoch, template_state, metadata)
                    return epoch
            except DamagedCheckpoint:
                continue
        return None

    def _name(self, epoch: int) -> str:
        return f"checkpoint {self.directory}/{epoch}"

    def _metadata(self, epoch: int) -> dict:
        try:
            metadata = self.manager.restore(epoch, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
        except Exception as err:  # orbax raises many types for damaged files
            raise DamagedCheckpoint(f"{self._name(epoch)} is unreadable ({type(err).__name__}: {err})") from err
        sums = metadata.get("checksums")
        if sums is not None and config_checksum(metadata.get("config", {})) != sums.get("config"):
            raise DamagedCheckpoint(f"{self._name(epoch)} is damaged: its metadata/config fails its checksum")
        return metadata

    def _check_config(self, epoch: int, metadata: dict, config: dict, defaults: Optional[dict]) -> None:
        saved, config = dict(metadata.get("config", {})), json.loads(json.dumps(config))  # tuples -> lists
        for name, value in json.loads(json.dumps(defaults or {})).items():
            saved.setdefault(name, value)
        differing = differing_fields(saved, config, ignore=RESUMABLE_CHANGES)
        if differing:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {config.get(k)!r}" for k in differing)
            raise CheckpointError(f"{self._name(epoch)} was written by a different config ({details})")

    def _state(self, epoch: int, template_state: Any, metadata: dict) -> Any:
        try:
            state = self.manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(template_state)))["state"]
        except Exception as err:
            raise DamagedCheckpoint(f"{self._name(epoch)} is unreadable or does not match this model's state "
                                    f"({type(err).__name__}: {err})") from err
        expected = metadata.get("checksums", {}).get("state")
        if expected is None:
            warnings.warn(f"{self._name(epoch)} has no checksums (written by an older version): restored unverified",
                          UnverifiedCheckpointWarning, stacklevel=3)
            return state
        actual = state_checksums(state)
        bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
        if bad:
            raise DamagedCheckpoint(f"{self._name(epoch)} is damaged: {len(bad)} array(s) fail their checksum, "
                                    f"first {bad[0]}")
        return state


class StageCache:
    """The finished stages of one long computation in `directory`: per stage its arrays (one npz),
    their checksums and the seconds it took, under the `fingerprint` of everything the results
    depend on (configuration, data rows, parameter checksums). resume=False starts empty,
    clearing the directory; resume=True keeps the stages of a directory written under the same
    fingerprint and refuses another's with a CheckpointError naming what differs."""

    INDEX = "stages.json"

    def __init__(self, directory: str, fingerprint: dict, *, resume: bool):
        self.directory = os.path.abspath(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as read back
        index_path = os.path.join(self.directory, self.INDEX)
        if resume and os.path.exists(index_path):
            index = storage.read_json(index_path)
            differing = differing_fields(index.get("fingerprint", {}), self.fingerprint)
            if differing:
                raise CheckpointError(f"{self.directory}: its stages were computed for a different run "
                                      f"({', '.join(differing)} differ); resume that run, or start afresh "
                                      "without resuming (which clears them)")
            self.stages = index["stages"]
        else:
            if os.path.isdir(self.directory):
                shutil.rmtree(self.directory)
            os.makedirs(self.directory)
            self.stages = {}
            self._write_index()

    def run(self, name: str, compute: Callable[[], dict]) -> tuple[dict, float, bool]:
        """(arrays, seconds, reused) of stage `name`: its saved arrays and recorded seconds if it
        finished before (checksums verified: DamagedCheckpoint naming the file otherwise), else
        compute()'s arrays, timed, saved, then returned. compute() may return its own "seconds"
        (for a stage that itself resumed): they are recorded instead of the measured time."""
        path = os.path.join(self.directory, f"{name}.npz")
        if name in self.stages:
            try:
                with np.load(path) as saved:
                    arrays = {k: saved[k] for k in saved.files}
            except (OSError, ValueError) as err:
                raise DamagedCheckpoint(f"stage {name!r}: {path} is unreadable ({err})") from err
            if state_checksums(arrays) != self.stages[name]["checksums"]:
                raise DamagedCheckpoint(f"stage {name!r}: {path} fails its checksums")
            return arrays, self.stages[name]["seconds"], True
        start = time.perf_counter()
        arrays = {k: np.asarray(v) for k, v in compute().items()}
        seconds = float(arrays.pop("seconds")) if "seconds" in arrays else time.perf_counter() - start
        storage.atomic_save_npz(path, **arrays)
        self.stages[name] = {"seconds": seconds, "checksums": state_checksums(arrays)}
        self._write_index()
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)  # its segments, superseded
        return arrays, seconds, False

    def discard(self) -> None:
        """Delete the directory and everything in it, once the results the stages served are written."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def checkpointer(self, name: str) -> Checkpointer:
        """A Checkpointer for the segments of stage `name` while it runs (removed once it is saved)."""
        return Checkpointer(os.path.join(self.directory, name))

    def _write_index(self) -> None:
        storage.atomic_write_json(os.path.join(self.directory, self.INDEX),
                                  {"fingerprint": self.fingerprint, "stages": self.stages})
