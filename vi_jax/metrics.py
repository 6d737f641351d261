"""Live training metrics: one JSON line per epoch and per held-out evaluation, written as it goes.

    train_vae(vae, config, x, metrics="runs/vae/metrics.jsonl")    # a path, or a MetricsWriter
    tail -f runs/vae/metrics.jsonl;  python -m experiments.plot_metrics runs/vae

Every record has "kind" ("train": one per epoch; "eval": one per held-out evaluation) and
"epoch"; the training loops add what they know: train_elbo, train_loss (the minimised
objective's epoch mean), learning_rate, kl_weight (the epoch's mean warm-up weight beta_t),
stage, the eval_* values of the history, and seconds (training wall time so far). The fields
that a loop's history holds carry the same names and values there.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Protocol, Union

from vi_jax import storage


class MetricsError(ValueError):
    """A metrics file that cannot be read: the message names the file and the line."""


class MetricsWriter(Protocol):
    def begin(self, first_epoch: int) -> None:
        """Called once before a loop's first epoch; first_epoch > 1 is a resumed run, and what the
        writer holds from that epoch on (written after the checkpoint) is dropped."""

    def write(self, record: dict) -> None:
        """Record one line (kept even if the process dies right after)."""


# what a training loop's `metrics` argument takes: nothing, a JSON-lines path, or a writer
MetricsTarget = Union[None, str, os.PathLike, MetricsWriter]


def _parse(path: str) -> list[tuple[str, dict]]:
    """(line, record) pairs of a metrics file; see read_metrics."""
    with open(path) as f:
        lines = f.read().split("\n")
    lines.pop()  # what follows the last newline: "" unless the last write was cut short (skipped)
    pairs = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MetricsError(f"{path}, line {number}: malformed metrics line ({err.msg}): {line[:80]!r}") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise MetricsError(f"{path}, line {number}: a metrics line is a JSON object with an integer "
                               f"'epoch', got {line[:80]!r}")
        pairs.append((line, record))
    return pairs


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics file, in order. A malformed line is a MetricsError naming the file
    and the line number; only an unterminated last line (a running job mid-write) is skipped."""
    return [record for _, record in _parse(path)]


class JsonlWriter:
    """Appends each record to `path` as one JSON line; the file is opened and closed per line, so
    every line is on disk (for `tail -f` or a plot) as soon as its epoch ends."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)

    def begin(self, first_epoch: int) -> None:
        kept = []
        if first_epoch > 1 and os.path.exists(self.path):
            kept = [line + "\n" for line, record in _parse(self.path) if record["epoch"] < first_epoch]
        storage.atomic_write_text(self.path, "".join(kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoardWriter:
    """Each numeric field of a record as the TensorBoard scalar "kind/field" at step = epoch, in
    `logdir` (needs tensorboardX: pip install 'vi-jax[tensorboard]')."""

    def __init__(self, logdir: Union[str, os.PathLike]):
        self.logdir = os.fspath(logdir)
        self.writer = None

    def begin(self, first_epoch: int) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as err:
            raise ImportError("TensorBoardWriter needs tensorboardX: pip install 'vi-jax[tensorboard]'") from err
        # purge_step: a resumed run hides the events its crashed predecessor logged after the checkpoint
        self.writer = SummaryWriter(self.logdir, purge_step=first_epoch if first_epoch > 1 else None)

    def write(self, record: dict) -> None:
        for name, value in record.items():
            if name not in ("kind", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{record['kind']}/{name}", value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_writer(metrics: MetricsTarget, first_epoch: int = 1) -> Optional[MetricsWriter]:
    """The writer a training loop's `metrics` argument names (a path: a JsonlWriter), begun at
    first_epoch; None for None (a library call without a workdir writes nothing)."""
    if metrics is None:
        return None
    writer = JsonlWriter(metrics) if isinstance(metrics, (str, os.PathLike)) else metrics
    writer.begin(first_epoch)
    return writer
