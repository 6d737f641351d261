"""Flax linen networks: an MLP used as encoder (x -> variational parameters) and decoder
(z -> likelihood parameters)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jax.nn.tanh,
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "swish": jax.nn.swish,
}

KERNEL_INITS = {
    "lecun_normal": nn.initializers.lecun_normal(),
    "glorot_uniform": nn.initializers.glorot_uniform(),
}


def check_network_options(activation: str, kernel_init: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    if kernel_init not in KERNEL_INITS:
        raise ValueError(f"unknown kernel_init {kernel_init!r}; known: {sorted(KERNEL_INITS)}")


class MLP(nn.Module):
    """h_0 = input, h_l = act(W_l h_{l-1} + b_l) for each hidden width, out = W h_L + b."""

    hidden: Sequence[int]
    num_outputs: int
    activation: str = "relu"
    kernel_init: str = "lecun_normal"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        init = KERNEL_INITS[self.kernel_init]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=init)(x))
        return nn.Dense(self.num_outputs, kernel_init=init)(x)


def encoder(hidden: Sequence[int], num_params: int, activation: str = "relu",
            kernel_init: str = "lecun_normal") -> MLP:
    """Amortized encoder x -> flat variational parameters (see VariationalFamily.unflatten)."""
    check_network_options(activation, kernel_init)
    return MLP(tuple(hidden), num_params, activation, kernel_init)


def decoder(hidden: Sequence[int], num_outputs: int, activation: str = "relu",
            kernel_init: str = "lecun_normal") -> MLP:
    """Decoder z -> likelihood parameters (see Likelihood.num_outputs)."""
    check_network_options(activation, kernel_init)
    return MLP(tuple(hidden), num_outputs, activation, kernel_init)


def with_output_bias(params, bias: jax.Array):
    """MLP params with the output layer's bias replaced by `bias` (e.g. the logits of the
    training set's pixel means, the Bernoulli decoder's start in Burda et al. 2015)."""
    layers = params["params"]
    output = f"Dense_{len(layers) - 1}"
    if layers[output]["bias"].shape != bias.shape:
        raise ValueError(f"output bias must have shape {layers[output]['bias'].shape}, got {bias.shape}")
    return {**params, "params": {**layers, output: {**layers[output], "bias": bias}}}
