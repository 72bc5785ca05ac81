"""The private round driver and FedSubAvg's heat counts from the private union.

:class:`PrivateProcess` is a :class:`~recfl.core.federated.process.FederatedProcess`
whose round is two TFF computations (:mod:`.computations`), each over the
round's whole cohort so that a secure sum always covers every sampled client:
the union of the clients' reported row sets, then the noisy, clipped update
summed over the union's rows. The server step is the usual FedSubAvg/FedAvg
rule (:func:`~recfl.core.federated.process.server_step`) on those sums divided
by the round's expected cohort (a fixed denominator, so the average does not
depend on who joined). Heat counts for FedSubAvg are the union counts over
all clients, debiased: coefficients become ``N / (clients touching the row)``,
the unweighted form of the rule. A round nobody joined still releases the
noise (drawn by the server), as the accounting assumes.

Clients' secret randomness (the memoized randomized-response seed, the noise
shares) is derived here from the run's seed and the user id, because this
process also simulates the devices; the server-side values are only what the
computations return.
"""

from __future__ import annotations

import collections

import numpy as np

from recfl.core.federated import computations as plain
from recfl.core.federated.clients import ClientData
from recfl.core.federated.privacy import computations, secure
from recfl.core.federated.privacy.accounting import Budget
from recfl.core.federated.privacy.randomized_response import estimate_clients
from recfl.core.federated.process import HEAT_CHUNK, FederatedProcess, Heat, RowCoefficients, ServerState, apply_total
from recfl.core.federated.runtime import Runtime
from recfl.core.models import ModelParams, ModelSpec
from recfl.core.vocab import RESERVED

NOISE_TAIL = 10.0  # values are clipped at clip_norm + this many noise std (a share never reaches it: < 1e-22 per value)
_RR, _NOISE, _SERVER = 1, 2, 3  # tags of the derived seeds


