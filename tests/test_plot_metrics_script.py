"""experiments/plot_metrics.py on small metrics files: the curves, a running job's cut-off last
line, and errors that name the file and the line."""
import json

import pytest

from experiments import plot_metrics
from vi_jax import plotting

RECORDS = [
    {"kind": "train", "epoch": 1, "train_elbo": -50.0, "train_loss": 49.0, "kl_weight": 0.5, "learning_rate": 1e-3,
     "seconds": 1.0},
    {"kind": "train", "epoch": 2, "train_elbo": -45.0, "train_loss": 45.0, "kl_weight": 1.0, "learning_rate": 1e-3,
     "seconds": 2.0},
    {"kind": "eval", "epoch": 2, "eval_elbo": -46.0, "eval_iwae_100": -44.0, "seconds": 2.5},
    {"kind": "train", "epoch": 3, "train_elbo": -44.0, "train_loss": 44.0, "kl_weight": 1.0, "learning_rate": 3e-4,
     "seconds": 3.0},
]


def write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_a_workdir_into_its_metrics_png_while_the_job_is_mid_line(tmp_path, capsys):
    write(tmp_path / "metrics.jsonl", RECORDS, tail='{"kind": "train", "epoch": 4, "tra')
    plot_metrics.main([str(tmp_path)])
    assert is_png(tmp_path / "metrics.png")
    assert f"wrote {tmp_path / 'metrics.png'}" in capsys.readouterr().out
    plot_metrics.main([str(tmp_path / "metrics.jsonl"), "--output", str(tmp_path / "out" / "curves.png")])
    assert is_png(tmp_path / "out" / "curves.png")


def test_the_figure_holds_every_curve():
    fig = plotting.metrics_curves({"": RECORDS})
    nats, rate, weight = fig.axes
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for ax in fig.axes for line in ax.get_lines()}
    assert lines["train ELBO"] == ([1, 2, 3], [-50.0, -45.0, -44.0])
    assert lines["eval_elbo"] == ([2], [-46.0]) and lines["eval_iwae_100"] == ([2], [-44.0])
    assert lines["learning rate"] == ([1, 2, 3], [1e-3, 1e-3, 3e-4]) and rate.get_yscale() == "log"
    assert lines["KL weight"] == ([1, 2, 3], [0.5, 1.0, 1.0])
    plotting.close(fig)


def test_a_workdir_of_several_runs_gets_one_labelled_set_of_curves_each(tmp_path):
    for mode in ("amortized", "semi_amortized"):
        write(tmp_path / f"metrics_{mode}.jsonl", RECORDS)
    assert plot_metrics.metrics_files(str(tmp_path)) == [str(tmp_path / f"metrics_{m}.jsonl")
                                                         for m in ("amortized", "semi_amortized")]
    plot_metrics.main([str(tmp_path)])
    assert is_png(tmp_path / "metrics.png")


@pytest.mark.parametrize("tail,message", [
    ("not json\n", r"metrics\.jsonl, line 5: malformed metrics line"),
    ('{"kind": "train"}\n', r"metrics\.jsonl, line 5: a metrics line is a JSON object with an integer 'epoch'"),
], ids=["malformed_line", "no_epoch"])
def test_a_malformed_line_is_an_error_naming_the_file_and_the_line(tmp_path, tail, message):
    write(tmp_path / "metrics.jsonl", RECORDS, tail=tail + json.dumps(RECORDS[0]) + "\n")
    with pytest.raises(SystemExit, match=message):
        plot_metrics.main([str(tmp_path)])
    assert not (tmp_path / "metrics.png").exists()


def test_a_missing_or_empty_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(SystemExit, match=rf"{tmp_path / 'metrics.jsonl'} not found"):
        plot_metrics.main([str(tmp_path)])
    with pytest.raises(SystemExit, match=rf"{tmp_path / 'gone.jsonl'} not found"):
        plot_metrics.main([str(tmp_path / "gone.jsonl")])
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "ep')
    with pytest.raises(SystemExit, match="holds no complete line yet"):
        plot_metrics.main([str(tmp_path)])
