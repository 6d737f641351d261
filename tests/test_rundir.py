"""A run's workdir as one unit: bad workdirs refused before any work, the lock (concurrent run,
stale lock of a killed run), reuse refused unless overwrite/resume, staging and the manifest."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from vi_jax import rundir, storage
from vi_jax.rundir import RunDirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
calls = []


@rundir.staged
def toy_run(config, workdir, *, fail=False, resume=False):
    """Writes a.json and sub/b.txt (a nested folder, as reproduce's gap/), then maybe fails."""
    calls.append(config)
    storage.atomic_write_json(os.path.join(workdir, "a.json"), {"config": config})
    storage.atomic_write_text(os.path.join(workdir, "sub", "b.txt"), config)
    if fail:
        raise RuntimeError("boom")
    return config


def read(workdir):
    return storage.read_json(os.path.join(workdir, "a.json"))["config"]


def test_run_publishes_its_files_with_a_manifest(tmp_path):
    workdir = str(tmp_path / "run")
    assert toy_run("one", workdir) == "one"
    assert sorted(os.listdir(workdir)) == ["MANIFEST.json", "a.json", "sub"]
    manifest = rundir.verify(workdir)
    assert manifest["format"] == "vi_jax-run/1" and manifest["status"] == "complete"
    assert manifest["experiment"] == __name__
    assert manifest["config_sha256"] == rundir.config_sha256({"config": "one", "args": ()})
    assert sorted(manifest["files"]) == ["a.json", os.path.join("sub", "b.txt")]
    assert manifest["files"]["a.json"] == {"size": os.path.getsize(os.path.join(workdir, "a.json")),
                                           "sha256": rundir.file_sha256(os.path.join(workdir, "a.json"))}


def _bad_workdirs(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o555)
    return {
        "empty_string": ("", "empty path"),
        "blank": ("  ", "empty path"),
        "a_file": (str(a_file), "exists and is not a directory"),
        "below_a_file": (str(a_file / "run"), "cannot create or write the workdir"),
        "not_creatable": ("/sys/vi_jax_run", "cannot create or write the workdir"),
        "read_only": (str(read_only), "cannot create or write the workdir"),
    }


@pytest.mark.parametrize("case", ["empty_string", "blank", "a_file", "below_a_file", "not_creatable", "read_only"])
def test_bad_workdir_is_refused_before_any_work(tmp_path, case):
    if case == "read_only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    workdir, message = _bad_workdirs(tmp_path)[case]
    calls.clear()
    with pytest.raises(RunDirError, match=message):
        toy_run("one", workdir)
    assert calls == []


def test_reused_workdir_is_refused_unless_overwrite_or_resume(tmp_path):
    workdir = str(tmp_path / "run")
    toy_run("one", workdir)
    with pytest.raises(RunDirError, match=r"holds the results of another run \(test_rundir, finished .*--overwrite"):
        toy_run("two", workdir)
    assert read(workdir) == "one"
    with open(os.path.join(workdir, "stray.png"), "w") as f:  # a file of yet another run
        f.write("x")
    toy_run("two", workdir, overwrite=True)
    assert read(workdir) == "two" and not os.path.exists(os.path.join(workdir, "stray.png"))
    toy_run("three", workdir, resume=True)
    assert rundir.verify(workdir)["files"].keys() == {"a.json", os.path.join("sub", "b.txt")}
    with pytest.raises(RunDirError, match="exclude each other"):
        toy_run("four", workdir, overwrite=True, resume=True)


@pytest.mark.parametrize("where", ["cwd", "parent", "git_checkout"])
def test_overwrite_refuses_a_directory_that_is_not_a_workdir(tmp_path, monkeypatch, where):
    (tmp_path / "project" / "src").mkdir(parents=True)
    (tmp_path / "project" / "notes.txt").write_text("keep")
    workdir = {"cwd": ".", "parent": "..", "git_checkout": str(tmp_path / "project")}[where]
    monkeypatch.chdir(tmp_path / "project" / ("src" if where == "parent" else ""))
    if where == "git_checkout":
        monkeypatch.chdir(tmp_path)
        (tmp_path / "project" / ".git").mkdir()
    with pytest.raises(RunDirError, match="refusing to overwrite"):
        toy_run("one", workdir, overwrite=True)
    assert (tmp_path / "project" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("flag, survives", [("resume", True), ("overwrite", False)])
def test_failed_run_leaves_nothing_inconsistent(tmp_path, flag, survives):
    """A run that raises publishes nothing: resuming keeps the previous finished run intact,
    overwriting leaves a workdir that reads as unfinished; no staged file remains."""
    workdir = str(tmp_path / "run")
    toy_run("one", workdir)
    with pytest.raises(RuntimeError, match="boom"):
        toy_run("two", workdir, fail=True, **{flag: True})
    assert not any(name.startswith(".staging-") or name == ".lock" for name in os.listdir(workdir))
    if survives:
        rundir.verify(workdir)
        assert read(workdir) == "one"
    else:
        with pytest.raises(RunDirError, match="MANIFEST.json: missing"):
            rundir.verify(workdir)


def test_refused_run_leaves_no_empty_workdir(tmp_path):
    with pytest.raises(RuntimeError):
        toy_run("one", str(tmp_path / "new" / "run"), fail=True)
    assert os.listdir(tmp_path) == []


TAMPER = {
    "changed": (lambda w: open(os.path.join(w, "a.json"), "a").write(" "), r"a\.json: damaged or replaced .*size"),
    "same_size": (lambda w: open(os.path.join(w, "sub", "b.txt"), "w").write("eno"), r"b\.txt: damaged or replaced"),
    "missing": (lambda w: os.unlink(os.path.join(w, "a.json")), r"a\.json: listed in MANIFEST.json but missing"),
    "extra": (lambda w: open(os.path.join(w, "manifold.png"), "w").write("x"), r"manifold\.png: not in MANIFEST"),
    "no_manifest": (lambda w: os.unlink(os.path.join(w, "MANIFEST.json")), r"missing, so .* holds no finished run.*"
                                                                           r"python -m experiments.workdir adopt"),
    "bad_manifest": (lambda w: open(os.path.join(w, "MANIFEST.json"), "w").write("{"), "MANIFEST.json: not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_verify_names_the_file_of_a_mixed_or_damaged_run(tmp_path, case):
    workdir = str(tmp_path / "run")
    toy_run("one", workdir)
    tamper, message = TAMPER[case]
    tamper(workdir)
    with pytest.raises(RunDirError if case != "bad_manifest" else ValueError, match=message):
        rundir.verify(workdir)


HOLDER = textwrap.dedent("""
    import os, sys, time
    from vi_jax import rundir, storage
    with rundir.open_run(sys.argv[1], "held") as staging:
        storage.atomic_write_text(os.path.join(staging, "half.txt"), "half")
        print("ready", flush=True)
        time.sleep(600)
""")


def test_concurrent_run_is_refused_and_a_killed_run_leaves_a_stale_lock(tmp_path):
    workdir = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, workdir], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunDirError, match=rf"workdir in use by pid {holder.pid} on .*started .*: -c"):
            toy_run("two", workdir)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # killed mid-run: nothing is loadable, the lock is reported stale until cleared
    with pytest.raises(RunDirError, match="MANIFEST.json: missing"):
        rundir.verify(workdir)
    with pytest.raises(RunDirError, match=rf"stale lock .* left by a run that did not finish \(pid {holder.pid} .*"
                                          r"--clear-stale-lock"):
        toy_run("two", workdir)
    toy_run("two", workdir, clear_stale_lock=True)
    assert sorted(os.listdir(workdir)) == ["MANIFEST.json", "a.json", "sub"]  # the half-written staging is gone


def test_checkpoint_dir_of_a_staged_run_is_in_the_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    with rundir.open_run(workdir, "c") as staging:
        assert rundir.checkpoint_dir(staging) == os.path.join(workdir, "checkpoints")
        assert rundir.verify(staging) == {}  # a run's own staged files are its work in progress
    assert rundir.checkpoint_dir(workdir) == os.path.join(workdir, "checkpoints")


def test_a_run_staged_inside_another_keeps_its_checkpoints_where_it_will_be_published(tmp_path):
    """reproduce stages its gap runs inside its own staging directory: their checkpoints (and live
    files) go to WORKDIR/gap, which an interrupted outer run does not discard, and which the
    outer run's publication then replaces with the finished gap run."""
    workdir = str(tmp_path / "run")
    with rundir.open_run(workdir, "outer") as staging:
        with rundir.open_run(os.path.join(staging, "gap"), "inner") as inner:
            assert rundir.checkpoint_dir(inner) == os.path.join(workdir, "gap", "checkpoints")
            assert rundir.live_path(inner, "metrics.jsonl") == os.path.join(workdir, "gap", "metrics.jsonl")
            os.makedirs(rundir.checkpoint_dir(inner))
            storage.atomic_write_json(os.path.join(inner, "gap.json"), {})
    assert sorted(os.listdir(os.path.join(workdir, "gap"))) == ["MANIFEST.json", "gap.json"]
    rundir.verify(workdir)


def test_adopt_writes_a_manifest_for_an_older_finished_run(tmp_path):
    workdir = tmp_path / "old"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "metrics.json").write_text(json.dumps({"a": 1}))
    checked = []
    manifest = rundir.adopt(str(workdir), checked.append)
    assert checked == [str(workdir)] and manifest["status"] == "adopted"
    assert list(manifest["files"]) == ["metrics.json"]  # checkpoints carry checksums of their own
    with pytest.raises(RunDirError, match="exists already"):
        rundir.adopt(str(workdir))


def test_adopt_refuses_a_run_that_fails_its_check(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")

    def check(workdir):
        raise ValueError(f"{workdir}: not finished")

    with pytest.raises(ValueError, match="not finished"):
        rundir.adopt(str(tmp_path), check)
    assert not (tmp_path / "MANIFEST.json").exists() and not (tmp_path / ".lock").exists()
