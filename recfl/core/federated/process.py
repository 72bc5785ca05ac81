"""The federated iterative process: FedSubAvg, or FedAvg with every coefficient at 1.

For embedding row m, with J_m the clients whose data involve m and S the
round's sampled clients (n_i examples each)::

    x_m += server_lr * c_m * sum_{i in S, m in sub_i} n_i * delta_{i,m} / sum_{i in S} n_i

FedSubAvg uses ``c_m = sum_all n_j / sum_{j in J_m} n_j`` (from heat counts
gathered once by a federated computation), so a row's expected update is the
average update of the clients that involve it; FedAvg uses ``c_m = 1``.
Dense weights always use weighted FedAvg. The two algorithms are one code
path that differs only in :class:`RowCoefficients`. Every table of the
model follows the rule, whatever the model.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from recfl.core.errors import RecflError
from recfl.core.federated import computations
from recfl.core.federated.clients import ClientData
from recfl.core.federated.runtime import Runtime
from recfl.core.models import ModelParams, ModelSpec

ALGORITHMS = ("fedsubavg", "fedavg")
HEAT_CHUNK = 500  # heat uploads are a few ids per client: bigger chunks, fewer calls


@dataclass(frozen=True)
class Heat:
    """Examples of all clients touching each row (``sum_{j in J_m} n_j``), per table, and in total."""

    tables: dict[str, np.ndarray]
    total: float


@dataclass(frozen=True)
class RowCoefficients:
    """Per-row multipliers of the aggregated update, one array per table."""

    tables: dict[str, np.ndarray]

    @classmethod
    def for_algorithm(cls, algorithm: str, spec: ModelSpec, heat: Heat | None = None) -> "RowCoefficients":
        if algorithm == "fedavg":
            return cls({name: np.ones(rows, np.float32) for name, rows in spec.rows})
        if algorithm == "fedsubavg":
            if heat is None:
                raise ValueError("FedSubAvg needs heat counts")
            return cls({name: np.where(h > 0, heat.total / np.maximum(h, 1e-12), 0.0).astype(np.float32)
                        for name, h in heat.tables.items()})
        raise RecflError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


@dataclass
class ServerState:
    """The global model and the number of rounds it has seen."""

    params: ModelParams
    round: int = 0


@dataclass(frozen=True)
class RoundMetrics:
    round: int
    clients: int
    examples: int
    train_loss: float
    upload_bytes: int
    download_bytes: int
    seconds: float


def _merge_sparse(parts: list[dict], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-row partial sums from several chunks: (unique ids, summed rows)."""
    ids = np.concatenate([np.asarray(p["ids"]) for p in parts])
    rows = np.concatenate([np.asarray(p["rows"]).reshape(-1, width) for p in parts])
    unique, inverse = np.unique(ids, return_inverse=True)
    sums = np.zeros((len(unique), width), np.float64)
    np.add.at(sums, inverse, rows)
    return unique, sums


def client_input(client: ClientData, params: ModelParams, seed: tuple[int, int]) -> collections.OrderedDict:
    """What the server sends a client (its rows) together with the client's own local data."""
    sub, ex = client.submodel, client.examples
    value = collections.OrderedDict()
    for name, table in params.tables.items():
        value[f"{name}_keys"], value[f"{name}_rows"] = sub.rows[name], table[sub.rows[name]]
    value.update((key, value_) for key, value_ in ex.batch().items())
    value["seed"] = np.asarray(seed, dtype=np.int32)
    return value


def upload_bytes(client: ClientData, spec: ModelSpec) -> int:
    """Bytes a client uploads: (id, row delta) per submodel row of each table, dense deltas, two scalars."""
    rows = sum(len(client.submodel.rows[t.name]) * (1 + t.dim) for t in spec.definition.tables)
    dense = sum(int(np.prod(s)) for _, s in spec.definition.dense)
    return 4 * (rows + dense + 2)


