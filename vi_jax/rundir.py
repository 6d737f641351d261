"""A run's workdir as one unit on disk.

An experiment's `run(config, workdir, ...)` decorated with `@staged` first checks that the
workdir can be created and written, takes its lock (WORKDIR/.lock, naming the holding process)
and refuses a workdir that holds another run's results (unless `overwrite`, which clears them,
or `resume`). It then writes every result into a staging directory (WORKDIR/.staging-*), and
only when the whole run has succeeded publishes the files together: the old results go, the new
ones move in, and WORKDIR/MANIFEST.json is written last. A workdir without a manifest holds no
finished run. Checkpoints (WORKDIR/checkpoints) live outside the staging directory, so that
`--resume` finds them after an interrupted run; they carry checksums of their own
(vi_jax.checkpoint). So do the live metrics files (WORKDIR/metrics*.jsonl, `live_path`): a
running job can be tailed or plotted, and a resumed one appends to them. Neither is listed in
the manifest; --overwrite clears both.

MANIFEST.json:

    {"format": "vi_jax-run/1", "status": "complete" (or "adopted", see below),
     "experiment": "experiments.train_vae", "config_sha256": "<sha256 of the canonical JSON
     of the run's arguments>", "command": "...", "host": "...", "pid": 123,
     "started": "<UTC ISO time>", "finished": "<UTC ISO time>",
     "files": {"metrics.json": {"size": 1234, "sha256": "..."}, "gap/gap.json": {...}, ...}}

Loaders call `verify(workdir)`, which refuses a missing manifest, a listed file that is missing
or whose size or sha256 differs, and a file the manifest does not list (another run's file
mixed in), each with an error naming the file.

A workdir written before manifests existed (a finished run of an older version) is made
loadable by checking it and writing an "adopted" manifest:

    python -m experiments.workdir adopt runs/cremer_ffg     # checks, then writes MANIFEST.json
    python -m experiments.workdir verify runs/cremer_ffg    # checks a workdir against its manifest
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
from typing import Any, Callable, Iterator, Optional

from vi_jax import storage

FORMAT = "vi_jax-run/1"
MANIFEST = "MANIFEST.json"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
CHECKPOINTS = "checkpoints"
# run() arguments that do not change the results: left out of the config hash
NOT_CONFIG = ("progress", "data_dir", "resume", "resume_fallback")

# staging directory -> its workdir, for the runs this process has open (see checkpoint_dir, verify)
_ACTIVE: dict[str, str] = {}


class RunDirError(ValueError):
    """A workdir that cannot take this run, or a run on disk that cannot be trusted."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__class__": type(obj).__name__, **_jsonable(dataclasses.asdict(obj))}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def config_sha256(config: Any) -> str:
    """sha256 of the canonical JSON of `config` (dataclasses, dicts, sequences, scalars)."""
    return hashlib.sha256(json.dumps(_jsonable(config), sort_keys=True).encode()).hexdigest()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_live(name: str) -> bool:
    return name.startswith("metrics") and name.endswith(".jsonl")


def _is_reserved(name: str) -> bool:
    return name in (LOCK, CHECKPOINTS) or name.startswith(STAGING_PREFIX) or _is_live(name)


