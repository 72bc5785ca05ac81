"""Target attention over the user's recent clicks (DIN-style): the candidate item decides which clicks count.

Each history item ``h_j`` gets a score from a small MLP over
``[h_j, e, h_j * e, h_j - e]`` (``e`` the candidate item); a softmax over the
non-PAD positions weighs the clicks into an interest vector ``v``, and
``[e, mean(categories), v, e * v]`` -> MLP -> logit (+ ``u . e`` for the
private user vector), as the mean-pooled model does with the plain mean.
"""

from __future__ import annotations

from recfl.core.models import mean
from recfl.core.models.definition import ModelConfig, ModelDef, Weights
from recfl.core.models.layers import masked_mean, mlp, mlp_shapes


def attention_weights(scores, mask):
    """Softmax of ``scores`` over the positions where ``mask`` is 1; all zeros for an empty history."""
    import tensorflow as tf

    shift = tf.stop_gradient(tf.reduce_max(scores * mask, axis=-1, keepdims=True))
    raw = tf.exp(tf.minimum(scores - shift, 30.0)) * mask
    return raw / tf.maximum(tf.reduce_sum(raw, axis=-1, keepdims=True), 1e-9)


def build(config: ModelConfig) -> ModelDef:
    d = config.embed_dim

    def forward(w: Weights, batch):
        import tensorflow as tf

        item_vec = tf.gather(w.tables["item"], batch["item"])  # [B, d]
        hist = tf.gather(w.tables["item"], batch["hist"])  # [B, H, d]
        mask = tf.cast(tf.not_equal(batch["hist"], 0), hist.dtype)  # [B, H]
        target = tf.tile(tf.expand_dims(item_vec, 1), [1, config.history, 1])
        pair = tf.concat([hist, target, hist * target, hist - target], axis=-1)
        scores = tf.squeeze(mlp(pair, w.dense, "att", 1), axis=-1)  # [B, H]
        interest = tf.reduce_sum(tf.expand_dims(attention_weights(scores, mask), -1) * hist, axis=1)
        x = tf.concat([item_vec, masked_mean(w.tables["category"], batch["cats"]), interest, item_vec * interest], axis=-1)
        return tf.squeeze(mlp(x, w.dense, "mlp", len(config.hidden)), axis=-1) + mean.user_term(config, w, item_vec)

    dense = mlp_shapes("att", 4 * d, (config.attention_hidden,)) + mlp_shapes("mlp", 4 * d, config.hidden)
    return ModelDef("attention", mean.tables(config), dense, forward, mean.private(config))
