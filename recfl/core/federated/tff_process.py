"""FedSubAvg / FedAvg as a ``tff.templates.IterativeProcess``: every step of a round is a TFF computation.

``next(state@SERVER, clients@CLIENTS)`` runs, inside one federated computation:

1. **distribute**: ``tff.federated_select`` sends each client exactly the rows
   of its submodel keys (keys padded to the process's fixed capacity with the
   PAD row, since ``federated_select`` needs a fixed-size key vector); the
   dense layers are broadcast;
2. **client work**: local SGD on the submodel with the project's one model
   definition (:func:`recfl.core.federated.computations.client_update`);
3. **aggregate**: per-row sparse sums of the uploads (ids, example-weighted
   row deltas), weighted dense sums, example counts;
4. **server update**: the FedSubAvg row rule with the per-row coefficients
   kept in the server state (all ones for FedAvg) and weighted FedAvg on the
   dense layers (:func:`recfl.core.federated.process.server_step`).

The state is ``item_emb, cat_emb, dense, item_coef, cat_coef, round``.
:class:`~recfl.core.federated.process.FederatedProcess` runs the same client
work, aggregation and server step, but gathers the rows on the host instead
of with ``federated_select`` and spreads chunks of clients over several
workers; :class:`SelectProcess` drives this process through the same
interface (``federated.distributor = "select"``), and a test checks that both
give the same round.
"""

from __future__ import annotations

import collections
from functools import lru_cache

import numpy as np

from recfl.core.federated import computations
from recfl.core.federated.clients import ClientData
from recfl.core.federated.process import (
    FederatedProcess,
    RowCoefficients,
    ServerState,
    server_step,
)
from recfl.core.model import ModelParams, ModelSpec


def key_capacity(rows: int) -> int:
    """Key vectors are padded to a power of two (at least 8), so a run traces a handful of shapes."""
    return 1 << max(3, (int(rows) - 1).bit_length())


def state_value(params: ModelParams, coefficients: RowCoefficients, round_number: int, spec: ModelSpec) -> collections.OrderedDict:
    """The process state as the Python value TFF takes and returns."""
    return collections.OrderedDict(
        item_emb=params.item_emb, cat_emb=params.cat_emb,
        dense=collections.OrderedDict(zip(computations.dense_names(spec), params.dense)),
        item_coef=coefficients.item, cat_coef=coefficients.cat, round=np.int32(round_number),
    )


def params_of(state, spec: ModelSpec) -> ModelParams:
    """The model weights of a process state."""
    dense = [state["dense"][n] for n in computations.dense_names(spec)]
    return ModelParams.from_arrays([state["item_emb"], state["cat_emb"], *dense])


def client_value(client: ClientData, capacity: tuple[int, int], seed: tuple[int, int]) -> collections.OrderedDict:
    """What a client holds: the keys of its rows (padded with PAD), their count and its local examples."""
    sub, ex = client.submodel, client.examples
    pad = lambda keys, size: np.pad(np.asarray(keys, np.int32), (0, size - len(keys)))
    return collections.OrderedDict(
        item_keys=pad(sub.item_rows, capacity[0]), item_count=np.int32(len(sub.item_rows)),
        cat_keys=pad(sub.cat_rows, capacity[1]), cat_count=np.int32(len(sub.cat_rows)),
        item=ex.item, cats=ex.cats, hist=ex.hist, label=ex.label, seed=np.asarray(seed, dtype=np.int32),
    )


def _state_type(spec: ModelSpec):
    import tensorflow_federated as tff

    dense_t, _, _ = computations.types(spec)
    return tff.StructWithPythonType([
        ("item_emb", tff.TensorType(np.float32, [spec.item_rows, spec.embed_dim])),
        ("cat_emb", tff.TensorType(np.float32, [spec.category_rows, spec.embed_dim])),
        ("dense", dense_t),
        ("item_coef", tff.TensorType(np.float32, [spec.item_rows])),
        ("cat_coef", tff.TensorType(np.float32, [spec.category_rows])),
        ("round", tff.TensorType(np.int32)),
    ], collections.OrderedDict)


