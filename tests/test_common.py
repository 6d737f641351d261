"""experiments/_common.py: the scaffold's flags -> (config, workdir, run keywords), on a toy config."""
import dataclasses
import json

import pytest

from experiments._common import Cli, FieldFlag, RunFlags, write_report


@dataclasses.dataclass(frozen=True)
class Inner:
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Toy:
    seed: int = 0
    inner: Inner = Inner()
    n: int = 1
    name: str = ""
    switch: bool = False


CLI = Cli("toy", Toy, workdir="runs/toy", writes="toy.json", example="--set n=2", quick=["n=5", "name=quick"],
          seed=("seed", "inner.seed"), data_dir=True,
          flags=[FieldFlag("--name", "name", "sets name"), FieldFlag("--switch", "switch", "sets switch", value="true")])
DEFAULT_KWARGS = {"overwrite": False, "clear_stale_lock": False, "data_dir": None, "progress": True}


@pytest.mark.parametrize("argv,config", [
    ([], Toy()),
    (["--quick"], Toy(n=5, name="quick")),
    (["--quick", "--set", "n=7"], Toy(n=7, name="quick")),  # --set after --quick
    (["--set", "seed=3", "--seed", "4"], Toy(seed=4, inner=Inner(4))),  # --seed sets every field named, after --set
    (["--set", "name=a", "--name", "b"], Toy(name="b")),  # a FieldFlag after --set
    (["--switch"], Toy(switch=True)),
], ids=["defaults", "quick", "set_after_quick", "seed_after_set", "field_flag_after_set", "switch"])
def test_flags_become_the_config(argv, config):
    assert CLI.parse(argv) == (config, "runs/toy", DEFAULT_KWARGS)


def test_workdir_flags_become_run_keywords():
    _, workdir, kwargs = CLI.parse(["--workdir", "W", "--overwrite", "--clear-stale-lock", "--data-dir", "D",
                                    "--no-progress"])
    assert (workdir, kwargs) == ("W", {"overwrite": True, "clear_stale_lock": True, "data_dir": "D",
                                       "progress": False})


def test_flags_an_experiment_does_not_declare_are_usage_errors(capsys):
    bare = Cli("bare", Toy, workdir="runs/bare", writes="bare.json", example="--set n=2", seed=(), staged=False,
               progress=False)
    assert bare.parse([]) == (Toy(), "runs/bare", {})
    for flag in ("--quick", "--seed", "--overwrite", "--data-dir", "--no-progress"):
        with pytest.raises(SystemExit) as exit_info:
            bare.parse([flag])
        assert exit_info.value.code == 2 and f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_run_flags_add_run_keywords():
    extra = RunFlags(lambda parser: parser.add_argument("--again", action="store_true"),
                     lambda args: {"again": args.again})
    cli = dataclasses.replace(CLI, extra=[extra])
    assert cli.parse(["--again"])[2] == {**DEFAULT_KWARGS, "again": True}


def test_main_runs_and_reports(capsys):
    calls = []

    def run(config, workdir, **kwargs):
        calls.append((config, workdir, kwargs))
        return {"n": config.n}

    CLI.main(run, report=lambda result: f"n is {result['n']}")(["--set", "n=3", "--workdir", "W"])
    assert calls == [(Toy(n=3), "W", DEFAULT_KWARGS)]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "n is 3" and out[1].startswith("wrote W/toy.json in ")


def test_bad_override_names_the_field():
    with pytest.raises(ValueError, match="unknown config field 'm'"):
        CLI.parse(["--set", "m=1"])


def test_write_report_writes_the_markdown_and_the_json(tmp_path):
    result = {"seed": 0}
    assert write_report(str(tmp_path), "toy", result, "# toy\n") is result
    assert (tmp_path / "toy.md").read_text() == "# toy\n"
    assert json.loads((tmp_path / "toy.json").read_text()) == result
