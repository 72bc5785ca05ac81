"""The TFF computations of one round: client work, sparse aggregation, heat counts.

A client receives its submodel (the rows its data touches, gathered by the
server, plus the dense layers), runs local SGD epochs with the project's one
model definition, and returns only row ids, example-weighted row deltas,
weighted dense deltas and its example count (and weighted loss, a metric).
Sparse uploads are summed per row by ``federated_aggregate`` with a
concatenating accumulator whose report de-duplicates ids, so server work is
proportional to the rows touched, not to the vocabulary. Results are
unnormalised partial sums, so chunks of clients (and workers) merge exactly.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from recfl.core.model import ModelSpec, sgd_step


@dataclass(frozen=True)
class ClientWork:
    """Local training settings (from ``[federated]``)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05


def dense_names(spec: ModelSpec) -> list[str]:
    return [f"{'w' if k % 2 == 0 else 'b'}{k // 2}" for k in range(len(spec.dense_shapes()))]


def types(spec: ModelSpec):
    """TFF types of the dense layers, of a client's input (rows gathered by the host) and of a heat upload."""
    import tensorflow_federated as tff

    d = spec.embed_dim
    struct = lambda items: tff.StructWithPythonType(items, collections.OrderedDict)
    dense = struct([(n, tff.TensorType(np.float32, s)) for n, s in zip(dense_names(spec), spec.dense_shapes())])
    client = struct([
        ("item_keys", tff.TensorType(np.int32, [None])), ("item_rows", tff.TensorType(np.float32, [None, d])),
        ("cat_keys", tff.TensorType(np.int32, [None])), ("cat_rows", tff.TensorType(np.float32, [None, d])),
        ("item", tff.TensorType(np.int32, [None])), ("cats", tff.TensorType(np.int32, [None, spec.max_categories])),
        ("hist", tff.TensorType(np.int32, [None, spec.history])), ("label", tff.TensorType(np.float32, [None])),
        ("seed", tff.TensorType(np.int32, [2])),
    ])
    heat_client = struct([
        ("item_keys", tff.TensorType(np.int32, [None])), ("cat_keys", tff.TensorType(np.int32, [None])),
        ("examples", tff.TensorType(np.float32)),
    ])
    return dense, client, heat_client


def sparse_type(width: int):
    """Rows of one table: ``ids`` and their ``rows``."""
    import tensorflow_federated as tff

    return tff.StructWithPythonType(
        [("ids", tff.TensorType(np.int32, [None])), ("rows", tff.TensorType(np.float32, [None, width]))],
        collections.OrderedDict,
    )


def aggregate_type(spec: ModelSpec):
    """The type of summed uploads: per-row sums, dense sums, examples, weighted loss."""
    import tensorflow_federated as tff

    dense_t, _, _ = types(spec)
    return tff.StructWithPythonType([
        ("item", sparse_type(spec.embed_dim)), ("cat", sparse_type(spec.embed_dim)), ("dense", dense_t),
        ("examples", tff.TensorType(np.float32)), ("loss", tff.TensorType(np.float32)),
    ], collections.OrderedDict)


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
        item=sparse_sum(uploads.item, spec.embed_dim),
        cat=sparse_sum(uploads.cat, spec.embed_dim),
        dense=tff.federated_sum(uploads.dense),
        examples=tff.federated_sum(uploads.examples),
        loss=tff.federated_sum(uploads.loss),
    ))


def client_update(dense, item_keys, item_rows, cat_keys, cat_rows, x, work: ClientWork, names: list[str]):
    """A client's whole upload: local SGD from its rows, then ids, example-weighted deltas, its count.

    The only thing that leaves a client, whichever way its rows arrived.
    """
    import tensorflow as tf

    start = [item_rows, cat_rows, *(dense[n] for n in names)]
    end, loss = local_sgd(start, x, work)
    n = tf.cast(tf.shape(x["label"])[0], tf.float32)
    return collections.OrderedDict(
        item=collections.OrderedDict(ids=item_keys, rows=n * (end[0] - start[0])),
        cat=collections.OrderedDict(ids=cat_keys, rows=n * (end[1] - start[1])),
        dense=collections.OrderedDict((name, n * (e - s)) for name, s, e in zip(names, start[2:], end[2:])),
        examples=n,
        loss=n * loss,
    )


