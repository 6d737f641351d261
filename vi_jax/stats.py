"""The summary every result reports over datapoints: `mean_and_stderr`.

For per-datapoint values v_1..v_n (as float64),

    mean   = (1/n) sum_i v_i
    stderr = s / sqrt(n),   s^2 = 1/(n - 1) sum_i (v_i - mean)^2   (sample std, ddof=1)

the standard error of the mean (stderr is nan when n < 2). A NaN or inf among the values is
an error (FloatingPointError), never averaged in.
"""
from __future__ import annotations

import numpy as np


def mean_and_stderr(values) -> dict:
    """{"mean", "stderr"} of per-datapoint values; stderr = sample std / sqrt(n)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise FloatingPointError(f"{np.sum(~np.isfinite(values))} of {values.size} values are NaN/inf")
    stderr = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
    return {"mean": float(values.mean()), "stderr": float(stderr)}
