"""The federated iterative process: FedSubAvg, or FedAvg with every coefficient at 1.

For embedding row m, with J_m the clients whose data involve m and S the
round's sampled clients (n_i examples each)::

    x_m += server_lr * c_m * sum_{i in S, m in sub_i} n_i * delta_{i,m} / sum_{i in S} n_i

FedSubAvg uses ``c_m = sum_all n_j / sum_{j in J_m} n_j`` (from heat counts
gathered once by a federated computation), so a row's expected update is the
average update of the clients that involve it; FedAvg uses ``c_m = 1``.
Dense layers always use weighted FedAvg. The two algorithms are one code
path that differs only in :class:`RowCoefficients`.
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
from recfl.core.model import ModelParams, ModelSpec

ALGORITHMS = ("fedsubavg", "fedavg")
HEAT_CHUNK = 500  # heat uploads are a few ids per client: bigger chunks, fewer calls


@dataclass(frozen=True)
class Heat:
    """Examples of all clients touching each row (``sum_{j in J_m} n_j``) and in total."""

    item: np.ndarray
    cat: np.ndarray
    total: float


@dataclass(frozen=True)
class RowCoefficients:
    """Per-row multipliers of the aggregated update, one array per table."""

    item: np.ndarray
    cat: np.ndarray

    @classmethod
    def for_algorithm(cls, algorithm: str, spec: ModelSpec, heat: Heat | None = None) -> "RowCoefficients":
        if algorithm == "fedavg":
            return cls(np.ones(spec.item_rows, np.float32), np.ones(spec.category_rows, np.float32))
        if algorithm == "fedsubavg":
            if heat is None:
                raise ValueError("FedSubAvg needs heat counts")
            inv = lambda h: np.where(h > 0, heat.total / np.maximum(h, 1e-12), 0.0).astype(np.float32)
            return cls(inv(heat.item), inv(heat.cat))
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
    return collections.OrderedDict(
        item_keys=sub.item_rows, item_rows=params.item_emb[sub.item_rows],
        cat_keys=sub.cat_rows, cat_rows=params.cat_emb[sub.cat_rows],
        item=ex.item, cats=ex.cats, hist=ex.hist, label=ex.label,
        seed=np.asarray(seed, dtype=np.int32),
    )


def upload_bytes(client: ClientData, spec: ModelSpec) -> int:
    """Bytes a client uploads: (id, row delta) per submodel row, dense deltas, two scalars."""
    rows = len(client.submodel.item_rows) + len(client.submodel.cat_rows)
    dense = sum(int(np.prod(s)) for s in spec.dense_shapes())
    return 4 * (rows * (1 + spec.embed_dim) + dense + 2)


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
        dense = collections.OrderedDict(zip(self.names, params.dense))
        parts = self.runtime.map_chunks(self.comps.round, self._chunks(inputs), shared=dense)
        new = apply_update(params, parts, self.coefficients, self.server_lr, self.spec.embed_dim, self.names)
        examples = float(sum(float(p["examples"]) for p in parts))
        return new, examples, float(sum(float(p["loss"]) for p in parts)) / max(examples, 1.0)

    def heat(self, batches: Iterable[list[ClientData]]) -> Heat:
        """Per-row example counts over all clients (a federated sum of their row ids and counts),
        taken batch by batch so the population never has to be in memory at once."""
        item, cat, total = np.zeros(self.spec.item_rows), np.zeros(self.spec.category_rows), 0.0
        for clients in batches:
            inputs = [collections.OrderedDict(item_keys=c.submodel.item_rows, cat_keys=c.submodel.cat_rows,
                                              examples=np.float32(c.size)) for c in clients]
            parts = self.runtime.map_chunks(self.comps.heat, self._chunks(inputs, HEAT_CHUNK))
            for counts, key in ((item, "item"), (cat, "cat")):
                ids, sums = _merge_sparse([p[key] for p in parts], 1)
                counts[ids] += sums[:, 0]
            total += sum(float(p["examples"]) for p in parts)
        return Heat(item, cat, total)

    def _chunks(self, inputs: list, size: int | None = None) -> list[list]:
        size = size or self.chunk_clients
        return [inputs[i : i + size] for i in range(0, len(inputs), size)]


def server_step(item_emb, cat_emb, dense: list, item_coef, cat_coef, total, names: list[str], server_lr: float):
    """The server update in TF ops: the FedSubAvg/FedAvg row rule on the tables, weighted FedAvg on dense layers.

    ``total`` holds the round's summed uploads (see
    :func:`recfl.core.federated.computations.aggregate_type`). Used inside the TFF
    process and, eagerly, by :func:`apply_update`; a round without examples
    changes nothing. Returns (item table, category table, dense list).
    """
    import tensorflow as tf

    examples = tf.cast(total["examples"], tf.float32)
    scale = tf.where(examples > 0, server_lr / tf.maximum(examples, 1e-30), 0.0)

    def rows(table, coef, up):
        ids = up["ids"]
        return tf.tensor_scatter_nd_add(table, ids[:, None], scale * tf.gather(coef, ids)[:, None] * up["rows"])

    return (rows(item_emb, item_coef, total["item"]), rows(cat_emb, cat_coef, total["cat"]),
            [w + scale * total["dense"][n] for w, n in zip(dense, names)])


def apply_update(params: ModelParams, parts: list[dict], coefficients: RowCoefficients, server_lr: float,
                 width: int, names: list[str]) -> ModelParams:
    """Merge the chunks' partial sums (float64), then apply :func:`server_step`."""
    total = {"examples": np.float32(sum(float(p["examples"]) for p in parts)),
             "dense": {n: sum(np.asarray(p["dense"][n], np.float64) for p in parts).astype(np.float32) for n in names}}
    for key in ("item", "cat"):
        ids, sums = _merge_sparse([p[key] for p in parts], width)
        total[key] = {"ids": ids.astype(np.int32), "rows": sums.astype(np.float32)}
    item, cat, dense = server_step(params.item_emb, params.cat_emb, params.dense, coefficients.item, coefficients.cat,
                                   total, names, server_lr)
    return ModelParams.from_arrays([item, cat, *dense])
