"""FedSubAvg (recfl) vs TFF's own ``build_weighted_fed_avg`` on the same model, data and clients.

Two cases: prepared MovieLens 100K (synthetic stand-in when ../shared/data is
absent) and a synthetic set whose item table has 1,000,000 rows. For each:
median round time and client updates per second of recfl's FedSubAvg and
of TFF's FedAvg (the reference, in the same run, each on a fresh local TFF
worker), upload bytes per client (sparse rows vs the dense model TFF sends)
and the peak memory of the TFF worker. Private rounds are in :mod:`tools.bench.privacy`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from recfl.core.dataset import prepare
from recfl.core.features import Encoder
from recfl.core.federated.clients import Population
from recfl.core.federated.computations import ClientWork, sparse_sum, sparse_type
from recfl.core.federated.process import (
    FederatedProcess,
    RowCoefficients,
    upload_bytes,
)
from recfl.core.federated.reference import build_tff_fedavg, client_dataset
from recfl.core.federated.runtime import Runtime
from recfl.core.federated.tff_process import SelectProcess
from recfl.core.formats import SyntheticSpec, load
from recfl.core.models import ModelConfig, ModelSpec, init_params, vocabulary_sizes
from tools.bench import Figure, median_seconds, peak_rss_mb

BENCH = "federated"
SHARED_ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"


def case_data(name: str, root: Path, quick: bool):
    if name == "movielens-100k" and SHARED_ML100K.exists():
        return prepare(load("movielens-100k", SHARED_ML100K), root / name), "MovieLens 100K"
    if name == "movielens-100k":
        return prepare(load("synthetic", None, SyntheticSpec(users=943, items=1682, seed=1)), root / name), "synthetic (ML-100K size)"
    items = 100_000 if quick else 1_000_000
    spec = SyntheticSpec(users=20_000, items=items, events_per_user=25, item_zipf=0.8, seed=2)
    return prepare(load("synthetic", None, spec), root / name), f"synthetic, {items:,}-row item table"


def _aggregation(spec, clients, runtime) -> tuple[float, float]:
    """Seconds to sum one round's embedding uploads in TFF: sparse (ids + rows per client, recfl)
    vs dense (a full ``[V, d]`` delta per client, as FedAvg uploads); same touched rows and values."""
    import tensorflow_federated as tff


    d, rows, rng = spec.config.embed_dim, spec.table_rows("item"), np.random.default_rng(0)
    sparse = [{"ids": c.submodel.rows["item"], "rows": rng.standard_normal((len(c.submodel.rows["item"]), d)).astype(np.float32)}
              for c in clients]
    dense = []
    for up in sparse:
        table = np.zeros((rows, d), np.float32)
        table[up["ids"]] = up["rows"]
        dense.append(table)

    @tff.federated_computation(tff.FederatedType(sparse_type(d), tff.CLIENTS))
    def sparse_total(uploads):
        return sparse_sum(uploads, d)

    @tff.federated_computation(tff.FederatedType(tff.TensorType(np.float32, [rows, d]), tff.CLIENTS))
    def dense_total(uploads):
        return tff.federated_sum(uploads)

    return (median_seconds(lambda: runtime.invoke(sparse_total, sparse), repeats=3),
            median_seconds(lambda: runtime.invoke(dense_total, dense), repeats=3))


def _measure(name: str, quick: bool, clients_per_round: int, repeats: int) -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        data, label = case_data(name, Path(tmp), quick)
        spec = ModelSpec.build(ModelConfig(), vocabulary_sizes(data))
        if name != "movielens-100k":  # the table is sized to the full catalogue, not only items seen in train
            spec = spec.with_rows({"item": max(spec.table_rows("item"), 100_000 if quick else 1_000_000),
                                   "category": spec.table_rows("category")})
        population = Population(data, spec)
        chosen = np.random.default_rng(0).choice(len(population), size=clients_per_round * (repeats + 1), replace=False)
        rounds = [chosen[i * clients_per_round : (i + 1) * clients_per_round] for i in range(repeats + 1)]
        work = ClientWork(epochs=1, batch_size=32, learning_rate=0.05)
        encoder = Encoder(data.item_vocab, data.category_vocab, data.items, spec.features)

        with Runtime() as runtime:
            process = FederatedProcess(spec, work, RowCoefficients.for_algorithm("fedavg", spec), runtime)
            n, started = len(population), time.perf_counter()
            heat = process.heat(population.clients(np.arange(lo, min(lo + 2000, n))) for lo in range(0, n, 2000))
            heat_seconds = time.perf_counter() - started
            process = FederatedProcess(spec, work, RowCoefficients.for_algorithm("fedsubavg", spec, heat), runtime)
            state = process.initialize(init_params(spec, 0))
            clients = [population.clients(r) for r in rounds]
            times = []
            for k, round_clients in enumerate(clients):
                state, metrics = process.next(state, round_clients, seed=0)
                if k:
                    times.append(metrics.seconds)
            ours = float(np.median(times))
            ours_mem = peak_rss_mb(runtime.local_worker_pid)
            tables_mb = state.params.nbytes() / 2**20
            sparse_bytes = float(np.mean([upload_bytes(c, spec) for r in clients for c in r]))
            select = SelectProcess(spec, work, process.coefficients, runtime)
            select_state, select_times = select.initialize(state.params), []
            for k, round_clients in enumerate(clients):  # the first round traces; not timed
                select_state, metrics = select.next(select_state, round_clients, seed=0)
                if k:
                    select_times.append(metrics.seconds)
            sparse_agg, dense_agg = _aggregation(spec, clients[0], runtime)

        with Runtime() as runtime:
            tff_process = build_tff_fedavg(spec, work.learning_rate)
            tff_state = runtime.invoke(tff_process.initialize)
            datasets = [[client_dataset(encoder(population.events(i), population.events(i)), work.batch_size, work.epochs)
                         for i in r] for r in rounds]
            times = []
            for k, round_data in enumerate(datasets):  # the first round traces and warms up; not timed
                started = time.perf_counter()
                tff_state = runtime.invoke(tff_process.next, (tff_state, round_data)).state
                if k:
                    times.append(time.perf_counter() - started)
            reference = float(np.median(times))
            reference_mem = peak_rss_mb(runtime.local_worker_pid)
        dense_bytes = 4.0 * sum(int(np.prod(shape)) for group, _, shape in spec.shapes() if group != "private")

    case = f"{label}, {clients_per_round} clients/round"
    return [
        Figure(BENCH, f"round seconds ({case})", ours, "s", "TFF build_weighted_fed_avg", reference),
        Figure(BENCH, f"client updates per second ({case})", clients_per_round / ours, "1/s",
               "TFF build_weighted_fed_avg", clients_per_round / reference),
        Figure(BENCH, f"round seconds, rows gathered by the host ({case})", ours, "s",
               "the same round as recfl's tff.templates.IterativeProcess (federated_select)", float(np.median(select_times)),
               note="same client work, aggregation and server step; federated_select runs one selection per key"),
        Figure(BENCH, f"embedding aggregation in TFF, sparse uploads ({case})", sparse_agg, "s",
               "dense [V, d] delta per client, federated_sum", dense_agg, note="same touched rows and values; median of 3"),
        Figure(BENCH, f"upload bytes per client ({case})", sparse_bytes, "B", "dense model delta (TFF FedAvg)", dense_bytes),
        Figure(BENCH, f"TFF worker peak RSS ({case})", ours_mem, "MB", "TFF build_weighted_fed_avg", reference_mem,
               note=f"recfl also holds the global model ({tables_mb:.0f} MB) in the server process"),
        Figure(BENCH, f"heat counts over all {n:,} clients ({label})", heat_seconds, "s", note="gathered once per simulation"),
    ]


def _model_rounds(quick: bool, clients_per_round: int, repeats: int) -> list[Figure]:
    """FedSubAvg round time of the attention model against the mean-pooled model: same clients, same rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        data, label = case_data("movielens-100k", Path(tmp), quick)
        times = {}
        with Runtime() as runtime:
            for name in ("mean", "attention"):
                spec = ModelSpec.build(ModelConfig(name=name), vocabulary_sizes(data))
                population = Population(data, spec)
                chosen = np.random.default_rng(0).choice(len(population), size=clients_per_round * (repeats + 1), replace=False)
                process = FederatedProcess(spec, ClientWork(), RowCoefficients.for_algorithm("fedavg", spec), runtime)
                state, seconds = process.initialize(init_params(spec, 0)), []
                for k in range(repeats + 1):  # the first round traces; not timed
                    state, metrics = process.next(state, population.clients(chosen[k * clients_per_round : (k + 1) * clients_per_round]), 0)
                    if k:
                        seconds.append(metrics.seconds)
                times[name] = float(np.median(seconds))
    return [Figure(BENCH, f"round seconds, attention model ({label}, {clients_per_round} clients/round)", times["attention"], "s",
                   "the mean-pooled model, same clients", times["mean"])]


def run(size: str) -> list[Figure]:
    quick = size == "quick"
    clients, repeats = (20, 2) if quick else (50, 3)
    figures = _measure("movielens-100k", quick, clients_per_round=clients, repeats=repeats)
    figures += _model_rounds(quick, clients, repeats)
    figures += _measure("synthetic-large", quick, clients_per_round=10, repeats=2)
    return figures