@lru_cache(maxsize=16)
def build_next(spec: ModelSpec, work: computations.ClientWork, capacity: tuple[int, int], server_lr: float = 1.0):
    """The process's ``next``: ``(state@SERVER, clients@CLIENTS) -> (state@SERVER, metrics@SERVER)``
    for clients of at most ``capacity`` (item, category) rows."""
    import tensorflow as tf
    import tensorflow_federated as tff

    names = computations.dense_names(spec)
    dense_t, _, _ = computations.types(spec)
    state_t = _state_type(spec)
    client_t = tff.StructWithPythonType([
        ("item_keys", tff.TensorType(np.int32, [capacity[0]])), ("item_count", tff.TensorType(np.int32)),
        ("cat_keys", tff.TensorType(np.int32, [capacity[1]])), ("cat_count", tff.TensorType(np.int32)),
        ("item", tff.TensorType(np.int32, [None])), ("cats", tff.TensorType(np.int32, [None, spec.max_categories])),
        ("hist", tff.TensorType(np.int32, [None, spec.history])), ("label", tff.TensorType(np.float32, [None])),
        ("seed", tff.TensorType(np.int32, [2])),
    ], collections.OrderedDict)
    row_t = tff.TensorType(np.float32, [spec.embed_dim])

    def selector(rows: int):
        @tff.tensorflow.computation(tff.TensorType(np.float32, [rows, spec.embed_dim]), np.int32)
        def select(table, key):
            return tf.gather(table, key)

        return select

    def projection(key: str, value_t):
        @tff.tensorflow.computation(value_t)
        def project(value):
            return value[key]

        return project

    @tff.tensorflow.computation(dense_t, tff.SequenceType(row_t), tff.SequenceType(row_t), client_t)
    def client_work(dense, item_rows, cat_rows, x):
        def received(rows, size, count):  # the selected rows as one [count, d] tensor
            return rows.batch(size, drop_remainder=True).get_single_element()[:count]

        return computations.client_update(
            dense, x["item_keys"][: x["item_count"]], received(item_rows, capacity[0], x["item_count"]),
            x["cat_keys"][: x["cat_count"]], received(cat_rows, capacity[1], x["cat_count"]), x, work, names)

    @tff.tensorflow.computation(state_t, computations.aggregate_type(spec))
    def server_update(state, total):
        item, cat, dense = server_step(state["item_emb"], state["cat_emb"], [state["dense"][n] for n in names],
                                       state["item_coef"], state["cat_coef"], total, names, server_lr)
        new = collections.OrderedDict(item_emb=item, cat_emb=cat, dense=collections.OrderedDict(zip(names, dense)),
                                      item_coef=state["item_coef"], cat_coef=state["cat_coef"], round=state["round"] + 1)
        metrics = collections.OrderedDict(examples=total["examples"],
                                          train_loss=total["loss"] / tf.maximum(total["examples"], 1.0))
        return collections.OrderedDict(state=new, metrics=metrics)

    @tff.federated_computation(tff.FederatedType(state_t, tff.SERVER), tff.FederatedType(client_t, tff.CLIENTS))
    def next_round(state, clients):
        def select(table: str, keys: str, rows: int):
            return tff.federated_select(
                tff.federated_map(projection(keys, client_t), clients),
                tff.federated_value(np.int32(rows - 1), tff.SERVER),
                tff.federated_map(projection(table, state_t), state), selector(rows))

        dense = tff.federated_map(projection("dense", state_t), state)
        uploads = tff.federated_map(client_work, (tff.federated_broadcast(dense),
                                                  select("item_emb", "item_keys", spec.item_rows),
                                                  select("cat_emb", "cat_keys", spec.category_rows), clients))
        updated = tff.federated_map(server_update, (state, computations.aggregate(uploads, spec)))
        return updated.state, updated.metrics

    return next_round


def build_fedsubavg_process(spec: ModelSpec, work: computations.ClientWork, coefficients: RowCoefficients,
                            initial: ModelParams, capacity: tuple[int, int], server_lr: float = 1.0):
    """A ``tff.templates.IterativeProcess`` of FedSubAvg (FedAvg with unit ``coefficients``).

    ``initialize()`` returns ``initial`` with the coefficients and round 0;
    ``next(state, clients)`` returns ``(state, metrics)``, where each client is
    a :func:`client_value` with keys padded to ``capacity``.
    """
    import tensorflow_federated as tff

    start = state_value(initial, coefficients, 0, spec)

    @tff.tensorflow.computation
    def initial_state():
        return start

    @tff.federated_computation
    def initialize():
        return tff.federated_eval(initial_state, tff.SERVER)

    return tff.templates.IterativeProcess(initialize, build_next(spec, work, capacity, server_lr))


class SelectProcess(FederatedProcess):
    """:class:`FederatedProcess` whose rounds run as the TFF process's ``next`` (on the first worker).

    Each round's key capacity is the next power of two of its largest
    submodel, so clients are never truncated and few shapes are traced.
    """

    def _round(self, state: ServerState, clients: list[ClientData], seeds: list) -> tuple[ModelParams, float, float]:
        capacity = (key_capacity(max(len(c.submodel.item_rows) for c in clients)),
                    key_capacity(max(len(c.submodel.cat_rows) for c in clients)))
        next_round = build_next(self.spec, self.work, capacity, self.server_lr)
        inputs = [client_value(c, capacity, s) for c, s in zip(clients, seeds)]
        new, out = self.runtime.invoke(next_round, (state_value(state.params, self.coefficients, state.round, self.spec), inputs))
        return params_of(new, self.spec), float(out["examples"]), float(out["train_loss"])