def _results(workdir: str) -> list[str]:
    """The top-level entries of workdir that belong to a run's results (manifest included)."""
    return sorted(name for name in os.listdir(workdir) if not _is_reserved(name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def check_writable(workdir: str) -> Optional[str]:
    """Create workdir if needed and prove it writable; RunDirError naming it if not. Returns
    the topmost directory created here (None if workdir existed)."""
    if not isinstance(workdir, str) or not workdir.strip():
        raise RunDirError(f"workdir {workdir!r}: empty path; pass a directory, e.g. --workdir runs/NAME")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunDirError(f"{workdir}: exists and is not a directory")
    created, parent = None, os.path.abspath(workdir)
    while not os.path.exists(parent):
        created, parent = parent, os.path.dirname(parent)
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as err:
        raise RunDirError(f"{workdir}: cannot create or write the workdir "
                          f"({err.strerror or type(err).__name__})") from err
    return created


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


class _Lock:
    """An exclusive flock on WORKDIR/.lock, whose content names the holder. The kernel drops the
    flock when the holder dies, so a lock file that is not empty but can be locked was left by a
    run that died: that is a stale lock."""

    def __init__(self, workdir: str, clear_stale: bool):
        self.path = os.path.join(workdir, LOCK)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise RunDirError(f"{workdir}: workdir in use by {_describe(self._read())}; wait for that run "
                                  "to finish or choose another --workdir") from None
            # another run may have released and unlinked the file between our open and flock
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)
        self.fd = fd
        previous = self._read()
        if previous:
            if not clear_stale:
                os.close(fd)
                raise RunDirError(
                    f"{workdir}: stale lock {self.path} left by a run that did not finish ({_describe(previous)}); "
                    "that process no longer holds it. Its unpublished files are discarded when the lock is "
                    f"cleared: rerun with --clear-stale-lock (clear_stale_lock=True) or delete {self.path}")
            for name in os.listdir(workdir):
                if name.startswith(STAGING_PREFIX):
                    _remove(os.path.join(workdir, name))
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                text = f.read()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {"command": "unknown (unreadable lock file)"}

    def release(self) -> None:
        os.ftruncate(self.fd, 0)  # an empty lock file is a released one
        os.unlink(self.path)
        os.close(self.fd)


def _manifest_summary(workdir: str) -> str:
    path = os.path.join(workdir, MANIFEST)
    if not os.path.exists(path):
        return "no manifest: an unfinished run, or one of an older version"
    try:
        manifest = storage.read_json(path)
        return f"{manifest.get('experiment')}, finished {manifest.get('finished')}"
    except ValueError:
        return "an unreadable manifest"


def _check_clearable(workdir: str) -> None:
    """Refuse to overwrite a directory that is plainly not a workdir (a mistyped --workdir . or ~)."""
    path, cwd = os.path.realpath(workdir), os.path.realpath(os.getcwd())
    home = os.path.realpath(os.path.expanduser("~"))
    if cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep) or path == home \
            or os.path.exists(os.path.join(path, ".git")):
        raise RunDirError(f"{workdir}: refusing to overwrite the current directory, one above it, the home directory "
                          "or a git checkout; choose a workdir of its own")


@contextlib.contextmanager
def open_run(workdir: str, config: Any, *, experiment: str = "", overwrite: bool = False, resume: bool = False,
             clear_stale_lock: bool = False) -> Iterator[str]:
    """Check and lock workdir, yield a staging directory for the run's results, publish them with
    a manifest when the block succeeds (discard them when it raises), release the lock."""
    if overwrite and resume:
        raise RunDirError(f"{workdir}: overwrite and resume exclude each other (overwrite clears the checkpoints)")
    created = check_writable(workdir)
    started = _now()
    lock = _Lock(workdir, clear_stale_lock)
    staging = None
    try:
        old = _results(workdir)
        if old and not (overwrite or resume):
            shown = ", ".join(old[:5]) + (", ..." if len(old) > 5 else "")
            raise RunDirError(f"{workdir}: holds the results of another run ({_manifest_summary(workdir)}; {shown}); "
                              "pass --overwrite to replace them, --resume to continue its checkpoints, "
                              "or choose another --workdir")
        if overwrite and old:
            _check_clearable(workdir)
        if overwrite:  # the manifest first: a workdir caught half-cleared reads as unfinished
            live = [n for n in os.listdir(workdir) if _is_live(n)]
            for name in sorted(old, key=lambda n: n != MANIFEST) + [CHECKPOINTS] + live:
                if os.path.lexists(os.path.join(workdir, name)):
                    _remove(os.path.join(workdir, name))
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=workdir)
        _ACTIVE[os.path.abspath(staging)] = workdir
        yield staging
        _publish(workdir, staging, {"experiment": experiment, "config_sha256": config_sha256(config),
                                    "started": started})
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if staging is not None:
            _ACTIVE.pop(os.path.abspath(staging), None)
        lock.release()
        if created is not None:  # a run refused or failed leaves no empty workdir (nor its new parents)
            path = os.path.abspath(workdir)
            while not os.listdir(path):
                os.rmdir(path)
                if path == created:
                    break
                path = os.path.dirname(path)


