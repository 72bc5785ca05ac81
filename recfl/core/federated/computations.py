"""The TFF computations of one round: client work, sparse aggregation, heat counts.

A client receives its submodel (for every table, the rows its data touches,
gathered by the server, plus the dense weights), runs local SGD epochs with
the project's shared training step (:func:`recfl.core.models.train_step`),
and returns only, per table, row ids and example-weighted row deltas, plus
weighted dense deltas and its example count (and weighted loss, a metric).
Its device-private weights start at zero, train locally and are never
returned. Sparse uploads are summed per row by ``federated_aggregate`` with a
concatenating accumulator whose report de-duplicates ids, so server work is
proportional to the rows touched, not to the vocabulary. Results are
unnormalised partial sums, so chunks of clients (and workers) merge exactly.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from recfl.core.features import FIELDS
from recfl.core.models import ModelSpec, train_step


@dataclass(frozen=True)
class ClientWork:
    """Local training settings (from ``[federated]``)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05


def table_names(spec: ModelSpec) -> list[str]:
    return [t.name for t in spec.definition.tables]


def dense_names(spec: ModelSpec) -> list[str]:
    return [name for name, _ in spec.definition.dense]


def _struct(items):
    import tensorflow_federated as tff

    return tff.StructWithPythonType(items, collections.OrderedDict)


def field_types(spec: ModelSpec) -> list:
    """TFF types of a client's examples: the batch fields, ``label`` and ``weight``."""
    import tensorflow_federated as tff

    c = spec.config
    widths = {"item": [], "cats": [c.max_categories], "hist": [c.history]}
    return ([(f, tff.TensorType(np.int32, [None, *widths[f]])) for f in FIELDS]
            + [("label", tff.TensorType(np.float32, [None])), ("weight", tff.TensorType(np.float32, [None]))])


def types(spec: ModelSpec):
    """TFF types of the dense weights, of a client's input (rows gathered by the host) and of a heat upload."""
    import tensorflow_federated as tff

    dense = _struct([(n, tff.TensorType(np.float32, s)) for n, s in spec.definition.dense])
    rows = []
    for t in spec.definition.tables:
        rows += [(f"{t.name}_keys", tff.TensorType(np.int32, [None])), (f"{t.name}_rows", tff.TensorType(np.float32, [None, t.dim]))]
    client = _struct(rows + field_types(spec) + [("seed", tff.TensorType(np.int32, [2]))])
    heat_client = _struct([(f"{t}_keys", tff.TensorType(np.int32, [None])) for t in table_names(spec)]
                          + [("examples", tff.TensorType(np.float32))])
    return dense, client, heat_client


def sparse_type(width: int):
    """Rows of one table: ``ids`` and their ``rows``."""
    import tensorflow_federated as tff

    return _struct([("ids", tff.TensorType(np.int32, [None])), ("rows", tff.TensorType(np.float32, [None, width]))])


def aggregate_type(spec: ModelSpec):
    """The type of summed uploads: per-row sums of each table, dense sums, examples, weighted loss."""
    import tensorflow_federated as tff

    dense_t, _, _ = types(spec)
    return _struct([("tables", _struct([(t.name, sparse_type(t.dim)) for t in spec.definition.tables])), ("dense", dense_t),
                    ("examples", tff.TensorType(np.float32)), ("loss", tff.TensorType(np.float32))])


def sparse_sum(values, width: int):
    """Per-row sums of (ids, rows) uploads: concatenate, then de-duplicate in the report."""
    import tensorflow as tf
    import tensorflow_federated as tff

    sparse = sparse_type(width)

    @tff.tensorflow.computation
    def zero():
        return collections.OrderedDict(ids=tf.zeros([0], tf.int32), rows=tf.zeros([0, width], tf.float32))

    @tff.tensorflow.computation(sparse, sparse)
    def concat(a, b):
        return collections.OrderedDict(ids=tf.concat([a["ids"], b["ids"]], 0), rows=tf.concat([a["rows"], b["rows"]], 0))

    @tff.tensorflow.computation(sparse)
    def report(a):
        ids, segment = tf.unique(a["ids"])
        return collections.OrderedDict(ids=ids, rows=tf.math.unsorted_segment_sum(a["rows"], segment, tf.size(ids)))

    return tff.federated_aggregate(values, zero(), concat, concat, report)


def aggregate(uploads, spec: ModelSpec):
    """Sum client uploads at the server: per-row sparse sums, dense, examples and loss (unnormalised)."""
    import tensorflow_federated as tff

    return tff.federated_zip(collections.OrderedDict(
        tables=tff.federated_zip(collections.OrderedDict(
            (t.name, sparse_sum(uploads.tables[t.name], t.dim)) for t in spec.definition.tables)),
        dense=tff.federated_sum(uploads.dense),
        examples=tff.federated_sum(uploads.examples),
        loss=tff.federated_sum(uploads.loss),
    ))


