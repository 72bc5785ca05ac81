"""The on-device training program at run time: a ``.tflite`` with training signatures, driven from NumPy.

This module needs only NumPy and a TFLite interpreter: the standalone
``tflite_runtime`` package (what a device ships) when it is installed,
TensorFlow's ``tf.lite`` otherwise. It never imports TensorFlow when
``tflite_runtime`` is present, so the device side can be tested in an
environment without TensorFlow.

Signatures (see :mod:`device.tflite_trainer`, which builds the program):
``train`` (one SGD step on a fixed-size batch; padding rows have weight 0),
``infer`` (probabilities), ``get_weights`` / ``set_weights`` (all weights as
one flat float32 vector) and ``set_anchor`` (the weights the elastic term
pulls toward). Checkpoints are the host's job: weights come out through
``get_weights`` and go back through ``set_weights``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIGNATURES = ("train", "infer", "get_weights", "set_weights", "set_anchor")
FIELDS = ("item", "cats", "hist")  # the batch fields, as in recfl.core.features.FIELDS
GROUPS = ("tables", "dense", "private")


def interpreter(path: Path, threads: int = 1):
    """A TFLite interpreter for ``path``: tflite_runtime's when installed, else TensorFlow's."""
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(path), num_threads=threads)


@dataclass(frozen=True)
class StepSettings:
    """The scalar inputs of a training step: learning rate, pairwise weight, elastic lambda, trainable groups."""

    lr: float
    pairwise: float = 0.0
    elastic: float = 0.0
    trainable: tuple[str, ...] = GROUPS

    def inputs(self) -> dict[str, np.ndarray]:
        scalars = {"lr": self.lr, "pairwise": self.pairwise, "elastic": self.elastic,
                   **{f"train_{g}": float(g in self.trainable) for g in GROUPS}}
        return {k: np.float32(v) for k, v in scalars.items()}


class DeviceProgram:
    """One device's interpreter over a training program: weights in and out, SGD steps, scores."""

    def __init__(self, path: Path, shapes: Sequence[tuple[int, ...]], threads: int = 1):
        self.interpreter = interpreter(path, threads)
        self.runners = {name: self.interpreter.get_signature_runner(name) for name in SIGNATURES}
        self.shapes = [tuple(s) for s in shapes]
        self.batch_size = self._train_batch()

    def _train_batch(self) -> int:
        details = self.runners["train"].get_input_details()
        return int(details["label"]["shape"][0])

    def _flat(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        for array, shape in zip(arrays, self.shapes):
            if np.shape(array) != shape:
                raise ValueError(f"weight of shape {np.shape(array)} does not fit the exported shape {shape}")
        if len(arrays) != len(self.shapes):
            raise ValueError(f"the program has {len(self.shapes)} weights, got {len(arrays)}")
        return np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays])

    def set_weights(self, arrays: Sequence[np.ndarray]) -> None:
        self.runners["set_weights"](weights=self._flat(arrays))

    def set_anchor(self, arrays: Sequence[np.ndarray]) -> None:
        self.runners["set_anchor"](weights=self._flat(arrays))

    def get_weights(self) -> list[np.ndarray]:
        flat = self.runners["get_weights"]()["weights"]
        cuts = np.cumsum([int(np.prod(s)) for s in self.shapes])[:-1]
        return [part.reshape(s).copy() for part, s in zip(np.split(flat, cuts), self.shapes)]

    def train_step(self, batch: Mapping[str, np.ndarray], settings: StepSettings) -> float:
        """One SGD step on ``batch`` (fields, ``label``, ``weight``; at most the program's batch size, padded
        here with weight-0 rows); returns the batch's data loss before the step."""
        n = len(batch["label"])
        if not 0 < n <= self.batch_size:
            raise ValueError(f"a training batch holds 1 to {self.batch_size} examples, got {n}")
        padded = {k: _pad(np.asarray(v), self.batch_size) for k, v in batch.items() if k in (*FIELDS, "label", "weight")}
        padded = {k: v.astype(np.float32 if k in ("label", "weight") else np.int32) for k, v in padded.items()}
        return float(self.runners["train"](**padded, **settings.inputs())["loss"])

    def predict(self, fields: Mapping[str, np.ndarray], batch_size: int = 1024) -> np.ndarray:
        """Click probabilities of the examples in ``fields``."""
        n = len(fields["item"])
        out = np.empty(n, dtype=np.float32)
        for lo in range(0, n, batch_size):
            part = {f: np.asarray(fields[f][lo : lo + batch_size], np.int32) for f in FIELDS}
            out[lo : lo + len(part["item"])] = self.runners["infer"](**part)["probability"]
        return out


def _pad(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` with zero rows appended up to ``size`` rows (row 0 is PAD in every table)."""
    if len(values) == size:
        return values
    return np.concatenate([values, np.zeros((size - len(values), *values.shape[1:]), values.dtype)])
