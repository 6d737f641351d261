"""Type aliases shared by vi_jax's modules (annotations only: nothing is checked at run time)."""
from typing import Any

import jax

Array = jax.Array
# A pytree of arrays: model parameters, one family member's parameters, or a table of them
# (every leaf with a leading N axis).
Params = Any
# A jax.random key: a typed key (jax.random.key) or a raw uint32[2] one (jax.random.PRNGKey).
PRNGKey = jax.Array
