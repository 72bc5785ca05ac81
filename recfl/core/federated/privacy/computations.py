"""The TFF computations of a private round: the private union of row sets, then the securely summed update.

1. ``union(clients@CLIENTS) -> counts@SERVER``: every client reports its
   randomized-response row set as an indicator vector per table; the vectors
   meet only in ``federated_secure_sum_bitwidth`` (1 bit each), so the server
   learns how many clients reported each row, never who.
2. ``round(server@SERVER, clients@CLIENTS) -> sums@SERVER``: the server
   broadcasts the dense weights and the union's rows (ids sorted, padded to a
   fixed capacity); each client takes its own rows from them (a row missing
   from the union starts from the OOV row and its delta is dropped), trains
   with the shared local SGD, clips its whole unweighted update (rows and
   dense layers) to L2 norm ``clip``, adds its share of the Gaussian noise
   (std ``share_std`` per coordinate, so the shares of a round add up to
   ``noise_multiplier * clip``) to every row of the union and every dense
   weight, and uploads it, with its example count and training loss (a
   metric), through one ``tff.aggregators.secure_quantized_sum`` (each value
   clipped to its bounds, 32-bit fixed point, ``federated_secure_sum_bitwidth``).
   One secure sum, not one per tensor: in simulation each is a pass over
   the clients.

Nothing a client returns is per row id: every upload has the union's shape.
"""

from __future__ import annotations

import collections
from functools import lru_cache

import numpy as np

from recfl.core.federated import computations
from recfl.core.federated.privacy import randomized_response, secure
from recfl.core.models import ModelSpec
from recfl.core.vocab import OOV

EXAMPLE_BITS = 24  # the secure sum clips a client's example count to 2**24 - 1
VALUE_BITS = 32  # secure_quantized_sum's fixed point
LOSS_BOUND = 20.0  # a client's mean training loss is clipped to [0, LOSS_BOUND] for the metric


def union_client_type(spec: ModelSpec):
    """What a client holds for the union: its rows per table and the seed of its memoized randomized response."""
    import tensorflow_federated as tff

    return computations.struct(computations.key_types(spec) + [("rr_seed", tff.TensorType(np.int32, [2]))])


@lru_cache(maxsize=8)
def build_union(spec: ModelSpec, keep: float, fake: float):
    """``(clients@CLIENTS) -> {table: int32[rows]}@SERVER``: how many clients reported each row."""
    import tensorflow as tf
    import tensorflow_federated as tff

    tables = spec.definition.tables

    @tff.tensorflow.computation(union_client_type(spec))
    def report(x):
        seeds = tf.random.experimental.stateless_split(x["rr_seed"], len(tables))
        return collections.OrderedDict(
            (t.name, randomized_response.perturb(x[f"{t.name}_keys"], spec.table_rows(t.name), seeds[i], keep, fake))
            for i, t in enumerate(tables))

    @tff.federated_computation(tff.FederatedType(union_client_type(spec), tff.CLIENTS))
    def union(clients):
        return tff.federated_secure_sum_bitwidth(tff.federated_map(report, clients), 1)

    return union


def round_types(spec: ModelSpec, capacity: tuple[tuple[str, int], ...]):
    """TFF types of the server's broadcast (dense weights, union rows, noise settings) and of a client's input."""
    import tensorflow_federated as tff

    dense_t, _, _ = computations.types(spec)
    cap = dict(capacity)
    struct = computations.struct
    union_t = struct([(t.name, struct([("ids", tff.TensorType(np.int32, [cap[t.name]])),
                                       ("rows", tff.TensorType(np.float32, [cap[t.name], t.dim]))]))
                      for t in spec.definition.tables])
    server_t = struct([("dense", dense_t), ("union", union_t), ("share_std", tff.TensorType(np.float32))])
    client_t = struct(computations.key_types(spec) + computations.field_types(spec)
                      + [("seed", tff.TensorType(np.int32, [2])), ("noise_seed", tff.TensorType(np.int32, [2]))])
    return server_t, client_t


