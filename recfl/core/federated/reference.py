"""TFF's own ``build_weighted_fed_avg`` on recfl's model: the reference FedSubAvg is measured against.

The Keras model wraps the same model forward (:class:`recfl.core.models.ModelDef`), so both processes
train the same architecture on the same clients; TFF's learning process
trains and uploads the full model (dense ``[V, d]`` embedding deltas).
"""

from __future__ import annotations

import collections

import numpy as np

from recfl.core.features import Examples
from recfl.core.models import ModelSpec, weights_of


def keras_model(spec: ModelSpec, seed: int = 0):
    """A Keras model computing the model's logits (``[B, 1]``) over its own weights (private ones fixed at zero)."""
    import tensorflow as tf

    class Recommender(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.flat = []
            for k, (group, name, shape) in enumerate(spec.shapes()):
                if group == "tables":
                    init = tf.keras.initializers.RandomNormal(stddev=0.05, seed=seed + k)
                else:
                    init = "glorot_uniform" if group == "dense" and len(shape) == 2 else "zeros"
                self.flat.append(self.add_weight(name=name, shape=shape, initializer=init, trainable=group != "private"))

        def call(self, inputs, training=False):
            return spec.definition.forward(weights_of(spec, self.flat), inputs)[:, None]

    return Recommender()


def input_spec(spec: ModelSpec):
    import tensorflow as tf

    c = spec.config
    features = collections.OrderedDict(
        item=tf.TensorSpec([None], tf.int32),
        cats=tf.TensorSpec([None, c.max_categories], tf.int32),
        hist=tf.TensorSpec([None, c.history], tf.int32),
    )
    return features, tf.TensorSpec([None, 1], tf.float32)


def client_dataset(examples: Examples, batch_size: int, epochs: int):
    """A client's examples (global rows) as the batched ``tf.data`` input TFF's learning process expects."""
    import tensorflow as tf

    features = collections.OrderedDict(item=examples.item, cats=examples.cats, hist=examples.hist)
    return tf.data.Dataset.from_tensor_slices((features, examples.label[:, None].astype(np.float32))).batch(batch_size).repeat(epochs)


def build_tff_fedavg(spec: ModelSpec, learning_rate: float, seed: int = 0):
    """``tff.learning.algorithms.build_weighted_fed_avg`` with client SGD and server SGD(1.0)."""
    import tensorflow as tf
    import tensorflow_federated as tff

    def model_fn():
        return tff.learning.models.from_keras_model(
            keras_model(spec, seed), loss=tf.keras.losses.BinaryCrossentropy(from_logits=True), input_spec=input_spec(spec)
        )

    return tff.learning.algorithms.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=learning_rate),
        server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0),
    )
