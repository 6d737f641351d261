"""Progress of a training loop: tqdm's bar on a terminal, whole lines at an interval in a log.

Off a terminal (a job's log file, a pipe) tqdm's carriage-return updates pile up into one
endless line; there `trange` prints one plain line after the first step, then at most one per
`interval` seconds, and one after the last: at most 2 + run time / interval lines. The interval
is VI_JAX_PROGRESS_SECONDS (default 60) unless given.
"""
from __future__ import annotations

import os
import sys
import time
from numbers import Number
from typing import Optional, TextIO

import tqdm

DEFAULT_INTERVAL_SECONDS = 60.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit}s ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class LineProgress:
    """The tqdm calls the training loops use (iteration, set_postfix), as whole lines."""

    def __init__(self, iterable: range, *, desc: str, unit: str, interval: float, file: TextIO):
        self.iterable, self.desc, self.unit, self.interval, self.file = iterable, desc, unit, interval, file
        self.postfix = None

    def set_postfix(self, values: dict) -> None:
        self.postfix = ", ".join(f"{k}={tqdm.tqdm.format_num(v) if isinstance(v, Number) else v}"
                                 for k, v in values.items())

    def __iter__(self):
        total = len(self.iterable)
        start = last = time.monotonic()
        for n, item in enumerate(self.iterable, start=1):
            yield item  # the loop body runs here, so the line below shows this step's postfix
            now = time.monotonic()
            if n == 1 or n == total or now - last >= self.interval:
                line = tqdm.tqdm.format_meter(n, total, now - start, prefix=self.desc, unit=self.unit,
                                              postfix=self.postfix, bar_format=LINE_FORMAT)
                self.file.write(line + "\n")
                self.file.flush()
                last = now


def trange(start: int, stop: int, *, enabled: bool = True, desc: str = "train", unit: str = "epoch",
           file: Optional[TextIO] = None, interval: Optional[float] = None):
    """range(start, stop) with progress on `file` (default stderr): a tqdm bar when it is a
    terminal (or when not enabled: silent), else a LineProgress every `interval` seconds."""
    stream = sys.stderr if file is None else file
    if not enabled or stream.isatty():
        return tqdm.trange(start, stop, desc=desc, unit=unit, file=file, disable=not enabled, mininterval=1.0)
    if interval is None:
        interval = float(os.environ.get("VI_JAX_PROGRESS_SECONDS", DEFAULT_INTERVAL_SECONDS))
    return LineProgress(range(start, stop), desc=desc, unit=unit, interval=interval, file=stream)
