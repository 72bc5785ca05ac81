"""Scoring with a model, and model directories on disk (``spec.json`` + ``params.npz`` + a SavedModel)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from recfl.core.errors import RecflError
from recfl.core.features import FIELDS
from recfl.core.models.spec import ModelParams, ModelSpec, weights_of


def predict(spec: ModelSpec, params: ModelParams, inputs: dict[str, np.ndarray], batch_size: int = 16384) -> np.ndarray:
    """Click probabilities for encoded inputs (the batch fields ``item``, ``cats``, ``hist``)."""
    import tensorflow as tf

    weights = [tf.convert_to_tensor(a) for a in params.arrays()]
    run = _probabilities(spec)
    n = len(inputs["item"])
    out = np.empty(n, dtype=np.float32)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        out[lo:hi] = run(weights, *(inputs[f][lo:hi] for f in FIELDS)).numpy()
    return out


@lru_cache(maxsize=4)
def _probabilities(spec: ModelSpec):
    """One traced inference function per model (no per-call retracing)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def run(weights, *fields):
        return tf.sigmoid(spec.definition.forward(weights_of(spec, weights), dict(zip(FIELDS, fields))))

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
    try:
        spec = ModelSpec.from_json(json.loads((path / "spec.json").read_text())["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RecflError(f"{path}/spec.json: not a model description of this recfl version ({type(exc).__name__}: {exc})") from None
    with np.load(path / "params.npz") as npz:
        params = ModelParams.from_arrays(spec, [npz[f"arr_{i}"] for i in range(len(npz.files))])
    if data is not None:
        wanted = ModelSpec.build(spec.config, vocabulary_sizes(data))
        if wanted.rows != spec.rows:
            raise RecflError(f"{path}: model tables {dict(spec.rows)} do not match the vocabularies of {data.root} "
                             f"{dict(wanted.rows)}")
    return spec, params


def vocabulary_sizes(data) -> dict[str, int]:
    """Rows of each vocabulary of a prepared data set (PAD and OOV included)."""
    return {"items": data.item_vocab.size, "categories": data.category_vocab.size}


def export_saved_model(spec: ModelSpec, params: ModelParams, path: Path) -> None:
    """A TF SavedModel with a ``serving_default`` signature returning click probabilities."""
    import tensorflow as tf

    c = spec.config

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = [tf.Variable(a, trainable=False) for a in params.arrays()]

        @tf.function(autograph=False, input_signature=[
            tf.TensorSpec([None], tf.int32, name="item"),
            tf.TensorSpec([None, c.max_categories], tf.int32, name="cats"),
            tf.TensorSpec([None, c.history], tf.int32, name="hist"),
        ])
        def serve(self, item, cats, hist):
            w = weights_of(spec, self.weights)
            return {"probability": tf.sigmoid(spec.definition.forward(w, {"item": item, "cats": cats, "hist": hist}))}

    module = Serving()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
