"""The mean-pooled model: item, categories and the mean of the user's recent clicks into an MLP.

``[item, mean(categories), mean(history), item * mean(history)]`` -> MLP ->
logit, plus ``u . item`` for the device-private user vector ``u``.
"""

from __future__ import annotations

from collections.abc import Callable

from recfl.core.models.definition import ModelConfig, ModelDef, Table, Weights
from recfl.core.models.layers import masked_mean, mlp, mlp_shapes, relu


def tables(config: ModelConfig) -> tuple[Table, ...]:
    """The item table (read by the target item and the history) and the category table."""
    d = config.embed_dim
    return (Table("item", "items", ("item", "hist"), d), Table("category", "categories", ("cats",), d))


def user_term(config: ModelConfig, w: Weights, item_vec):
    """``u . item`` for the private user vector (0 without one)."""
    import tensorflow as tf

    return tf.reduce_sum(item_vec * w.private["user"], axis=-1) if config.user_vector else 0.0


def private(config: ModelConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return (("user", (config.embed_dim,)),) if config.user_vector else ()


def build(config: ModelConfig, activation: Callable = relu) -> ModelDef:
    """The model; ``activation`` is the MLP's (the builtin-lowerable ReLU unless a benchmark swaps it)."""
    d = config.embed_dim

    def forward(w: Weights, batch):
        import tensorflow as tf

        item_vec = tf.gather(w.tables["item"], batch["item"])
        hist_vec = masked_mean(w.tables["item"], batch["hist"])
        x = tf.concat([item_vec, masked_mean(w.tables["category"], batch["cats"]), hist_vec, item_vec * hist_vec], axis=-1)
        return tf.squeeze(mlp(x, w.dense, "mlp", len(config.hidden), activation), axis=-1) + user_term(config, w, item_vec)

    return ModelDef("mean", tables(config), mlp_shapes("mlp", 4 * d, config.hidden), forward, private(config))