def client_update(spec: ModelSpec, dense, rows: dict, x, work: ClientWork):
    """A client's whole upload: local SGD from its rows, then ids, example-weighted deltas, its count.

    ``rows`` maps each table to ``(keys, rows)``. The only thing that leaves a
    client, whichever way its rows arrived.
    """
    import tensorflow as tf

    tables = table_names(spec)
    private = [tf.zeros(shape, tf.float32) for _, shape in spec.definition.private]
    start = [rows[t][1] for t in tables] + [dense[n] for n in dense_names(spec)] + private
    end, loss = local_sgd(spec, start, x, work)
    n = tf.cast(tf.shape(x["label"])[0], tf.float32)
    k = len(tables)
    return collections.OrderedDict(
        tables=collections.OrderedDict(
            (t, collections.OrderedDict(ids=rows[t][0], rows=n * (end[i] - start[i]))) for i, t in enumerate(tables)),
        dense=collections.OrderedDict(
            (name, n * (end[k + j] - start[k + j])) for j, name in enumerate(dense_names(spec))),
        examples=n,
        loss=n * loss,
    )


def local_sgd(spec: ModelSpec, params: list, x, work: ClientWork):
    """``work.epochs`` epochs of minibatch SGD over the client's examples (graph mode).

    Each epoch visits the examples in a stateless-random order seeded by the
    round's client seed, so a rerun of the same round is bit-identical.
    Returns (new params, mean batch loss).
    """
    import tensorflow as tf

    n = tf.shape(x["label"])[0]
    batches = (n + work.batch_size - 1) // work.batch_size
    keys = [*FIELDS, "label", "weight"]

    def body(step, params, loss_sum):
        epoch, b = step // batches, step % batches
        order = tf.argsort(tf.random.stateless_uniform([n], seed=x["seed"] + tf.stack([0, epoch])))
        pick = order[b * work.batch_size : tf.minimum((b + 1) * work.batch_size, n)]
        batch = {key: tf.gather(x[key], pick) for key in keys}
        params, loss = train_step(spec, params, batch, work.learning_rate)
        return step + 1, params, loss_sum + loss

    steps, params, loss_sum = tf.while_loop(
        lambda step, *_: step < work.epochs * batches, body, (tf.constant(0), params, tf.constant(0.0)),
        shape_invariants=(tf.TensorShape([]), [tf.TensorShape(p.shape) for p in params], tf.TensorShape([])),
    )
    return params, loss_sum / tf.cast(tf.maximum(steps, 1), tf.float32)


@dataclass(frozen=True)
class Computations:
    """The federated computations for one model and client-work setting."""

    client_work: object  # (dense, client) -> upload; the only thing a client returns
    round: object  # (dense@SERVER, clients@CLIENTS) -> partial sums @SERVER
    heat: object  # (clients@CLIENTS) -> per-row example counts @SERVER


@lru_cache(maxsize=8)
def build(spec: ModelSpec, work: ClientWork) -> Computations:
    """Trace the computations (once per spec and client-work setting)."""
    import tensorflow as tf
    import tensorflow_federated as tff

    dense_t, client_t, heat_t = types(spec)
    tables = table_names(spec)

    @tff.tensorflow.computation(dense_t, client_t)
    def client_work(dense, x):
        return client_update(spec, dense, {t: (x[f"{t}_keys"], x[f"{t}_rows"]) for t in tables}, x, work)

    @tff.federated_computation(tff.FederatedType(dense_t, tff.SERVER), tff.FederatedType(client_t, tff.CLIENTS))
    def round_partial(dense, clients):
        return aggregate(tff.federated_map(client_work, (tff.federated_broadcast(dense), clients)), spec)

    @tff.tensorflow.computation(heat_t)
    def heat_upload(x):
        def counts(keys):
            return x["examples"] * tf.ones([tf.size(keys), 1], tf.float32)

        return collections.OrderedDict(
            tables=collections.OrderedDict(
                (t, collections.OrderedDict(ids=x[f"{t}_keys"], rows=counts(x[f"{t}_keys"]))) for t in tables),
            examples=x["examples"],
        )

    @tff.federated_computation(tff.FederatedType(heat_t, tff.CLIENTS))
    def heat(clients):
        up = tff.federated_map(heat_upload, clients)
        return tff.federated_zip(collections.OrderedDict(
            tables=tff.federated_zip(collections.OrderedDict((t, sparse_sum(up.tables[t], 1)) for t in tables)),
            examples=tff.federated_sum(up.examples),
        ))

    return Computations(client_work, round_partial, heat)
