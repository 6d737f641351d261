"""Draw the curves of a running or finished job from its live metrics file (vi_jax.metrics).

    python -m experiments.plot_metrics runs/iwae_k1                     # -> runs/iwae_k1/metrics.png
    python -m experiments.plot_metrics runs/compare --output compare.png  # every metrics*.jsonl there
    python -m experiments.plot_metrics runs/vae/metrics.jsonl

PATH is a workdir (its metrics.jsonl, else every metrics*.jsonl in it, one labelled set of curves
each) or a metrics file. Panels: train ELBO per epoch and the held-out ELBO / IWAE at each
evaluation; learning rate and KL warm-up weight. A job still running may be mid-line: its cut-off
last line is left out; any other malformed line is an error naming the file and the line.
Writes --output (default: metrics.png beside the metrics file, or in the workdir) atomically.
"""
from __future__ import annotations

import argparse
import glob
import os

from vi_jax import plotting
from vi_jax.metrics import MetricsError, read_metrics

from ._common import save_figure


def metrics_files(path: str) -> list[str]:
    """The metrics files PATH names (see the module docstring); FileNotFoundError names the file."""
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: give a workdir or its metrics.jsonl")
        return [path]
    default = os.path.join(path, "metrics.jsonl")
    files = [default] if os.path.exists(default) else sorted(glob.glob(os.path.join(path, "metrics*.jsonl")))
    if not files:
        raise FileNotFoundError(f"{default} not found (nor any metrics*.jsonl in {path}): has the job "
                                "started training?")
    return files


def run(path: str, output: str | None = None) -> str:
    """Plot the metrics file(s) of PATH into output (default beside them); return the output path."""
    files = metrics_files(path)
    runs = {}
    for file in files:
        records = read_metrics(file)
        if not records:
            raise MetricsError(f"{file} holds no complete line yet")
        label = os.path.basename(file)[len("metrics"):-len(".jsonl")].lstrip("_-") if len(files) > 1 else ""
        runs[label] = records
    if output is None:
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        output = os.path.join(directory, "metrics.png")
    fig = plotting.metrics_curves(runs, title=os.path.abspath(path))
    save_figure(fig, output)
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a workdir, or a metrics .jsonl file")
    parser.add_argument("--output", default=None, help="the PNG to write (default: metrics.png beside the file)")
    args = parser.parse_args(argv)
    try:
        output = run(args.path, args.output)
    except (FileNotFoundError, MetricsError) as err:
        raise SystemExit(f"plot_metrics: {err}") from None
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