def private_update(spec: ModelSpec, work: computations.ClientWork, clip: float, server, x):
    """A client's upload: its clipped, unweighted update over the union's rows and the dense weights, plus its noise share."""
    import tensorflow as tf

    tables, names = spec.definition.tables, computations.dense_names(spec)
    rows, place = {}, {}
    for t in tables:
        ids, table, keys = server["union"][t.name]["ids"], server["union"][t.name]["rows"], x[f"{t.name}_keys"]
        pos = tf.minimum(tf.searchsorted(ids, keys), tf.size(ids) - 1)
        present = tf.equal(tf.gather(ids, pos), keys)
        # the union is sorted and always holds PAD and OOV, so the OOV row sits at position OOV
        rows[t.name] = tf.where(present[:, None], tf.gather(table, pos), table[OOV][None, :])
        place[t.name] = (pos, tf.cast(present, tf.float32)[:, None])
    start, end, loss, n = computations.train_locally(spec, server["dense"], rows, x, work)
    k = len(tables)
    deltas = ([(end[i] - start[i]) * place[t.name][1] for i, t in enumerate(tables)]
              + [end[k + j] - start[k + j] for j in range(len(names))])
    scale = tf.minimum(1.0, clip / tf.maximum(tf.linalg.global_norm(deltas), 1e-12))
    seeds = tf.random.experimental.stateless_split(x["noise_seed"], len(deltas))

    def noisy(i, value):
        return value + server["share_std"] * tf.random.stateless_normal(tf.shape(value), seed=seeds[i])

    return collections.OrderedDict(
        update=collections.OrderedDict(
            tables=collections.OrderedDict(
                (t.name, noisy(i, tf.scatter_nd(place[t.name][0][:, None], scale * deltas[i], tf.shape(server["union"][t.name]["rows"]))))
                for i, t in enumerate(tables)),
            dense=collections.OrderedDict((name, noisy(k + j, scale * deltas[k + j])) for j, name in enumerate(names)),
        ),
        examples=tf.cast(n, tf.int32),
        loss=loss,
    )


@lru_cache(maxsize=16)
def build_round(spec: ModelSpec, work: computations.ClientWork, capacity: tuple[tuple[str, int], ...], clip: float, bound: float):
    """``(server@SERVER, clients@CLIENTS) -> <update, examples, loss>@SERVER`` for a union of ``capacity``
    rows per table; updates are clipped to L2 norm ``clip`` and each noisy value to ``[-bound, bound]``."""
    import tensorflow_federated as tff

    server_t, client_t = round_types(spec, capacity)

    @tff.tensorflow.computation(server_t, client_t)
    def client_work(server, x):
        return private_update(spec, work, clip, server, x)

    def bounds(value: float, examples: int, loss: float):
        update = collections.OrderedDict(
            tables=collections.OrderedDict((t.name, np.float32(value)) for t in spec.definition.tables),
            dense=collections.OrderedDict((name, np.float32(value)) for name in computations.dense_names(spec)))
        return collections.OrderedDict(update=update, examples=np.int32(examples), loss=np.float32(loss))

    @tff.federated_computation(tff.FederatedType(server_t, tff.SERVER), tff.FederatedType(client_t, tff.CLIENTS))
    def private_round(server, clients):
        uploads = tff.federated_map(client_work, (tff.federated_broadcast(server), clients))
        with secure.quiet_unused_assertions():
            return tff.aggregators.secure_quantized_sum(uploads, bounds(-bound, 0, 0.0), bounds(bound, 2**EXAMPLE_BITS - 1, LOSS_BOUND))

    return private_round


def upload_bytes(spec: ModelSpec, union_rows: dict[str, int]) -> int:
    """Bytes one client sends in a round, at the secure sums' bit widths: a bit per row of every table
    (its reported set), 32 bits per value of the union's rows, of the dense weights, of its count and loss."""
    reported = sum(rows for _, rows in spec.rows)
    values = sum(union_rows[t.name] * t.dim for t in spec.definition.tables) + sum(int(np.prod(s)) for _, s in spec.definition.dense)
    bits = reported + VALUE_BITS * (values + 2) + 1  # + the example count and the loss, + the 1-bit summand count
    return -(-bits // 8)


def download_bytes(spec: ModelSpec, union_rows: dict[str, int]) -> int:
    """Bytes one client receives: the union's ids and rows (float32) and the dense weights."""
    rows = sum(union_rows[t.name] * (4 * t.dim + 4) for t in spec.definition.tables)
    return rows + sum(4 * int(np.prod(s)) for _, s in spec.definition.dense)
