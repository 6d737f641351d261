"""Progress off a terminal is whole lines at an interval; on a terminal it stays tqdm's bar."""
import io

import tqdm

from vi_jax.progress import LineProgress, trange


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run_loop(bar):
    for epoch in bar:
        bar.set_postfix({"train_elbo": -100.0 + epoch, "stage": 2})


def test_off_a_terminal_lines_are_plain_and_their_number_is_bounded():
    log = io.StringIO()
    run_loop(trange(1, 1001, file=log, interval=3600.0))
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2  # after the first epoch and after the last: none in between within an hour
    assert lines[0].startswith("train: 1/1000 epochs (0%)") and "train_elbo=-99" in lines[0]
    assert lines[1].startswith("train: 1000/1000 epochs (100%)") and "train_elbo=900, stage=2" in lines[1]


def test_a_zero_interval_gives_one_line_per_epoch():
    log = io.StringIO()
    run_loop(trange(3, 8, file=log, interval=0.0))
    lines = log.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["1/5", "2/5", "3/5", "4/5", "5/5"]


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("VI_JAX_PROGRESS_SECONDS", "12.5")
    bar = trange(1, 3, file=io.StringIO())
    assert isinstance(bar, LineProgress) and bar.interval == 12.5


def test_a_terminal_keeps_the_tqdm_bar_and_disabled_progress_writes_nothing():
    screen = Terminal()
    bar = trange(1, 4, file=screen)
    assert isinstance(bar, tqdm.tqdm)
    run_loop(bar)
    assert "\r" in screen.getvalue()
    quiet = io.StringIO()
    run_loop(trange(1, 4, file=quiet, enabled=False))
    assert quiet.getvalue() == ""
