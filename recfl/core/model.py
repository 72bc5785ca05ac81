"""The recommender, defined once: embeddings + MLP -> CTR logit.

Inputs per example: the item's row, its category rows (``[C]``, PAD = 0) and
the rows of the user's recently clicked items (``[H]``, PAD = 0). Features are
``[item, mean(categories), mean(history), item * mean(history)]`` fed to an
MLP. Parameters are plain arrays (:class:`ModelParams`) and :func:`logits` is a
pure TF function of them, so the same definition serves central training,
TFF client work (on tensors), submodels (on a compact table) and TFLite export
(on variables).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from recfl.core.config import check_limits
from recfl.core.errors import RecflError
from recfl.core.features import FeatureSpec


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs (the ``[model]`` config section); table sizes come from the data."""

    embed_dim: int = 16
    hidden: tuple[int, ...] = (64, 32)
    history: int = 20
    max_categories: int = 4
    init_seed: int = 0

    def __post_init__(self):
        check_limits(self, "model", embed_dim=">= 1", hidden=">= 1", history=">= 1", max_categories=">= 1")


@dataclass(frozen=True)
class ModelSpec:
    """A concrete architecture: table sizes plus :class:`ModelConfig`."""

    item_rows: int
    category_rows: int
    embed_dim: int = 16
    hidden: tuple[int, ...] = (64, 32)
    history: int = 20
    max_categories: int = 4

    @classmethod
    def build(cls, config: ModelConfig, item_rows: int, category_rows: int) -> "ModelSpec":
        return cls(item_rows, category_rows, config.embed_dim, tuple(config.hidden), config.history, config.max_categories)

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec(history=self.history, max_categories=self.max_categories)

    def dense_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of W0, b0, W1, b1, ..., W_out, b_out."""
        shapes, width = [], 4 * self.embed_dim
        for units in (*self.hidden, 1):
            shapes += [(width, units), (units,)]
            width = units
        return shapes

    def with_rows(self, item_rows: int, category_rows: int) -> "ModelSpec":
        """The same architecture over tables of another size (a device submodel)."""
        return replace(self, item_rows=item_rows, category_rows=category_rows)

    def to_json(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_json(cls, doc: dict) -> "ModelSpec":
        return cls(**{**doc, "hidden": tuple(doc["hidden"])})


@dataclass
class ModelParams:
    """All weights as float32 NumPy arrays."""

    item_emb: np.ndarray
    cat_emb: np.ndarray
    dense: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> list[np.ndarray]:
        """Flat list in a fixed order: item table, category table, dense layers."""
        return [self.item_emb, self.cat_emb, *self.dense]

    @classmethod
    def from_arrays(cls, arrays: Sequence) -> "ModelParams":
        arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
        return cls(arrays[0], arrays[1], arrays[2:])

    def copy(self) -> "ModelParams":
        return ModelParams.from_arrays([a.copy() for a in self.arrays()])

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays()))


def init_params(spec: ModelSpec, seed: int = 0) -> ModelParams:
    """Seeded initial weights: N(0, 0.05) embeddings, Glorot-uniform dense, zero biases."""
    rng = np.random.default_rng(seed)
    item = (0.05 * rng.standard_normal((spec.item_rows, spec.embed_dim))).astype(np.float32)
    cat = (0.05 * rng.standard_normal((spec.category_rows, spec.embed_dim))).astype(np.float32)
    dense = []
    for shape in spec.dense_shapes():
        if len(shape) == 2:
            limit = np.sqrt(6.0 / (shape[0] + shape[1]))
            dense.append(rng.uniform(-limit, limit, size=shape).astype(np.float32))
        else:
            dense.append(np.zeros(shape, dtype=np.float32))
    return ModelParams(item, cat, dense)


def _masked_mean(tf, table, rows):
    """Mean of the table rows of ``rows`` ignoring PAD (row 0); zeros when all PAD."""
    mask = tf.cast(tf.not_equal(rows, 0), table.dtype)[..., None]
    total = tf.reduce_sum(tf.gather(table, rows) * mask, axis=-2)
    return total / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)


def logits(item_emb, cat_emb, dense: Sequence, item, cats, hist):
    """CTR logits ``[B]``; works on tensors or variables, eagerly or in graphs and TFLite."""
    import tensorflow as tf

    item_vec = tf.gather(item_emb, item)
    hist_vec = _masked_mean(tf, item_emb, hist)
    x = tf.concat([item_vec, _masked_mean(tf, cat_emb, cats), hist_vec, item_vec * hist_vec], axis=-1)
    for k in range(0, len(dense) - 2, 2):
        x = tf.nn.relu(tf.matmul(x, dense[k]) + dense[k + 1])
    return tf.squeeze(tf.matmul(x, dense[-2]) + dense[-1], axis=-1)


def loss_fn(item_emb, cat_emb, dense: Sequence, item, cats, hist, label):
    """Mean sigmoid cross-entropy of the batch."""
    import tensorflow as tf

    z = logits(item_emb, cat_emb, dense, item, cats, hist)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=label, logits=z))


def sgd_step(params: Sequence, item, cats, hist, label, lr):
    """One plain-SGD step on tensors; embedding updates touch only the batch's rows.

    Returns (new params list, loss). Row gradients arrive as IndexedSlices and
    are applied with ``tensor_scatter_nd_sub`` (duplicate rows accumulate).
    """
    import tensorflow as tf

    params = list(params)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = loss_fn(params[0], params[1], params[2:], item, cats, hist, label)
    grads = tape.gradient(loss, params)
    updated = []
    for p, g in zip(params, grads):
        if isinstance(g, tf.IndexedSlices):
            updated.append(tf.tensor_scatter_nd_sub(p, tf.expand_dims(g.indices, -1), lr * g.values))
        else:
            updated.append(p - lr * g)
    return updated, loss


def predict(spec: ModelSpec, params: ModelParams, inputs: dict[str, np.ndarray], batch_size: int = 16384) -> np.ndarray:
    """Click probabilities for encoded inputs (``item``, ``cats``, ``hist``)."""
    import tensorflow as tf

    weights = [tf.convert_to_tensor(a) for a in params.arrays()]
    run = _probabilities()
    n = len(inputs["item"])
    out = np.empty(n, dtype=np.float32)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        out[lo:hi] = run(weights, inputs["item"][lo:hi], inputs["cats"][lo:hi], inputs["hist"][lo:hi]).numpy()
    return out


@lru_cache(maxsize=1)
def _probabilities():
    """One traced inference function for every :func:`predict` call (no per-call retracing)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def run(weights, item, cats, hist):
        return tf.sigmoid(logits(weights[0], weights[1], weights[2:], item, cats, hist))

    return run


