"""On-device training in the TFLite interpreter, exported once per (architecture, capacity).

The trainable program is the project's single model definition
(:func:`recfl.core.model.loss_fn` / :func:`recfl.core.model.logits`) over resource
variables of a fixed capacity, with ``train``, ``infer``, ``get_weights``,
``set_weights``, ``save`` and ``restore`` signatures. Embedding gradients
arrive as row slices (IndexedSlices) and are applied with ``scatter_sub``, so
a step touches only the batch's rows; dense layers use ``assign_sub``. The
converted ``.tflite`` (TFLite builtins plus Flex ops) is cached on disk under
a key of the capacity-sized :class:`~recfl.core.model.ModelSpec`; every device
loads its own weights through ``set_weights`` (or ``restore``), never by
reconverting. Each conversion appends a line to ``conversions.jsonl`` in the
cache, so "once per capacity" can be checked across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recfl.core.atomic import atomic_path
from recfl.core.config import check_limits
from recfl.core.features import Examples
from recfl.core.metrics import logloss
from recfl.core.model import ModelParams, ModelSpec, logits, loss_fn

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the exported program changes
SIGNATURES = ("train", "infer", "get_weights", "set_weights", "save", "restore")


def weight_shapes(spec: ModelSpec) -> list[tuple[int, ...]]:
    """Shapes of the flat weight order of :meth:`ModelParams.arrays`."""
    return [(spec.item_rows, spec.embed_dim), (spec.category_rows, spec.embed_dim), *spec.dense_shapes()]


def cache_key(spec: ModelSpec) -> str:
    """Stable key of one exported program: architecture, capacity, TF and format versions."""
    import tensorflow as tf

    text = json.dumps({"spec": spec.to_json(), "tf": tf.__version__, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _trainable_module(spec: ModelSpec):
    """A ``tf.Module`` whose signatures are the on-device API (variables hold zeros until set)."""
    import tensorflow as tf

    shapes = weight_shapes(spec)
    sizes = [int(np.prod(s)) for s in shapes]
    total = int(sum(sizes))
    i32, f32 = tf.int32, tf.float32
    batch = [tf.TensorSpec([None], i32), tf.TensorSpec([None, spec.max_categories], i32),
             tf.TensorSpec([None, spec.history], i32)]

    class Trainable(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = [tf.Variable(tf.zeros(s, f32), name=f"w{k}") for k, s in enumerate(shapes)]

        @tf.function(input_signature=[*batch, tf.TensorSpec([None], f32), tf.TensorSpec([], f32)])
        def train(self, item, cats, hist, label, lr):
            with tf.GradientTape() as tape:
                loss = loss_fn(self.w[0], self.w[1], self.w[2:], item, cats, hist, label)
            for var, grad in zip(self.w, tape.gradient(loss, self.w)):
                if isinstance(grad, tf.IndexedSlices):  # embedding tables: only the batch's rows
                    var.scatter_sub(tf.IndexedSlices(lr * grad.values, grad.indices))
                else:
                    var.assign_sub(lr * grad)
            return {"loss": loss}

        @tf.function(input_signature=batch)
        def infer(self, item, cats, hist):
            return {"probability": tf.sigmoid(logits(self.w[0], self.w[1], self.w[2:], item, cats, hist))}

        @tf.function(input_signature=[])
        def get_weights(self):
            return {"weights": tf.concat([tf.reshape(v, [-1]) for v in self.w], 0)}

        @tf.function(input_signature=[tf.TensorSpec([total], f32)])
        def set_weights(self, weights):
            for var, part, shape in zip(self.w, tf.split(weights, sizes), shapes):
                var.assign(tf.reshape(part, shape))
            return {"size": tf.constant(total)}

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def save(self, checkpoint_path):
            names = [v.name.split(":")[0] for v in self.w]
            tf.raw_ops.Save(filename=checkpoint_path, tensor_names=names, data=[v.read_value() for v in self.w])
            return {"checkpoint_path": checkpoint_path}

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def restore(self, checkpoint_path):
            for v in self.w:
                v.assign(tf.raw_ops.Restore(file_pattern=checkpoint_path, tensor_name=v.name.split(":")[0], dt=f32))
            return {"size": tf.constant(total)}

    return Trainable()


def convert(spec: ModelSpec) -> bytes:
    """Convert the trainable program of ``spec`` (rows = capacity) to a ``.tflite`` flatbuffer."""
    import tensorflow as tf

    module = _trainable_module(spec)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={name: getattr(module, name).get_concrete_function() for name in SIGNATURES})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(SIGNATURES))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        return converter.convert()


def export(spec: ModelSpec, cache_dir: Path) -> Path:
    """The cached ``.tflite`` for ``spec``, converting it (under a file lock) only if missing."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(spec)
    path = cache_dir / f"{key}.tflite"
    if path.is_file():
        return path
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():  # another process converted it while we waited
            return path
        started = time.perf_counter()
        flatbuffer = convert(spec)
        with atomic_path(path) as tmp:
            tmp.write_bytes(flatbuffer)
        record = {"key": key, "spec": spec.to_json(), "bytes": len(flatbuffer), "pid": os.getpid(),
                  "seconds": round(time.perf_counter() - started, 3)}
        with open(cache_dir / "conversions.jsonl", "a") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")
        log.info("converted %s (%d bytes) in %.1f s", path.name, len(flatbuffer), record["seconds"])
    return path


