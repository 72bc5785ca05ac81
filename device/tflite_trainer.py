"""The on-device training program: built from the model definition, converted once per (model, capacity).

The program is the project's shared training step
(:func:`recfl.core.models.train_step`: forward, loss, hand-lowerable
gradients, SGD) over resource variables of a fixed capacity, with the
signatures :mod:`device.program` drives. It is converted with TFLite
builtin ops only, so the plain TFLite runtime runs it; a model whose
gradient needs an op TFLite has no builtin for is converted with the Flex
delegate instead (``finetune.ops = "auto"``, the default, logs which ops) or
refused with those ops named (``"builtin"``). The ``train`` signature takes
a fixed batch size (short batches are padded with weight-0 rows), which lets
the converter fold every shape computation of the gradient.

The converted ``.tflite`` is cached on disk under a key of the
capacity-sized :class:`~recfl.core.models.ModelSpec`, the batch size and the
ops; every device loads its own weights through ``set_weights``, never by
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

from device.program import GROUPS, SIGNATURES, DeviceProgram, StepSettings
from recfl.core.atomic import atomic_path
from recfl.core.config import check_limits
from recfl.core.errors import RecflError
from recfl.core.features import FIELDS, Examples
from recfl.core.metrics import logloss
from recfl.core.models import ModelParams, ModelSpec, Objective, train_step, weights_of

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the exported program changes
OPS = ("auto", "builtin", "flex")
SCHEDULES = ("joint", "sequential")
VOTERS = ("received", "kept")
CANDIDATE_KEYS = ("candidate_weight", "schedule", "votes", "votes_shrink", "votes_from")  # [finetune] keys only an arm with candidates reads


@dataclass(frozen=True)
class FinetuneConfig:
    """The ``[finetune]`` config section: on-device SGD with early stopping, the objective and the capacity."""

    learning_rate: float = 0.2  # tuned on a MovieLens 100K validation split (README)
    batch_size: int = 32
    max_epochs: int = 10
    patience: int = 2  # epochs without a validation improvement before stopping
    val_fraction: float = 0.2  # the user's latest training events held out for early stopping
    loss: str = "pointwise"  # pointwise | pairwise | mixed
    elastic: float = 0.0  # pull toward the global weights (lambda of an L2 penalty on the difference)
    trainable: tuple[str, ...] = GROUPS  # weight groups fine-tuning moves: tables, dense, private
    candidate_weight: float = 1.0  # loss weight of a matched cloud sample relative to one of the user's own; 0: not trained on
    schedule: str = "joint"  # joint: candidates and own events together | sequential: candidates first, then own events
    votes: float = 1.0  # weight of the candidates' labels as a prior on the scored items, in logits (device/votes.py)
    votes_shrink: float = 3.0  # pseudo-count of a vote: one neighbour's label counts 1 / (1 + shrink)
    votes_from: str = "received"  # received: every candidate, weight 1 | kept: what the filter keeps, at its weights
    item_capacity: int = 4096  # rows of the exported item table: one .tflite per capacity
    category_capacity: int = 256
    ops: str = "auto"  # auto: TFLite builtins, Flex only for ops without a builtin | builtin | flex
    seed: int = 0

    def __post_init__(self):
        check_limits(self, "finetune", learning_rate="> 0", batch_size=">= 1", max_epochs=">= 0", patience=">= 1",
                     val_fraction="[0, 1)", item_capacity=">= 3", category_capacity=">= 3", candidate_weight="[0, 1000]",
                     votes="[0, 100]", votes_shrink="[0, 1000]")
        if self.votes_from not in VOTERS:
            raise RecflError(f"finetune.votes_from = {self.votes_from!r}: choose one of {', '.join(VOTERS)}")
        if self.schedule not in SCHEDULES:
            raise RecflError(f"finetune.schedule = {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.ops not in OPS:
            raise RecflError(f"finetune.ops = {self.ops!r}: choose one of {', '.join(OPS)}")
        self.objective  # validates loss, elastic and trainable
        if (pull := self.learning_rate * self.elastic) >= 2:  # each step scales the distance to the anchor by 1 - pull
            raise RecflError(f"finetune.elastic * finetune.learning_rate = {pull:g} must be "
                             "< 2: each SGD step multiplies the distance to the global weights by 1 - learning_rate * "
                             "elastic, so the pull would push the weights away from them; lower one of the two")

    @property
    def objective(self) -> Objective:
        return Objective(self.loss, self.elastic, self.trainable)

    @property
    def step(self) -> StepSettings:
        o = self.objective
        return StepSettings(self.learning_rate, o.pairwise, o.elastic, o.trainable)

    def capacity(self, spec: ModelSpec) -> dict[str, int]:
        """Device rows of each table of ``spec`` (by the vocabulary it indexes)."""
        per_vocabulary = {"items": self.item_capacity, "categories": self.category_capacity}
        return {t.name: per_vocabulary[t.vocabulary] for t in spec.definition.tables}

    def program_spec(self, spec: ModelSpec) -> ModelSpec:
        return spec.with_rows(self.capacity(spec))


def cache_key(spec: ModelSpec, batch_size: int, ops: str) -> str:
    """Stable key of one exported program: model, capacity, batch size, ops, TF and format versions."""
    import tensorflow as tf

    text = json.dumps({"spec": spec.to_json(), "batch": batch_size, "ops": ops, "tf": tf.__version__,
                       "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _module(spec: ModelSpec, batch_size: int):
    """A ``tf.Module`` whose signatures are the device program (variables hold zeros until set)."""
    import tensorflow as tf

    shapes = [shape for _, _, shape in spec.shapes()]
    sizes = [int(np.prod(s)) for s in shapes]
    total = int(sum(sizes))
    c = spec.config
    i32, f32 = tf.int32, tf.float32
    fields = {"item": [], "cats": [c.max_categories], "hist": [c.history]}
    scalars = ["lr", "pairwise", "elastic", *(f"train_{g}" for g in GROUPS)]
    train_inputs = ([tf.TensorSpec([batch_size, *fields[f]], i32, name=f) for f in FIELDS]
                    + [tf.TensorSpec([batch_size], f32, name=n) for n in ("label", "weight")]
                    + [tf.TensorSpec([], f32, name=n) for n in scalars])
    infer_inputs = [tf.TensorSpec([None, *fields[f]], i32, name=f) for f in FIELDS]

    def split(flat):
        return [tf.reshape(part, shape) for part, shape in zip(tf.split(flat, sizes), shapes)]

    class Program(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = [tf.Variable(tf.zeros(s, f32), name=f"w{k}") for k, s in enumerate(shapes)]
            self.anchor = [tf.Variable(tf.zeros(s, f32), name=f"a{k}") for k, s in enumerate(shapes)]

        @tf.function(input_signature=train_inputs, autograph=False)
        def train(self, item, cats, hist, label, weight, lr, pairwise, elastic, train_tables, train_dense, train_private):
            batch = {"item": item, "cats": cats, "hist": hist, "label": label, "weight": weight}
            masks = {"tables": train_tables, "dense": train_dense, "private": train_private}
            new, loss = train_step(spec, [v.read_value() for v in self.w], batch, lr, pairwise,
                                   [a.read_value() for a in self.anchor], elastic, masks)
            for var, value in zip(self.w, new):
                var.assign(value)
            return {"loss": loss}

        @tf.function(input_signature=infer_inputs, autograph=False)
        def infer(self, item, cats, hist):
            z = spec.definition.forward(weights_of(spec, self.w), {"item": item, "cats": cats, "hist": hist})
            return {"probability": tf.sigmoid(z)}

        @tf.function(input_signature=[], autograph=False)
        def get_weights(self):
            return {"weights": tf.concat([tf.reshape(v, [-1]) for v in self.w], 0)}

        @tf.function(input_signature=[tf.TensorSpec([total], f32)], autograph=False)
        def set_weights(self, weights):
            for var, value in zip(self.w, split(weights)):
                var.assign(value)
            return {"size": tf.constant(total)}

        @tf.function(input_signature=[tf.TensorSpec([total], f32)], autograph=False)
        def set_anchor(self, weights):
            for var, value in zip(self.anchor, split(weights)):
                var.assign(value)
            return {"size": tf.constant(total)}

    return Program()


def convert(spec: ModelSpec, batch_size: int, flex: bool) -> bytes:
    """Convert the device program of ``spec`` (rows = capacity) to a ``.tflite`` flatbuffer."""
    import tensorflow as tf

    module = _module(spec, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={name: getattr(module, name).get_concrete_function() for name in SIGNATURES})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(SIGNATURES))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + ([tf.lite.OpsSet.SELECT_TF_OPS] if flex else [])
        converter.experimental_enable_resource_variables = True
        return converter.convert()


def flex_ops(error: Exception) -> list[str]:
    """The TensorFlow ops a converter error says have no TFLite builtin (empty if it says something else)."""
    found = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(error))
    found += [op.strip() for line in re.findall(r"TF Select ops: ([^\n]+)", str(error)) for op in line.split(",")]
    return sorted(set(found))


def build_program(spec: ModelSpec, batch_size: int, ops: str) -> tuple[bytes, dict[str, int]]:
    """The flatbuffer and its Flex nodes per op (none for a builtin-only program)."""
    from tensorflow.lite.python.convert_phase import ConverterError

    name = spec.config.name
    if ops != "flex":
        try:
            return convert(spec, batch_size, flex=False), {}
        except ConverterError as exc:
            needed = flex_ops(exc)
            if not needed:
                raise RecflError(f"model {name!r}: cannot be converted to a TFLite training program "
                                 f"({_first_error(exc)})") from None
            if ops == "builtin":
                raise RecflError(f"model {name!r}: its training step needs TensorFlow ops that TFLite has no builtin for: "
                                 f"{', '.join(needed)}; write them with recfl.core.models.layers, or set finetune.ops = "
                                 "\"flex\"") from None
            log.warning("model %r: %s have no TFLite builtin; this device program needs the Flex delegate",
                        name, ", ".join(needed))
    try:
        flatbuffer = convert(spec, batch_size, flex=True)
    except Exception as exc:  # a model's forward the converter cannot handle at all
        raise RecflError(f"model {name!r}: cannot be converted to a TFLite training program ({_first_error(exc)})") from None
    return flatbuffer, flex_nodes(flatbuffer)


def flex_nodes(flatbuffer: bytes) -> dict[str, int]:
    """How many nodes of each Flex (TensorFlow-kernel) op a converted program has, read from its operator codes."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    codes = [(model.OperatorCodes(k).CustomCode() or b"").decode() for k in range(model.OperatorCodesLength())]
    counts: dict[str, int] = {}
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for k in range(graph.OperatorsLength()):
            code = codes[graph.Operators(k).OpcodeIndex()]
            if code.startswith("Flex"):
                counts[code[4:]] = counts.get(code[4:], 0) + 1
    return dict(sorted(counts.items()))


