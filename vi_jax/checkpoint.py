"""Checkpoints of a training loop with orbax: the whole state pytree (parameters, optimizer
states, per-datapoint tables, step) plus JSON metadata (config, epoch, history).

The loop's randomness is a pure function of (seed, epoch) (see vae.train_vae), so a run
resumed from the checkpoint of epoch e continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import orbax.checkpoint as ocp

# Config fields a resumed run may change: they do not alter the trajectory up to the checkpoint.
RESUMABLE_CHANGES = ("num_epochs", "checkpoint_every", "eval_every")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, or written by a different config."""


class Checkpointer:
    """Save and restore {state, metadata} per epoch in `directory` (keeps the newest `keep`)."""

    def __init__(self, directory: str, keep: int = 2):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_epoch(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, epoch: int, state: Any, metadata: dict) -> None:
        self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         metadata=ocp.args.JsonSave(metadata)))
        self.manager.wait_until_finished()

    def restore(self, template_state: Any, config: dict, defaults: Optional[dict] = None) -> tuple[int, Any, dict]:
        """(epoch, state, metadata) of the newest checkpoint; CheckpointError if it is unreadable
        or its config differs from `config` in a field outside RESUMABLE_CHANGES. A field the
        checkpoint's config lacks (added to the code later) matches when `config` holds its
        value in `defaults`, the config class's defaults."""
        epoch = self.latest_epoch()
        if epoch is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        try:
            metadata = self.manager.restore(epoch, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"]
        except Exception as err:  # orbax raises many types for damaged files
            raise CheckpointError(f"checkpoint {self.directory}/{epoch} is unreadable "
                                  f"({type(err).__name__}: {err})") from err
        saved, config = metadata.get("config", {}), json.loads(json.dumps(config))  # tuples -> lists
        for name, value in json.loads(json.dumps(defaults or {})).items():
            saved.setdefault(name, value)
        differing = sorted(k for k in set(saved) | set(config)
                           if k not in RESUMABLE_CHANGES and saved.get(k) != config.get(k))
        if differing:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {config.get(k)!r}" for k in differing)
            raise CheckpointError(f"checkpoint {self.directory}/{epoch} was written by a different config ({details})")
        try:
            state = self.manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(template_state)))["state"]
        except Exception as err:
            raise CheckpointError(f"checkpoint {self.directory}/{epoch} is unreadable or does not match "
                                  f"this model's state ({type(err).__name__}: {err})") from err
        return epoch, state, metadata
