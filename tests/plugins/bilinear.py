"""A small plug-in model: item bias + the item's affinity to the mean clicked item, with a private user bias.

``logit = b[item] + <E[item], mean(E[hist])> + u_bias``: two tables over the
item vocabulary (the bias is a 1-wide table), one dense scale and one
device-private weight. Written with recfl's building blocks, so its device
program needs only TFLite builtins.
"""

from __future__ import annotations

from recfl.core.models import ModelConfig, ModelDef, Table, Weights, masked_mean


def build(config: ModelConfig) -> ModelDef:
    d = config.embed_dim

    def forward(w: Weights, batch):
        import tensorflow as tf

        item = tf.gather(w.tables["vectors"], batch["item"])
        taste = masked_mean(w.tables["vectors"], batch["hist"])
        bias = tf.squeeze(tf.gather(w.tables["bias"], batch["item"]), -1)
        # tf.reduce_sum, not x[0]: the gradient of an index (StridedSliceGrad) has no TFLite builtin
        return bias + tf.reduce_sum(w.dense["scale"]) * tf.reduce_sum(item * taste, -1) + tf.reduce_sum(w.private["user_bias"])

    tables = (Table("vectors", "items", ("item", "hist"), d), Table("bias", "items", ("item",), 1))
    return ModelDef("bilinear", tables, (("scale", (1,)),), forward, (("user_bias", (1,)),))
