"""The experiment scripts: `python -m experiments.NAME` from a checkout; installed, the package
vi_jax_experiments and the console scripts vi-jax-NAME (pyproject.toml). Their scaffold is _common."""
