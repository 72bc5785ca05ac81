"""The training step every trainer shares: the TFLite device program, federated clients and the tests.

Loss of a batch with example weights ``w_i`` (0 for padding rows)::

    (1 - pairwise) * sum_i w_i BCE(y_i, z_i) / sum_i w_i
  + pairwise * sum_{i,j} w_i w_j y_i (1 - y_j) softplus(z_j - z_i) / sum_{i,j} w_i w_j y_i (1 - y_j)
  + elastic / 2 * ||theta - theta_anchor||^2

The pairwise (BPR) term ranks the batch's positives above its negatives (a
device's batch is one user's data, so this is the order within a user);
the elastic term pulls the weights toward an anchor (the global model as
loaded), as in Per-FedAvg with an elastic constraint or FedProx. Plain SGD:
``theta -= lr * trainable[group] * grad``; embedding gradients arrive as row
slices and are scattered into the tables (``scatter_nd`` sums duplicate
rows, in TensorFlow and in TFLite alike), so a step touches the batch's rows
plus, with ``elastic > 0``, the pull of every row toward its anchor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from recfl.core.config import check_limits
from recfl.core.errors import RecflError
from recfl.core.models.definition import GROUPS
from recfl.core.models.spec import ModelSpec, weights_of

LOSSES = ("pointwise", "pairwise", "mixed")


@dataclass(frozen=True)
class Objective:
    """What a step minimizes and which weight groups it moves."""

    loss: str = "pointwise"  # pointwise | pairwise | mixed (half each)
    elastic: float = 0.0  # lambda of the pull toward the anchor weights
    trainable: tuple[str, ...] = GROUPS  # of tables, dense, private

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise RecflError(f"finetune.loss = {self.loss!r}: choose one of {', '.join(LOSSES)}")
        unknown = sorted(set(self.trainable) - set(GROUPS))
        if unknown or not self.trainable:
            raise RecflError(f"finetune.trainable: unknown {unknown or 'empty list'}; choose from {', '.join(GROUPS)}")
        check_limits(self, "finetune", elastic=">= 0")

    @property
    def pairwise(self) -> float:
        """Weight of the pairwise term."""
        return {"pointwise": 0.0, "pairwise": 1.0, "mixed": 0.5}[self.loss]

    def masks(self) -> dict[str, float]:
        """1.0 for each trainable group, 0.0 otherwise."""
        return {g: float(g in self.trainable) for g in GROUPS}


def batch_loss(spec: ModelSpec, flat: Sequence, batch: Mapping, pairwise=0.0):
    """The data part of the loss above (scalar tensor) of weights ``flat`` on ``batch`` (fields, ``label``, ``weight``)."""
    import tensorflow as tf

    z = spec.definition.forward(weights_of(spec, flat), batch)
    y, w = batch["label"], batch["weight"]
    pointwise = tf.reduce_sum(w * tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)) / tf.maximum(tf.reduce_sum(w), 1e-12)
    pairs = tf.expand_dims(w * y, 1) * tf.expand_dims(w * (1.0 - y), 0)
    margin = tf.expand_dims(z, 1) - tf.expand_dims(z, 0)  # expand_dims, not z[:, None]: its gradient is a builtin
    ranking = tf.reduce_sum(pairs * tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.ones_like(margin), logits=margin))
    return (1.0 - pairwise) * pointwise + pairwise * ranking / tf.maximum(tf.reduce_sum(pairs), 1e-12)


def train_step(spec: ModelSpec, flat: Sequence, batch: Mapping, lr, pairwise=0.0, anchor: Sequence | None = None,
               elastic=0.0, masks: Mapping[str, object] | None = None):
    """One SGD step; returns (new flat weights, data loss before the step).

    ``pairwise``, ``elastic``, ``lr`` and the group ``masks`` may be tensors
    (inputs of the device program) or numbers. The elastic gradient
    ``elastic * (theta - anchor)`` is added analytically, so row gradients
    stay sparse.
    """
    import tensorflow as tf

    flat = list(flat)
    with tf.GradientTape() as tape:
        tape.watch(flat)
        loss = batch_loss(spec, flat, batch, pairwise)
    grads = tape.gradient(loss, flat)
    updated = []
    for k, ((group, _, _), p, g) in enumerate(zip(spec.shapes(), flat, grads)):
        if isinstance(g, tf.IndexedSlices):
            g = tf.scatter_nd(tf.expand_dims(g.indices, -1), g.values, tf.shape(p, out_type=g.indices.dtype))
        elif g is None:
            g = tf.zeros_like(p)
        if anchor is not None:
            g = g + elastic * (p - anchor[k])
        updated.append(p - lr * (masks[group] if masks is not None else 1.0) * g)
    return updated, loss