def _first_error(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if "error" in line.lower()]
    return (lines[0] if lines else str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)[:300]


def export(spec: ModelSpec, cache_dir: Path, batch_size: int = 32, ops: str = "auto") -> Path:
    """The cached ``.tflite`` for ``spec`` (rows = device capacity), converting it (under a file lock) only if missing."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(spec, batch_size, ops)
    path = cache_dir / f"{key}.tflite"
    if path.is_file():
        return path
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():  # another process converted it while we waited
            return path
        started = time.perf_counter()
        flatbuffer, flex = build_program(spec, batch_size, ops)
        record = {"key": key, "spec": spec.to_json(), "batch_size": batch_size, "ops": ops, "flex_nodes": flex,
                  "bytes": len(flatbuffer), "pid": os.getpid(), "seconds": round(time.perf_counter() - started, 3)}
        with open(cache_dir / "conversions.jsonl", "a+b") as out:  # on disk before the program: no program without its record
            end = out.seek(0, os.SEEK_END)
            if end:
                out.seek(end - 1)
            torn = bool(end) and out.read(1) != b"\n"  # a crash mid-append left a partial line: start a new one
            out.write((("\n" if torn else "") + json.dumps(record, sort_keys=True) + "\n").encode())
            out.flush()
            os.fsync(out.fileno())
        with atomic_path(path) as tmp:
            tmp.write_bytes(flatbuffer)
        log.info("converted %s (%d bytes, %s) in %.1f s", path.name, len(flatbuffer),
                 f"Flex nodes: {flex}" if flex else "0 Flex nodes", record["seconds"])
    return path


def conversions(cache_dir: Path) -> list[dict]:
    """Every conversion recorded in ``cache_dir``, oldest first. A record is written (and synced) before its
    program, so a crash can leave a record without a program (converted again next time) or a torn line, which
    is skipped: it belongs to no program (the next record starts on a line of its own)."""
    path = Path(cache_dir) / "conversions.jsonl"
    records = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else ():  # damaged bytes: skipped lines
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def conversion_of(program: Path) -> dict:
    """The latest conversion record of a cached program (its Flex nodes, size, spec)."""
    program = Path(program)
    found = [c for c in conversions(program.parent) if c.get("key") == program.stem]
    if not found:
        raise RecflError(f"{program}: no conversion record in {program.parent / 'conversions.jsonl'}; delete the "
                         "program to convert it again")
    return found[-1]


class DeviceTrainer:
    """A :class:`DeviceProgram` over the model's weights: ModelParams in and out, Examples to train on and score."""

    def __init__(self, path: Path, spec: ModelSpec):
        self.spec = spec
        self.program = DeviceProgram(path, [shape for _, _, shape in spec.shapes()])

    def set_params(self, params: ModelParams, anchor: bool = False) -> None:
        """Load weights shaped like the program's spec (capacity-sized tables, see ``Submodel.extract``);
        with ``anchor``, also make them the weights the elastic term pulls toward."""
        self.program.set_weights(params.arrays())
        if anchor:
            self.program.set_anchor(params.arrays())

    def get_params(self) -> ModelParams:
        return ModelParams.from_arrays(self.spec, self.program.get_weights())

    def train_step(self, batch: Examples, settings: StepSettings) -> float:
        return self.program.train_step(batch.batch(), settings)

    def predict(self, examples: Examples) -> np.ndarray:
        return self.program.predict(examples.inputs())

    def save(self, path: Path) -> None:
        """Write the current weights to ``path`` (``.npz``): checkpoints are the host's job."""
        with atomic_path(Path(path)) as tmp, open(tmp, "wb") as out:
            np.savez(out, *self.program.get_weights())

    def restore(self, path: Path) -> None:
        with np.load(path) as npz:
            self.program.set_weights([npz[f"arr_{i}"] for i in range(len(npz.files))])


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
    settings = config.step
    best, best_epoch, steps, epoch = trainer.get_params(), 0, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        order = rng.permutation(len(fit))
        for lo in range(0, len(order), config.batch_size):
            trainer.train_step(fit.take(order[lo : lo + config.batch_size]), settings)
            steps += 1
        losses.append(logloss(val.label, trainer.predict(val)))
        if losses[-1] < losses[best_epoch]:
            best, best_epoch = trainer.get_params(), epoch
        elif epoch - best_epoch >= config.patience:
            break
    trainer.set_params(best)
    return FinetuneResult(epoch, best_epoch, steps, losses, time.perf_counter() - started)