def save_model(path: Path, spec: ModelSpec, params: ModelParams, meta: dict | None = None, saved_model: bool = True) -> None:
    """Write ``spec.json`` + ``params.npz`` (+ a serving SavedModel); ``spec.json`` last."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "spec.json").unlink(missing_ok=True)
    np.savez(path / "params.npz", *params.arrays())
    if saved_model:
        export_saved_model(spec, params, path / "saved_model")
    (path / "spec.json").write_text(json.dumps({"spec": spec.to_json(), **(meta or {})}, indent=2) + "\n")


def load_model(path: Path, data=None) -> tuple[ModelSpec, ModelParams]:
    """Read a model directory written by :func:`save_model`; with ``data`` (a prepared data set), refuse a
    model whose tables were sized for other vocabularies (its row ids would mean other items)."""
    path = Path(path)
    if not (path / "spec.json").is_file() or not (path / "params.npz").is_file():
        raise RecflError(f"{path}: not a recfl model directory (needs spec.json and params.npz)")
    spec = ModelSpec.from_json(json.loads((path / "spec.json").read_text())["spec"])
    with np.load(path / "params.npz") as npz:
        params = ModelParams.from_arrays([npz[f"arr_{i}"] for i in range(len(npz.files))])
    if data is not None and (spec.item_rows, spec.category_rows) != (data.item_vocab.size, data.category_vocab.size):
        raise RecflError(f"{path}: model tables ({spec.item_rows}, {spec.category_rows}) do not match the "
                         f"vocabularies of {data.root} ({data.item_vocab.size}, {data.category_vocab.size})")
    return spec, params


def export_saved_model(spec: ModelSpec, params: ModelParams, path: Path) -> None:
    """A TF SavedModel with a ``serving_default`` signature returning click probabilities."""
    import tensorflow as tf

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = [tf.Variable(a, trainable=False) for a in params.arrays()]

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.int32, name="item"),
            tf.TensorSpec([None, spec.max_categories], tf.int32, name="cats"),
            tf.TensorSpec([None, spec.history], tf.int32, name="hist"),
        ])
        def serve(self, item, cats, hist):
            w = self.weights
            return {"probability": tf.sigmoid(logits(w[0], w[1], w[2:], item, cats, hist))}

    module = Serving()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
