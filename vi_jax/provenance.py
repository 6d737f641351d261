"""What produced a result: package versions, device, platform (stored with every result)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess

import jax

PACKAGES = ("vi-jax", "jax", "jaxlib", "flax", "optax", "distrax", "chex", "blackjax", "numpy",
            "scikit-learn", "tensorflow-datasets", "matplotlib")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one): the size of
    XLA's CPU thread pool, on which the local fit's block layout depends."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def environment() -> dict:
    """Versions, git commit, Python, platform, the cores this process may use and the JAX devices."""
    devices = jax.devices()
    return {
        "versions": {name: _version(name) for name in PACKAGES},
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
    }
