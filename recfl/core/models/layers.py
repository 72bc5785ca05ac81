"""Building blocks for model forwards whose gradients the converter lowers to TFLite builtin ops.

TensorFlow's own ``tf.nn.relu`` differentiates through ``ReluGrad``, which
TFLite has only in the Flex delegate (the full TensorFlow kernel library);
:func:`relu` here has the same value and a gradient written as a mask
product, so a device program built from these blocks runs on the plain
TFLite runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache


@lru_cache(maxsize=1)
def _relu():
    import tensorflow as tf

    @tf.custom_gradient
    def relu(x):
        y = tf.nn.relu(x)  # the builtin RELU kernel forward; only its gradient needs rewriting

        def grad(upstream):
            return upstream * tf.sign(y)  # y >= 0: 1 where x > 0, else 0 (SIGN + MUL, two builtin ops)

        return y, grad

    return relu


def relu(x):
    """max(x, 0) with a builtin-lowerable gradient."""
    return _relu()(x)


def masked_mean(table, rows):
    """Mean of the ``table`` rows of ``rows`` ignoring PAD (row 0); zeros when all are PAD."""
    import tensorflow as tf

    mask = tf.expand_dims(tf.cast(tf.not_equal(rows, 0), table.dtype), -1)
    total = tf.reduce_sum(tf.gather(table, rows) * mask, axis=-2)
    return total / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)


def mlp_shapes(prefix: str, width: int, hidden: tuple[int, ...], out: int = 1) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Weight names and shapes of an MLP ``width -> hidden... -> out``: ``{prefix}_w{k}``, ``{prefix}_b{k}``."""
    shapes = []
    for k, units in enumerate((*hidden, out)):
        shapes += [(f"{prefix}_w{k}", (width, units)), (f"{prefix}_b{k}", (units,))]
        width = units
    return tuple(shapes)


def mlp(x, dense: Mapping, prefix: str, layers: int, activation: Callable = relu):
    """``layers`` hidden layers (``activation``, ReLU by default) then a linear output layer, over the last axis of ``x``."""
    import tensorflow as tf

    for k in range(layers + 1):
        x = tf.tensordot(x, dense[f"{prefix}_w{k}"], axes=1) + dense[f"{prefix}_b{k}"]
        if k < layers:
            x = activation(x)
    return x