def union_capacity(rows: int) -> int:
    """Union rows are padded to the next eighth of a power of two (at least 8): little padding, few traced shapes."""
    step = max(1, 1 << max(0, (int(rows) - 1).bit_length() - 3))
    return max(8, -(-int(rows) // step) * step)


def _secret(*words: int) -> np.ndarray:
    """A seed pair for TF's stateless random ops, derived from ``words``."""
    return np.random.default_rng([int(w) % 2**32 for w in words]).integers(0, 2**31 - 1, size=2, dtype=np.int32)


class PrivateProcess(FederatedProcess):
    """Rounds in which the server learns only sums over a union of randomized row sets, with Gaussian noise."""

    def __init__(self, spec: ModelSpec, work: plain.ClientWork, coefficients: RowCoefficients, runtime: Runtime,
                 server_lr: float, budget: Budget, seed: int):
        super().__init__(spec, work, coefficients, runtime, server_lr)
        self.budget, self.seed = budget, seed
        self.union = secure.for_simulation(computations.build_union(spec, budget.config.keep_probability,
                                                                    budget.config.fake_probability))
        self.union_rows: dict[str, int] = {}  # rows of each table in the last round's union

    def _keys(self, client: ClientData) -> collections.OrderedDict:
        """What a client holds and never sends: its rows of each table."""
        return collections.OrderedDict((f"{t}_keys", client.submodel.rows[t]) for t in plain.table_names(self.spec))

    def _union_value(self, client: ClientData) -> np.ndarray:
        return computations.union_value(self.spec, client.submodel.rows, _secret(self.seed, client.user_id, _RR))

    def _client_value(self, client: ClientData, seed: tuple[int, int]) -> collections.OrderedDict:
        value = self._keys(client)
        value.update(client.examples.batch())
        value["seed"] = np.asarray(seed, np.int32)
        value["noise_seed"] = _secret(*seed, client.user_id, _NOISE)
        return value

    def union_of(self, clients: list[ClientData]) -> dict[str, np.ndarray]:
        """The sorted rows of each table some client of ``clients`` reported, plus PAD and OOV (one secure sum)."""
        counts = self.runtime.invoke(self.union, [self._union_value(c) for c in clients]) if clients else {}
        return {name: np.union1d(np.arange(RESERVED), np.flatnonzero(counts.get(name, []))).astype(np.int32)
                for name, _ in self.spec.rows}

    def _round(self, state: ServerState, clients: list[ClientData], seeds: list) -> tuple[ModelParams, float, float]:
        params, c = state.params, self.budget.config
        union = self.union_of(clients)
        self.union_rows = {t: len(ids) for t, ids in union.items()}
        std = self.budget.noise_multiplier * c.clip_norm  # of the summed noise, per coordinate
        if clients:
            capacity = tuple((t, union_capacity(n)) for t, n in self.union_rows.items())
            server = collections.OrderedDict(
                dense=collections.OrderedDict((n, params.dense[n]) for n in plain.dense_names(self.spec)),
                union=collections.OrderedDict((t, self._broadcast(params, t, ids, dict(capacity)[t])) for t, ids in union.items()),
                share_std=np.float32(std / np.sqrt(len(clients))))
            round_comp = secure.for_simulation(computations.build_round(self.spec, self.work, capacity, c.clip_norm,
                                                                        c.clip_norm + NOISE_TAIL * std))
            out = self.runtime.invoke(round_comp, (server, [self._client_value(cl, s) for cl, s in zip(clients, seeds)]))
            tables = {t: np.asarray(out["update"]["tables"][t])[: len(ids)] for t, ids in union.items()}
            dense = {n: np.asarray(v) for n, v in out["update"]["dense"].items()}
            examples, loss = float(out["examples"]), float(out["loss"]) / len(clients)
        else:  # nobody joined: the server releases the noise alone
            rng = np.random.default_rng([self.seed % 2**32, state.round, _SERVER])
            dims = {t.name: t.dim for t in self.spec.definition.tables}
            tables = {t: std * rng.standard_normal((len(ids), dims[t])) for t, ids in union.items()}
            dense = {n: std * rng.standard_normal(s) for n, s in self.spec.definition.dense}
            examples, loss = 0.0, float("nan")
        total = {"examples": np.float32(self.budget.expected[state.round]), "dense": {n: np.asarray(v, np.float32) for n, v in dense.items()},
                 "tables": {t: {"ids": ids, "rows": np.asarray(tables[t], np.float32)} for t, ids in union.items()}}
        return apply_total(self.spec, params, total, self.coefficients, self.server_lr), examples, loss

    def _broadcast(self, params: ModelParams, table: str, ids: np.ndarray, capacity: int) -> collections.OrderedDict:
        """The union's rows of ``table``, padded to ``capacity`` with an id past the table (never a client's row)."""
        rows = params.tables[table][ids]
        return collections.OrderedDict(
            ids=np.pad(ids, (0, capacity - len(ids)), constant_values=self.spec.table_rows(table)).astype(np.int32),
            rows=np.pad(rows, ((0, capacity - len(ids)), (0, 0))))

    def _upload_bytes(self, clients: list[ClientData]) -> int:
        return len(clients) * computations.upload_bytes(self.spec, self.union_rows)

    def _download_bytes(self, clients: list[ClientData], params: ModelParams) -> int:
        return len(clients) * computations.download_bytes(self.spec, self.union_rows)

    def heat(self, batches) -> Heat:
        """Estimated clients touching each row, from the union counts over all clients (secure sums over chunks)."""
        c = self.budget.config
        counts, clients = {name: np.zeros(rows) for name, rows in self.spec.rows}, 0
        for batch in batches:
            for part in self.runtime.map_chunks(self.union, self._chunks([self._union_value(x) for x in batch], HEAT_CHUNK)):
                for name, table in counts.items():
                    table += np.asarray(part[name])
            clients += len(batch)
        return Heat({name: estimate_clients(table, clients, c.keep_probability, c.fake_probability)
                     for name, table in counts.items()}, float(clients))