def conversions(cache_dir: Path) -> list[dict]:
    """Every conversion recorded in ``cache_dir`` (one dict per ``.tflite`` written)."""
    path = Path(cache_dir) / "conversions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


class DeviceTrainer:
    """One device's TFLite interpreter over a cached ``.tflite``: weights in, SGD steps, scores out."""

    def __init__(self, path: Path, spec: ModelSpec):
        import tensorflow as tf

        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
        self.runners = {name: self.interpreter.get_signature_runner(name) for name in SIGNATURES}
        self._shapes = weight_shapes(spec)

    def set_params(self, params: ModelParams) -> None:
        """Load weights shaped like ``spec`` (capacity-sized tables, see ``Submodel.extract``)."""
        for array, shape in zip(params.arrays(), self._shapes):
            if array.shape != shape:
                raise ValueError(f"weight of shape {array.shape} does not fit the exported shape {shape}")
        flat = np.concatenate([a.ravel() for a in params.arrays()]).astype(np.float32)
        self.runners["set_weights"](weights=flat)

    def get_params(self) -> ModelParams:
        flat = self.runners["get_weights"]()["weights"]
        cuts = np.cumsum([int(np.prod(s)) for s in self._shapes])[:-1]
        return ModelParams.from_arrays([part.reshape(s) for part, s in zip(np.split(flat, cuts), self._shapes)])

    def train_step(self, batch: Examples, lr: float) -> float:
        """One SGD step on ``batch`` (local rows); returns the batch loss before the step."""
        out = self.runners["train"](item=batch.item.astype(np.int32), cats=batch.cats.astype(np.int32),
                                    hist=batch.hist.astype(np.int32), label=batch.label.astype(np.float32), lr=np.float32(lr))
        return float(out["loss"])

    def predict(self, examples: Examples, batch_size: int = 1024) -> np.ndarray:
        """Click probabilities of ``examples`` (local rows)."""
        out = np.empty(len(examples), dtype=np.float32)
        for lo in range(0, len(examples), batch_size):
            b = examples.take(slice(lo, lo + batch_size))
            out[lo : lo + len(b)] = self.runners["infer"](item=b.item.astype(np.int32), cats=b.cats.astype(np.int32),
                                                          hist=b.hist.astype(np.int32))["probability"]
        return out

    def save(self, path: Path) -> None:
        """Write the current weights to a checkpoint file through the ``save`` signature."""
        self.runners["save"](checkpoint_path=_path_tensor(path))

    def restore(self, path: Path) -> None:
        """Load weights saved by :meth:`save` through the ``restore`` signature."""
        self.runners["restore"](checkpoint_path=_path_tensor(path, pattern=True))


def _path_tensor(path: Path, pattern: bool = False) -> np.ndarray:
    """A scalar ``tf.string`` input: bytes (dtype ``|S``); other encodings silently mangle the name.

    ``Restore`` reads a file *pattern*, so for it ``*?[]\\`` are escaped (a ``[`` in a directory
    name would otherwise match nothing).
    """
    text = str(Path(path).resolve())
    return np.array((re.sub(r"([*?\[\]\\])", r"\\\1", text) if pattern else text).encode())


@dataclass(frozen=True)
class FinetuneConfig:
    """The ``[finetune]`` config section: on-device SGD with early stopping, and the device capacity."""

    learning_rate: float = 0.2  # tuned on a MovieLens 100K validation split (README)
    batch_size: int = 32
    max_epochs: int = 10
    patience: int = 2  # epochs without a validation improvement before stopping
    val_fraction: float = 0.2  # the user's latest training events held out for early stopping
    item_capacity: int = 4096  # rows of the exported item table (one .tflite per capacity)
    category_capacity: int = 256
    seed: int = 0

    def __post_init__(self):
        check_limits(self, "finetune", learning_rate="> 0", batch_size=">= 1", max_epochs=">= 0", patience=">= 1",
                     val_fraction="[0, 1)", item_capacity=">= 3", category_capacity=">= 3")


@dataclass(frozen=True)
class FinetuneResult:
    """What fine-tuning did; the trainer ends holding the weights of ``best_epoch`` (0 = as loaded)."""

    epochs: int
    best_epoch: int
    steps: int
    val_losses: list[float]
    seconds: float


def finetune(trainer: DeviceTrainer, fit: Examples, val: Examples, config: FinetuneConfig,
             rng: np.random.Generator) -> FinetuneResult:
    """SGD epochs over ``fit`` in the interpreter; stop after ``patience`` epochs without a lower
    validation logloss and restore the best weights (possibly the loaded ones)."""
    started = time.perf_counter()
    losses = [logloss(val.label, trainer.predict(val))] if len(val) else []
    if not len(val) or not len(fit):
        return FinetuneResult(0, 0, 0, losses, time.perf_counter() - started)
    best, best_epoch, steps, epoch = trainer.get_params(), 0, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        order = rng.permutation(len(fit))
        for lo in range(0, len(order), config.batch_size):
            trainer.train_step(fit.take(order[lo : lo + config.batch_size]), config.learning_rate)
            steps += 1
        losses.append(logloss(val.label, trainer.predict(val)))
        if losses[-1] < losses[best_epoch]:
            best, best_epoch = trainer.get_params(), epoch
        elif epoch - best_epoch >= config.patience:
            break
    trainer.set_params(best)
    return FinetuneResult(epoch, best_epoch, steps, losses, time.perf_counter() - started)
