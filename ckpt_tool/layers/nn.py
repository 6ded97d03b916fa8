"""Softmax with a mask, the two ways Keras 3 does it.

- `keras_masked_softmax` is the `keras.layers.Softmax` layer called with a
  mask (what MultiHeadAttention uses when it materialises the scores): masked
  logits are *replaced* by -1e9, softmax over `axes` (several axes: via
  logsumexp), then masked probabilities are set to 0, so a row whose every
  key is masked gives all zeros.
- `dot_product_attention_softmax` is `keras.ops.dot_product_attention` on the
  TensorFlow backend (MultiHeadAttention's fast path): masked logits are
  replaced by -0.7 * 3.38953e38 and nothing is zeroed afterwards, so a fully
  masked row is a uniform distribution over its keys.
"""

from __future__ import annotations

import numpy as np

from ckpt_tool.layers.activations import logsumexp, softmax
from ckpt_tool.layers.base import LayerConfigError

# keras.layers.Softmax's `_large_negative_number` (float16 would be -3e4).
SOFTMAX_LAYER_MASK_VALUE = -1e9
# keras.src.backend.tensorflow.nn._get_large_negative for float32/float64.
DOT_PRODUCT_MASK_VALUE = 3.38953e38 * -0.7


def check_broadcastable(mask: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    """Keras's Softmax rule: each mask dim is 1 or equal to the input's, rank not larger."""
    if mask.ndim > len(shape) or any(
        m != 1 and m != s for m, s in zip(mask.shape[::-1], shape[::-1], strict=False)
    ):
        raise LayerConfigError(
            f"{what} of shape {mask.shape} does not broadcast to the scores' shape {shape}"
        )


def keras_masked_softmax(
    x: np.ndarray, mask: np.ndarray | None, axes: tuple[int, ...] = (-1,)
) -> np.ndarray:
    """`keras.layers.Softmax(axis=axes)(x, mask=mask)`."""
    if mask is not None:
        check_broadcastable(mask, x.shape, "attention mask")
        x = np.where(mask, x, np.asarray(SOFTMAX_LAYER_MASK_VALUE, dtype=x.dtype))
    if len(axes) > 1:
        # Softmax over several axes: exp(x - logsumexp(x, axes))
        out = np.exp(x - logsumexp(x, axis=axes, keepdims=True))
    else:
        out = softmax(x, axis=axes[0])
    if mask is not None:
        out = np.where(mask, out, np.asarray(0.0, dtype=x.dtype))
    return out


def dot_product_attention_softmax(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis as the TF backend's `dot_product_attention` does it."""
    if mask is not None:
        check_broadcastable(mask, x.shape, "attention mask")
        x = np.where(mask, x, np.asarray(DOT_PRODUCT_MASK_VALUE, dtype=x.dtype))
    return softmax(x, axis=-1)
