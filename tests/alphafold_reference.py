"""AlphaFold 2.0's Haiku modules that the `haiku` layout targets, restated for the tests.

This follows alphafold 2.0.0 (the PyPI release) line by line in what it computes:
`Attention` from alphafold/model/modules.py, `Linear` from
alphafold/model/common_modules.py and `flat_params_to_haiku` from
alphafold/model/utils.py — the same `hk.get_parameter` names, shapes and order, the
same einsum equations and the same order of operations (AlphaFold applies its
LayerNorms as `haiku.LayerNorm` itself). AlphaFold is not installed for the tests: its
package pins old jax, numpy and tensorflow that would replace the environment's.
"""

from __future__ import annotations

from collections.abc import Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np


class Config(dict):
    """Attribute access, as on the ml_collections.ConfigDict AlphaFold passes its modules."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def flat_params_to_haiku(params: Mapping[str, np.ndarray]) -> dict:
    """utils.flat_params_to_haiku: `scope//name` -> params[scope][name] (a jnp array)."""
    hk_params: dict = {}
    for path, array in params.items():
        scope, name = path.split("//")  # a key without exactly one `//` raises here
        if scope not in hk_params:
            hk_params[scope] = {}
        hk_params[scope][name] = jnp.array(array)
    return hk_params


def glorot_uniform() -> hk.initializers.Initializer:
    return hk.initializers.VarianceScaling(scale=1.0, mode="fan_avg", distribution="uniform")


class Attention(hk.Module):
    """modules.Attention: multi-head attention with keys and values from one `m_data`."""

    def __init__(self, config, global_config, output_dim: int, name: str = "attention"):
        super().__init__(name=name)
        self.config = config
        self.global_config = global_config
        self.output_dim = output_dim

    def __call__(self, q_data, m_data, bias, nonbatched_bias=None):
        """q_data (B,Q,Dq), m_data (B,K,Dm), bias added to the logits (B,1,Q,K) or any
        shape that broadcasts to (B,N,Q,K), nonbatched_bias (N,Q,K) or (Q,K)."""
        key_dim = self.config.get("key_dim", int(q_data.shape[-1]))
        value_dim = self.config.get("value_dim", int(m_data.shape[-1]))
        num_head = self.config.num_head
        assert key_dim % num_head == 0
        assert value_dim % num_head == 0
        key_dim = key_dim // num_head  # per head from here on
        value_dim = value_dim // num_head

        q_weights = hk.get_parameter(
            "query_w", shape=(q_data.shape[-1], num_head, key_dim), init=glorot_uniform()
        )
        k_weights = hk.get_parameter(
            "key_w", shape=(m_data.shape[-1], num_head, key_dim), init=glorot_uniform()
        )
        v_weights = hk.get_parameter(
            "value_w", shape=(m_data.shape[-1], num_head, value_dim), init=glorot_uniform()
        )

        q = jnp.einsum("bqa,ahc->bqhc", q_data, q_weights) * key_dim ** (-0.5)  # (B,Q,N,H)
        k = jnp.einsum("bka,ahc->bkhc", m_data, k_weights)  # (B,K,N,H)
        v = jnp.einsum("bka,ahc->bkhc", m_data, v_weights)  # (B,K,N,Hv)
        logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) + bias  # (B,N,Q,K)
        if nonbatched_bias is not None:
            logits += jnp.expand_dims(nonbatched_bias, axis=0)
        weights = jax.nn.softmax(logits)
        weighted_avg = jnp.einsum("bhqk,bkhc->bqhc", weights, v)  # (B,Q,N,Hv)

        zero = self.global_config.zero_init
        init = hk.initializers.Constant(0.0) if zero else glorot_uniform()

        if self.config.gating:
            gating_weights = hk.get_parameter(
                "gating_w",
                shape=(q_data.shape[-1], num_head, value_dim),
                init=hk.initializers.Constant(0.0),
            )
            gating_bias = hk.get_parameter(
                "gating_b", shape=(num_head, value_dim), init=hk.initializers.Constant(1.0)
            )
            gate_values = jnp.einsum("bqc, chv->bqhv", q_data, gating_weights) + gating_bias
            gate_values = jax.nn.sigmoid(gate_values)
            weighted_avg *= gate_values

        o_weights = hk.get_parameter(
            "output_w", shape=(num_head, value_dim, self.output_dim), init=init
        )
        o_bias = hk.get_parameter(
            "output_b", shape=(self.output_dim,), init=hk.initializers.Constant(0.0)
        )
        return jnp.einsum("bqhc,hco->bqo", weighted_avg, o_weights) + o_bias  # (B,Q,Dout)


class Linear(hk.Module):
    """common_modules.Linear: `...c, cd -> ...d` plus a bias, over inputs of any rank."""

    def __init__(
        self,
        num_output: int,
        initializer: str = "linear",
        use_bias: bool = True,
        bias_init: float = 0.0,
        name: str = "linear",
    ):
        super().__init__(name=name)
        self.num_output = num_output
        self.initializer = initializer
        self.use_bias = use_bias
        self.bias_init = bias_init

    def __call__(self, inputs):
        n_channels = int(inputs.shape[-1])
        weight_shape = [n_channels, self.num_output]
        if self.initializer == "linear":
            weight_init = hk.initializers.VarianceScaling(mode="fan_in", scale=1.0)
        elif self.initializer == "relu":
            weight_init = hk.initializers.VarianceScaling(mode="fan_in", scale=2.0)
        else:  # "zeros"
            weight_init = hk.initializers.Constant(0.0)
        weights = hk.get_parameter("weights", weight_shape, inputs.dtype, weight_init)

        # einsum('...c,cd->...d') through swapped axes, as AlphaFold writes it
        inputs = jnp.swapaxes(inputs, -1, -2)
        output = jnp.einsum("...cb,cd->...db", inputs, weights)
        output = jnp.swapaxes(output, -1, -2)

        if self.use_bias:
            bias = hk.get_parameter(
                "bias", [self.num_output], inputs.dtype, hk.initializers.Constant(self.bias_init)
            )
            output += bias
        return output


# The manifest's module names (as AlphaFold 2.0 spells them) -> the module to build.
MODULES = {
    "alphafold.model.modules.Attention": Attention,
    "alphafold.model.common_modules.Linear": Linear,
    "haiku.LayerNorm": hk.LayerNorm,
    "haiku.Embed": hk.Embed,
}
