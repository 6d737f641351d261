"""The named key streams of a seeded run: every key a run draws descends from
fold_in(PRNGKey(seed), STREAM) for one of these, so no two parts of a run share draws and a
resumed run rebuilds the same keys. The numbers are fixed: changing one changes every result."""
from __future__ import annotations

import jax

from vi_jax.array_types import PRNGKey

INIT = 0  # parameter initialisation
EPOCHS = 1  # training: epoch e draws fold_in(fold_in(root, EPOCHS), e) (vi_jax.loop)
EVALUATIONS = 2  # held-out evaluation at epoch e: fold_in(fold_in(root, EVALUATIONS), e); the CVAE's final one
FINAL_EVALUATION = 3  # experiments.train_vae's final ELBO / IWAE (its periodic ones use EVALUATIONS)
HELD_OUT_BINARIZATION = 4  # the one fixed Bernoulli draw of a dynamically binarized test split
HELD_OUT_ROWS = 5  # experiments.reproduce's seeded held-out subsets (validation stand-in, --num-test)


def stream(seed: int, name: int) -> PRNGKey:
    """fold_in(PRNGKey(seed), name): the root key of one named stream of the run with this seed."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), name)