class FederatedProcess:
    """``initialize`` / ``next`` over TFF computations, like ``tff.templates.IterativeProcess``.

    The server keeps the full tables; each round it sends every sampled
    client only its rows (the client's submodel), runs the TFF round
    computation over chunks of clients on the runtime's workers, merges the
    partial sums and applies the rule above with this process's coefficients.
    """

    def __init__(self, spec: ModelSpec, work: computations.ClientWork, coefficients: RowCoefficients, runtime: Runtime,
                 server_lr: float = 1.0, chunk_clients: int = 100):
        self.spec, self.work, self.coefficients, self.runtime = spec, work, coefficients, runtime
        self.server_lr, self.chunk_clients = server_lr, chunk_clients
        self.comps = computations.build(spec, work)
        self.names = computations.dense_names(spec)

    def initialize(self, params: ModelParams) -> ServerState:
        return ServerState(params.copy(), 0)

    def next(self, state: ServerState, clients: list[ClientData], seed: int) -> tuple[ServerState, RoundMetrics]:
        """One round on ``clients`` (already sampled); returns the new state and metrics."""
        started = time.perf_counter()
        seeds = [(seed, state.round * 1_000_003 + k) for k in range(len(clients))]
        new, examples, train_loss = self._round(state, clients, seeds)
        metrics = RoundMetrics(
            round=state.round + 1,
            clients=len(clients),
            examples=int(examples),
            train_loss=train_loss if examples else float("nan"),
            upload_bytes=sum(upload_bytes(c, self.spec) for c in clients),
            download_bytes=sum(c.submodel.payload_bytes(state.params) for c in clients),
            seconds=time.perf_counter() - started,
        )
        return ServerState(new, state.round + 1), metrics

    def _round(self, state: ServerState, clients: list[ClientData], seeds: list) -> tuple[ModelParams, float, float]:
        """The distributor: rows gathered here, chunks of clients over the workers; (new params, examples, mean loss)."""
        params = state.params
        inputs = [client_input(c, params, s) for c, s in zip(clients, seeds)]
        dense = collections.OrderedDict((n, params.dense[n]) for n in self.names)
        parts = self.runtime.map_chunks(self.comps.round, self._chunks(inputs), shared=dense)
        new = apply_update(self.spec, params, parts, self.coefficients, self.server_lr)
        examples = float(sum(float(p["examples"]) for p in parts))
        return new, examples, float(sum(float(p["loss"]) for p in parts)) / max(examples, 1.0)

    def heat(self, batches: Iterable[list[ClientData]]) -> Heat:
        """Per-row example counts over all clients (a federated sum of their row ids and counts),
        taken batch by batch so the population never has to be in memory at once."""
        counts, total = {name: np.zeros(rows) for name, rows in self.spec.rows}, 0.0
        for clients in batches:
            inputs = [collections.OrderedDict([*((f"{t}_keys", c.submodel.rows[t]) for t in counts),
                                               ("examples", np.float32(c.size))]) for c in clients]
            parts = self.runtime.map_chunks(self.comps.heat, self._chunks(inputs, HEAT_CHUNK))
            for name, table in counts.items():
                ids, sums = _merge_sparse([p["tables"][name] for p in parts], 1)
                table[ids] += sums[:, 0]
            total += sum(float(p["examples"]) for p in parts)
        return Heat(counts, total)

    def _chunks(self, inputs: list, size: int | None = None) -> list[list]:
        size = size or self.chunk_clients
        return [inputs[i : i + size] for i in range(0, len(inputs), size)]


def server_step(tables: dict, dense: list, coefficients: dict, total, names: list[str], server_lr: float):
    """The server update in TF ops: the FedSubAvg/FedAvg row rule on each table, weighted FedAvg on dense weights.

    ``total`` holds the round's summed uploads (see
    :func:`recfl.core.federated.computations.aggregate_type`). Used inside the TFF
    process and, eagerly, by :func:`apply_update`; a round without examples
    changes nothing. Returns (tables dict, dense list).
    """
    import tensorflow as tf

    examples = tf.cast(total["examples"], tf.float32)
    scale = tf.where(examples > 0, server_lr / tf.maximum(examples, 1e-30), 0.0)

    def rows(table, coef, up):
        ids = up["ids"]
        return tf.tensor_scatter_nd_add(table, ids[:, None], scale * tf.gather(coef, ids)[:, None] * up["rows"])

    return ({name: rows(table, coefficients[name], total["tables"][name]) for name, table in tables.items()},
            [w + scale * total["dense"][n] for w, n in zip(dense, names)])


def apply_update(spec: ModelSpec, params: ModelParams, parts: list[dict], coefficients: RowCoefficients,
                 server_lr: float) -> ModelParams:
    """Merge the chunks' partial sums (float64), then apply :func:`server_step`."""
    names = computations.dense_names(spec)
    total = {"examples": np.float32(sum(float(p["examples"]) for p in parts)),
             "dense": {n: sum(np.asarray(p["dense"][n], np.float64) for p in parts).astype(np.float32) for n in names},
             "tables": {}}
    for t in spec.definition.tables:
        ids, sums = _merge_sparse([p["tables"][t.name] for p in parts], t.dim)
        total["tables"][t.name] = {"ids": ids.astype(np.int32), "rows": sums.astype(np.float32)}
    tables, dense = server_step(params.tables, [params.dense[n] for n in names], coefficients.tables, total, names, server_lr)
    return ModelParams({k: np.asarray(v) for k, v in tables.items()}, {n: np.asarray(d) for n, d in zip(names, dense)},
                       {k: v.copy() for k, v in params.private.items()})