def local_sgd(params: list, x, work: ClientWork):
    """``work.epochs`` epochs of minibatch SGD over the client's examples (graph mode).

    Each epoch visits the examples in a stateless-random order seeded by the
    round's client seed, so a rerun of the same round is bit-identical.
    Returns (new params, mean batch loss).
    """
    import tensorflow as tf

    n = tf.shape(x["label"])[0]
    batches = (n + work.batch_size - 1) // work.batch_size

    def body(step, params, loss_sum):
        epoch, b = step // batches, step % batches
        order = tf.argsort(tf.random.stateless_uniform([n], seed=x["seed"] + tf.stack([0, epoch])))
        pick = order[b * work.batch_size : tf.minimum((b + 1) * work.batch_size, n)]
        params, loss = sgd_step(params, tf.gather(x["item"], pick), tf.gather(x["cats"], pick),
                                tf.gather(x["hist"], pick), tf.gather(x["label"], pick), work.learning_rate)
        return step + 1, params, loss_sum + loss

    steps, params, loss_sum = tf.while_loop(
        lambda step, *_: step < work.epochs * batches, body, (tf.constant(0), params, tf.constant(0.0)),
        shape_invariants=(tf.TensorShape([]), [tf.TensorShape(p.shape) for p in params], tf.TensorShape([])),
    )
    return params, loss_sum / tf.cast(tf.maximum(steps, 1), tf.float32)


@dataclass(frozen=True)
class Computations:
    """The federated computations for one architecture and client-work setting."""

    client_work: object  # (dense, client) -> upload; the only thing a client returns
    round: object  # (dense@SERVER, clients@CLIENTS) -> partial sums @SERVER
    heat: object  # (clients@CLIENTS) -> per-row example counts @SERVER


@lru_cache(maxsize=8)
def build(spec: ModelSpec, work: ClientWork) -> Computations:
    """Trace the computations (once per spec and client-work setting)."""
    import tensorflow as tf
    import tensorflow_federated as tff

    dense_t, client_t, heat_t = types(spec)
    names = dense_names(spec)

    @tff.tensorflow.computation(dense_t, client_t)
    def client_work(dense, x):
        return client_update(dense, x["item_keys"], x["item_rows"], x["cat_keys"], x["cat_rows"], x, work, names)

    @tff.federated_computation(tff.FederatedType(dense_t, tff.SERVER), tff.FederatedType(client_t, tff.CLIENTS))
    def round_partial(dense, clients):
        return aggregate(tff.federated_map(client_work, (tff.federated_broadcast(dense), clients)), spec)

    @tff.tensorflow.computation(heat_t)
    def heat_upload(x):
        counts = lambda keys: x["examples"] * tf.ones([tf.size(keys), 1], tf.float32)
        return collections.OrderedDict(
            item=collections.OrderedDict(ids=x["item_keys"], rows=counts(x["item_keys"])),
            cat=collections.OrderedDict(ids=x["cat_keys"], rows=counts(x["cat_keys"])),
            examples=x["examples"],
        )

    @tff.federated_computation(tff.FederatedType(heat_t, tff.CLIENTS))
    def heat(clients):
        up = tff.federated_map(heat_upload, clients)
        return tff.federated_zip(collections.OrderedDict(
            item=sparse_sum(up.item, 1), cat=sparse_sum(up.cat, 1), examples=tff.federated_sum(up.examples),
        ))

    return Computations(client_work, round_partial, heat)