def _listing(root: str) -> dict:
    files = {}
    for directory, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(directory, name)
            files[os.path.relpath(path, root)] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
    return files


def _publish(workdir: str, staging: str, fields: dict) -> None:
    files = _listing(staging)
    if MANIFEST in files:
        raise RunDirError(f"{staging}: a run may not write its own {MANIFEST}")
    manifest_path = os.path.join(workdir, MANIFEST)
    if os.path.exists(manifest_path):  # from here until the new manifest, the workdir reads as unfinished
        os.unlink(manifest_path)
    for name in _results(workdir):
        _remove(os.path.join(workdir, name))
    for name in os.listdir(staging):
        os.replace(os.path.join(staging, name), os.path.join(workdir, name))
    os.rmdir(staging)
    _write_manifest(workdir, files, status="complete", **fields)


def _write_manifest(workdir: str, files: dict, **fields) -> None:
    manifest = {"format": FORMAT, **fields, "command": " ".join(sys.argv), "host": socket.gethostname(),
                "pid": os.getpid(), "finished": _now(), "files": files}
    storage.atomic_write_json(os.path.join(workdir, MANIFEST), manifest)


def _module_name(fn: Callable) -> str:
    """fn's module, by its import name also when it runs as `python -m` (then it is __main__)."""
    spec = getattr(sys.modules.get(fn.__module__), "__spec__", None)
    return spec.name if spec is not None else fn.__module__


def staged(fn: Callable) -> Callable:
    """Decorate an experiment's run(config, workdir, *args, **kwargs): the decorated run takes
    overwrite= and clear_stale_lock= as well, runs `fn` on a staging directory inside open_run and
    publishes its files (see the module docstring). The config hash covers config, args and the
    kwargs outside NOT_CONFIG."""
    @functools.wraps(fn)
    def run(config, workdir, *args, overwrite: bool = False, clear_stale_lock: bool = False, **kwargs):
        hashed = {"config": config, "args": args, **{k: v for k, v in kwargs.items() if k not in NOT_CONFIG}}
        with open_run(workdir, hashed, experiment=_module_name(fn), overwrite=overwrite,
                      resume=bool(kwargs.get("resume")), clear_stale_lock=clear_stale_lock) as staging:
            return fn(config, staging, *args, **kwargs)
    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The workdir flags every experiment script takes."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results (and checkpoints) of another run in the workdir")
    parser.add_argument("--clear-stale-lock", action="store_true",
                        help="clear the lock a run that died left in the workdir (its unpublished files go)")


def arguments(args: argparse.Namespace) -> dict:
    """The run() keyword arguments of add_arguments' flags."""
    return {"overwrite": args.overwrite, "clear_stale_lock": args.clear_stale_lock}


def _final_path(path: str) -> str:
    """Where `path` will be once the open runs holding it publish: a staging directory of an open
    run, or a path inside one, maps into that run's workdir (a run staged inside another's
    staging directory, as reproduce's gap runs are, maps through both)."""
    path = os.path.abspath(path)
    for staging, workdir in sorted(_ACTIVE.items(), key=lambda item: -len(item[0])):  # innermost first
        if path == staging or path.startswith(staging + os.sep):
            return _final_path(os.path.normpath(os.path.join(workdir, os.path.relpath(path, staging))))
    return path


