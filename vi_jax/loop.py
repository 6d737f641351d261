"""The one training loop: fused epochs (vi_jax.train.make_epoch) with the NaN guard, the
history, live metrics, the progress bar and checkpoints, shared by vae.train_vae,
cvae.train_cvae, vqvae.train_vqvae and oracles.train_encoder, which differ only in what they
record of an epoch.

Epoch e (1-based) draws key fold_in(epoch_key, e) (a run's epoch_key is its
streams.EPOCHS stream), so a run resumed from the checkpoint of epoch e continues exactly as
the uninterrupted run would.
"""
from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np

from vi_jax.array_types import PRNGKey
from vi_jax.checkpoint import Checkpointer, CheckpointError
from vi_jax.metrics import MetricsTarget, open_writer
from vi_jax.progress import trange
from vi_jax.train import first_nonfinite


class Checkpointing(NamedTuple):
    """Save the state every `every` epochs (0: only the last) and at the end, with `config`,
    the history and the training seconds; resume=True continues from the newest checkpoint
    (Checkpointer.restore: a missing, damaged or mismatched one is an error, unless fallback
    asks for the newest intact one; `defaults` fill config fields a checkpoint predates)."""

    checkpointer: Checkpointer
    config: dict
    every: int = 0
    resume: bool = False
    fallback: bool = False
    defaults: Optional[dict] = None


class TrainResult(NamedTuple):
    state: Any
    history: list  # one record per epoch: {"epoch": e, ...summarize's fields, ...evaluate's fields}
    seconds: float  # training wall time of epochs timed_from_epoch..num_epochs, over all segments
    timed_from_epoch: int  # > 1 only when resumed from a checkpoint that recorded no time


def _restore(plan: Checkpointing, state, num_epochs: int) -> tuple[Any, list, int, float, int]:
    """(state, history, first epoch, earlier seconds, timed_from_epoch) to start from."""
    if not plan.resume:
        if plan.checkpointer.latest_epoch() is not None:
            raise CheckpointError(f"{plan.checkpointer.directory} already holds checkpoints: resume the run "
                                  "or use a fresh directory")
        return state, [], 1, 0.0, 1
    last, state, metadata = plan.checkpointer.restore(state, plan.config, defaults=plan.defaults,
                                                      fallback=plan.fallback)
    if last > num_epochs:
        raise CheckpointError(f"{plan.checkpointer.directory}/{last}: the checkpoint is of epoch {last}, beyond "
                              f"num_epochs={num_epochs}; resume with num_epochs >= {last}")
    if "train_seconds" in metadata:
        return state, metadata["history"], last + 1, metadata["train_seconds"], 1
    return state, metadata["history"], last + 1, 0.0, last + 1  # written before checkpoints recorded their time


def run_epochs(epoch_fn: Callable, state, data, *, epoch_key: PRNGKey, num_epochs: int,
               summarize: Callable[[int, Any], tuple[dict, dict]],
               evaluate: Optional[Callable[[int, Any], dict]] = None, eval_every: int = 0,
               checkpointing: Optional[Checkpointing] = None, metrics: MetricsTarget = None,
               progress: bool = True, what: str = "training objective",
               advice: str = "lower the learning rate or check the data") -> TrainResult:
    """Run epochs 1..num_epochs (or, resuming, from the checkpoint's next epoch) of
    epoch_fn(key, state, data) -> (state, infos), with infos.loss and infos.elbo per step.

    summarize(epoch, infos) -> (record, extras): the epoch's history fields and the extra fields
    of its "train" line in `metrics` (a path or a vi_jax.metrics writer; a resumed run drops the
    lines of epochs after its checkpoint). evaluate(epoch, state) -> fields, every eval_every
    epochs: added to the record and written as an "eval" line. Raises FloatingPointError at the
    first NaN/inf loss or ELBO, naming `what`, the step, `advice` and the newest verified
    checkpoint, before saving anything of that epoch."""
    history, first_epoch, earlier_seconds, timed_from_epoch = [], 1, 0.0, 1
    if checkpointing is not None:
        state, history, first_epoch, earlier_seconds, timed_from_epoch = _restore(checkpointing, state, num_epochs)
    writer = open_writer(metrics, first_epoch)
    start = time.perf_counter()

    def seconds() -> float:
        return earlier_seconds + time.perf_counter() - start

    bar = trange(first_epoch, num_epochs + 1, enabled=progress)
    for epoch in bar:
        state, infos = epoch_fn(jax.random.fold_in(epoch_key, epoch), state, data)
        bad = first_nonfinite(infos)
        if bad is not None:
            checkpointer = checkpointing.checkpointer if checkpointing is not None else None
            verified = checkpointer.newest_verified(state) if checkpointer is not None else None
            kept = "" if verified is None else \
                f"; the last verified checkpoint is epoch {verified} in {checkpointer.directory}"
            quantities = [name for name in ("loss", "elbo") if not np.isfinite(float(getattr(infos, name)[bad]))]
            raise FloatingPointError(
                f"non-finite {what} at epoch {epoch}, step {bad} of the epoch "
                f"({' and '.join(quantities)} non-finite): "
                f"loss={float(infos.loss[bad])}, elbo={float(infos.elbo[bad])}; {advice}{kept}")
        fields, extras = summarize(epoch, infos)
        record = {"epoch": epoch, **fields}
        if writer is not None:
            writer.write({"kind": "train", **record, **extras, "seconds": seconds()})
        if evaluate is not None and eval_every and epoch % eval_every == 0:
            evaluation = evaluate(epoch, state)
            record.update(evaluation)
            if writer is not None:
                writer.write({"kind": "eval", "epoch": epoch, **evaluation, "seconds": seconds()})
        history.append(record)
        bar.set_postfix({k: round(v, 2) for k, v in record.items() if k != "epoch"})
        if checkpointing is not None and (epoch == num_epochs or
                                          (checkpointing.every and epoch % checkpointing.every == 0)):
            checkpointing.checkpointer.save(epoch, state, {"config": checkpointing.config, "history": history,
                                                           "train_seconds": seconds()})
    jax.block_until_ready(state)
    return TrainResult(state, history, seconds(), timed_from_epoch)
