"""pyproject.toml installs every package, experiments/ under a name that cannot collide, and a
console script per experiment."""
import importlib
import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# its workers and result runs start `python -m experiments.…` subprocesses: a checkout's command
NO_SCRIPT = {"benchmark"}

with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    PYPROJECT = tomllib.load(f)
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def installed_name(directory: str) -> str:
    """The package name a directory (relative to the root) installs as, by package-dir."""
    dotted = directory.replace(os.sep, ".")
    for name, where in SETUPTOOLS.get("package-dir", {}).items():
        if dotted == where or dotted.startswith(where + "."):
            return name + dotted[len(where):]
    return dotted


def test_every_package_directory_is_installed_and_experiments_is_not_a_top_level_name():
    found = set()
    for top in ("vi_jax", "experiments"):
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                found.add(installed_name(os.path.relpath(directory, ROOT)))
    assert set(SETUPTOOLS["packages"]) == found
    assert "vi_jax_experiments" in found and not any(name.split(".")[0] == "experiments" for name in found)


def test_every_experiment_has_a_console_script_running_its_main():
    scripts = PYPROJECT["project"]["scripts"]
    modules = {name[:-3] for name in os.listdir(os.path.join(ROOT, "experiments"))
               if name.endswith(".py") and not name.startswith("_")}
    assert set(scripts) == {f"vi-jax-{m.replace('_', '-')}" for m in modules - NO_SCRIPT}
    for script, target in scripts.items():
        module, function = target.split(":")
        package, name = module.split(".")
        assert package == "vi_jax_experiments" and script == f"vi-jax-{name.replace('_', '-')}"
        assert callable(getattr(importlib.import_module(f"experiments.{name}"), function))