def checkpoint_dir(workdir: str) -> str:
    """WORKDIR/checkpoints, also when `workdir` is the staging directory of an open run: the
    checkpoints stay where --resume finds them, whatever becomes of the staged results."""
    return os.path.join(_final_path(workdir), CHECKPOINTS)


def live_path(workdir: str, name: str) -> str:
    """WORKDIR/name for a live metrics file (metrics*.jsonl), also when `workdir` is the
    staging directory of an open run: it grows where a user can tail it while the run goes on."""
    if not _is_live(name):
        raise ValueError(f"live files are named metrics*.jsonl, got {name!r}")
    return os.path.join(_final_path(workdir), name)


def verify(workdir: str) -> dict:
    """The manifest of the finished run in workdir, after checking every file against it;
    RunDirError naming the file otherwise. The staging directory of a run open in this process
    is its own work in progress and passes unchecked (returns {})."""
    if os.path.abspath(workdir) in _ACTIVE:
        return {}
    path = os.path.join(workdir, MANIFEST)
    if not os.path.exists(path):
        raise RunDirError(
            f"{path}: missing, so {workdir} holds no finished run: it was interrupted, is still running, or was "
            "written by an older version before manifests. If it is an older version's finished run, check it "
            f"and write its manifest with `python -m experiments.workdir adopt {workdir}`")
    manifest = storage.read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "files" not in manifest:
        raise RunDirError(f"{path}: not a {FORMAT} manifest")
    for name, expected in manifest["files"].items():
        file = os.path.join(workdir, name)
        if not os.path.isfile(file):
            raise RunDirError(f"{file}: listed in {MANIFEST} but missing: the run's files were changed after "
                              "it finished")
        size = os.path.getsize(file)
        if size != expected["size"] or file_sha256(file) != expected["sha256"]:
            what = f"size {size}, manifest {expected['size']}" if size != expected["size"] else "sha256 differs"
            raise RunDirError(f"{file}: damaged or replaced since the run finished ({what})")
    extra = sorted(set(result_files(workdir)) - set(manifest["files"]))
    if extra:
        raise RunDirError(f"{os.path.join(workdir, extra[0])}: not in {MANIFEST}: a file of another run "
                          f"mixed into this one ({len(extra)} such file(s))")
    return manifest


def result_files(workdir: str) -> list[str]:
    """The result files of workdir, relative to it (not the manifest, lock, staging or checkpoints)."""
    names = []
    for name in _results(workdir):
        if name == MANIFEST:
            continue
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            names += [os.path.join(name, n) for n in _listing(path)]
        else:
            names.append(name)
    return names


def adopt(workdir: str, check: Optional[Callable[[str], Any]] = None) -> dict:
    """Write an "adopted" manifest for the finished run of an older version in workdir, after
    `check(workdir)` (which raises if the files are not one finished, consistent run). Refuses a
    workdir that has a manifest, is in use, or has unfinished staged files."""
    if os.path.exists(os.path.join(workdir, MANIFEST)):
        raise RunDirError(f"{os.path.join(workdir, MANIFEST)}: exists already; `verify` checks it")
    if not os.path.isdir(workdir) or not _results(workdir):
        raise RunDirError(f"{workdir}: holds no results to adopt")
    lock = _Lock(workdir, clear_stale=False)
    try:
        if any(name.startswith(STAGING_PREFIX) for name in os.listdir(workdir)):
            raise RunDirError(f"{workdir}: holds unpublished staged files of a run of this version: not an older run")
        if check is not None:
            check(workdir)
        files = {name: {"size": os.path.getsize(os.path.join(workdir, name)),
                        "sha256": file_sha256(os.path.join(workdir, name))} for name in result_files(workdir)}
        _write_manifest(workdir, files, status="adopted", experiment="unknown (older version)",
                        config_sha256=None, started=None)
    finally:
        lock.release()
    return verify(workdir)
