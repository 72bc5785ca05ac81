"""How a simulation round grows with clients per round, population and vocabulary.

Synthetic populations up to 100,000 clients; one FedSubAvg-shaped round
(the per-row coefficients only change values, not cost) with up to 1,000
sampled clients. Time is the median of two rounds after a warm-up round
(client data built lazily each round is included); memory is the peak
resident size of the TFF worker and of the driver (each case in a fresh process). The reference
is the smallest configuration measured in the same run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from recfl.core.dataset import prepare
from recfl.core.federated.clients import Population
from recfl.core.federated.computations import ClientWork
from recfl.core.federated.process import FederatedProcess, RowCoefficients
from recfl.core.federated.runtime import Runtime
from recfl.core.formats import SyntheticSpec, load
from recfl.core.models import ModelConfig, ModelSpec, init_params, vocabulary_sizes
from tools.bench import Figure, in_fresh_process, peak_rss_mb

BENCH = "federated_scale"


def _round_seconds(population_size: int, items: int, per_round: int, root: Path) -> tuple[float, float, float]:
    data = prepare(load("synthetic", None, SyntheticSpec(users=population_size, items=items, events_per_user=30, seed=3)),
                   root / f"p{population_size}-v{items}")
    spec = ModelSpec.build(ModelConfig(), vocabulary_sizes(data)).with_rows({"item": items + 2, "category": data.category_vocab.size})
    population = Population(data, spec)
    with Runtime() as runtime:
        process = FederatedProcess(spec, ClientWork(), RowCoefficients.for_algorithm("fedavg", spec), runtime, chunk_clients=100)
        state = process.initialize(init_params(spec, 0))
        times = []
        for r in range(3):
            chosen = np.random.default_rng([r, 9]).choice(len(population), size=min(per_round, len(population)), replace=False)
            state, metrics = process.next(state, population.clients(np.sort(chosen)), seed=0)
            times.append(metrics.seconds)
        worker_mb = peak_rss_mb(runtime.local_worker_pid)
    driver_mb = peak_rss_mb()
    return float(np.median(times[1:])), worker_mb, driver_mb


def run(size: str) -> list[Figure]:
    grid = [(2_000, 20_000, 100), (10_000, 20_000, 1_000)]
    if size != "quick":
        grid[1:1] = [(10_000, 20_000, 100)]
        grid += [(10_000, 200_000, 1_000)]
    if size == "scale":
        grid += [(100_000, 200_000, 1_000), (100_000, 1_000_000, 1_000)]
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for users, items, per_round in grid:
            seconds, worker_mb, driver_mb = in_fresh_process(_round_seconds, users, items, per_round, Path(tmp))
            base = base or (seconds, (users, items, per_round))
            case = f"{per_round:,} of {users:,} clients, {items:,}-row item table"
            ref = f"{base[1][2]:,} of {base[1][0]:,} clients, {base[1][1]:,} rows"
            figures += [
                Figure(BENCH, f"round seconds ({case})", seconds, "s", ref, base[0]),
                Figure(BENCH, f"TFF worker peak RSS ({case})", worker_mb, "MB"),
                Figure(BENCH, f"driver peak RSS ({case})", driver_mb, "MB", note="data set, population and server state, fresh process"),
            ]
    return figures
