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

The state is ``tables, dense, coefficients, round`` (one table and one
coefficient vector per table of the model).
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
from recfl.core.models import ModelParams, ModelSpec


def key_capacity(rows: int) -> int:
    """Key vectors are padded to a power of two (at least 8), so a run traces a handful of shapes."""
    return 1 << max(3, (int(rows) - 1).bit_length())


def state_value(params: ModelParams, coefficients: RowCoefficients, round_number: int, spec: ModelSpec) -> collections.OrderedDict:
    """The process state as the Python value TFF takes and returns."""
    tables = computations.table_names(spec)
    return collections.OrderedDict(
        tables=collections.OrderedDict((t, params.tables[t]) for t in tables),
        dense=collections.OrderedDict((n, params.dense[n]) for n in computations.dense_names(spec)),
        coefficients=collections.OrderedDict((t, coefficients.tables[t]) for t in tables), round=np.int32(round_number),
    )


def params_of(state, spec: ModelSpec) -> ModelParams:
    """The model weights of a process state (the server holds no device-private weights: zeros)."""
    return ModelParams({t: np.asarray(state["tables"][t]) for t in computations.table_names(spec)},
                       {n: np.asarray(state["dense"][n]) for n in computations.dense_names(spec)},
                       {n: np.zeros(s, np.float32) for n, s in spec.definition.private})


def client_value(client: ClientData, capacity: dict[str, int], seed: tuple[int, int]) -> collections.OrderedDict:
    """What a client holds: the keys of its rows per table (padded with PAD), their counts and its local examples."""
    value = collections.OrderedDict()
    for name, keys in client.submodel.rows.items():
        value[f"{name}_keys"] = np.pad(np.asarray(keys, np.int32), (0, capacity[name] - len(keys)))
        value[f"{name}_count"] = np.int32(len(keys))
    value.update(client.examples.batch())
    value["seed"] = np.asarray(seed, dtype=np.int32)
    return value


def _state_type(spec: ModelSpec):
    import tensorflow_federated as tff

    dense_t, _, _ = computations.types(spec)
    struct = lambda items: tff.StructWithPythonType(items, collections.OrderedDict)
    tables = spec.definition.tables
    return struct([
        ("tables", struct([(t.name, tff.TensorType(np.float32, [spec.table_rows(t.name), t.dim])) for t in tables])),
        ("dense", dense_t),
        ("coefficients", struct([(t.name, tff.TensorType(np.float32, [spec.table_rows(t.name)])) for t in tables])),
        ("round", tff.TensorType(np.int32)),
    ])


@lru_cache(maxsize=16)
def build_next(spec: ModelSpec, work: computations.ClientWork, capacity: tuple[tuple[str, int], ...], server_lr: float = 1.0):
    """The process's ``next``: ``(state@SERVER, clients@CLIENTS) -> (state@SERVER, metrics@SERVER)``
    for clients of at most ``capacity`` rows per table (``(table, rows)`` pairs)."""
    import tensorflow as tf
    import tensorflow_federated as tff

    names = computations.dense_names(spec)
    tables = spec.definition.tables
    cap = dict(capacity)
    dense_t, _, _ = computations.types(spec)
    state_t = _state_type(spec)
    keys = []
    for t in tables:
        keys += [(f"{t.name}_keys", tff.TensorType(np.int32, [cap[t.name]])), (f"{t.name}_count", tff.TensorType(np.int32))]
    client_t = tff.StructWithPythonType(keys + computations.field_types(spec) + [("seed", tff.TensorType(np.int32, [2]))],
                                        collections.OrderedDict)

    def selector(rows: int, width: int):
        @tff.tensorflow.computation(tff.TensorType(np.float32, [rows, width]), np.int32)
        def select(table, key):
            return tf.gather(table, key)

        return select

    def projection(path: tuple[str, ...], value_t):
        @tff.tensorflow.computation(value_t)
        def project(value):
            for key in path:
                value = value[key]
            return value

        return project

    rows_t = tff.StructWithPythonType(
        [(t.name, tff.SequenceType(tff.TensorType(np.float32, [t.dim]))) for t in tables], collections.OrderedDict)

    @tff.tensorflow.computation(dense_t, rows_t, client_t)
    def client_work(dense, received, x):
        def rows(t):  # the selected rows of table t as one [count, d] tensor, with their keys
            count = x[f"{t.name}_count"]
            return x[f"{t.name}_keys"][:count], received[t.name].batch(cap[t.name], drop_remainder=True).get_single_element()[:count]

        return computations.client_update(spec, dense, {t.name: rows(t) for t in tables}, x, work)

    @tff.tensorflow.computation(state_t, computations.aggregate_type(spec))
    def server_update(state, total):
        new_tables, dense = server_step({t.name: state["tables"][t.name] for t in tables}, [state["dense"][n] for n in names],
                                        {t.name: state["coefficients"][t.name] for t in tables}, total, names, server_lr)
        new = collections.OrderedDict(tables=collections.OrderedDict((t.name, new_tables[t.name]) for t in tables),
                                      dense=collections.OrderedDict(zip(names, dense)),
                                      coefficients=state["coefficients"], round=state["round"] + 1)
        metrics = collections.OrderedDict(examples=total["examples"],
                                          train_loss=total["loss"] / tf.maximum(total["examples"], 1.0))
        return collections.OrderedDict(state=new, metrics=metrics)

    @tff.federated_computation(tff.FederatedType(state_t, tff.SERVER), tff.FederatedType(client_t, tff.CLIENTS))
    def next_round(state, clients):
        def select(t):
            return tff.federated_select(
                tff.federated_map(projection((f"{t.name}_keys",), client_t), clients),
                tff.federated_value(np.int32(spec.table_rows(t.name) - 1), tff.SERVER),
                tff.federated_map(projection(("tables", t.name), state_t), state), selector(spec.table_rows(t.name), t.dim))

        dense = tff.federated_map(projection(("dense",), state_t), state)
        received = tff.federated_zip(collections.OrderedDict((t.name, select(t)) for t in tables))
        uploads = tff.federated_map(client_work, (tff.federated_broadcast(dense), received, clients))
        updated = tff.federated_map(server_update, (state, computations.aggregate(uploads, spec)))
        return updated.state, updated.metrics

    return next_round


def build_fedsubavg_process(spec: ModelSpec, work: computations.ClientWork, coefficients: RowCoefficients,
                            initial: ModelParams, capacity: dict[str, int], server_lr: float = 1.0):
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

    return tff.templates.IterativeProcess(initialize, build_next(spec, work, tuple(capacity.items()), server_lr))


class SelectProcess(FederatedProcess):
    """:class:`FederatedProcess` whose rounds run as the TFF process's ``next`` (on the first worker).

    Each round's key capacity is the next power of two of its largest
    submodel, so clients are never truncated and few shapes are traced.
    """

    def _round(self, state: ServerState, clients: list[ClientData], seeds: list) -> tuple[ModelParams, float, float]:
        capacity = {t: key_capacity(max(len(c.submodel.rows[t]) for c in clients)) for t in computations.table_names(self.spec)}
        next_round = build_next(self.spec, self.work, tuple(capacity.items()), self.server_lr)
        inputs = [client_value(c, capacity, s) for c, s in zip(clients, seeds)]
        new, out = self.runtime.invoke(next_round, (state_value(state.params, self.coefficients, state.round, self.spec), inputs))
        return params_of(new, self.spec), float(out["examples"]), float(out["train_loss"])
