"""Private rounds (``[privacy]``) against the same rounds without privacy, on MovieLens 100K.

Private FedSubAvg at the default ``[privacy]`` settings (randomized-response
union, secure sums, clipping, noise) and plain FedSubAvg run the same cohorts,
interleaved round by round (so a change of load on the machine hits both),
on one local TFF worker, after an untimed pass that traces every computation
(each union capacity once): median round time, upload and download bytes per
client, and the heat counts over all clients.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from recfl.core.federated.clients import Population
from recfl.core.federated.computations import ClientWork
from recfl.core.federated.privacy.accounting import plan
from recfl.core.federated.privacy.process import PrivateProcess
from recfl.core.federated.privacy.settings import PrivacyConfig
from recfl.core.federated.process import FederatedProcess, Heat, RowCoefficients
from recfl.core.federated.runtime import Runtime
from recfl.core.federated.sampling import Availability
from recfl.core.models import ModelConfig, ModelSpec, init_params, vocabulary_sizes
from tools.bench import Figure
from tools.bench.federated import case_data

BENCH = "privacy"
HEAT_BATCH = 2000  # clients per batch of the heat pass


def _timed_heat(process: FederatedProcess, population: Population) -> tuple[Heat, float]:
    """Heat counts over the whole population, in batches as a simulation takes them, and their seconds."""
    n, started = len(population), time.perf_counter()
    heat = process.heat(population.clients(np.arange(lo, min(lo + HEAT_BATCH, n))) for lo in range(0, n, HEAT_BATCH))
    return heat, time.perf_counter() - started


def run(size: str) -> list[Figure]:
    per_round, rounds = (20, 3) if size == "quick" else (50, 12)
    with tempfile.TemporaryDirectory() as tmp:
        data, label = case_data("movielens-100k", Path(tmp), size == "quick")
        spec = ModelSpec.build(ModelConfig(), vocabulary_sizes(data))
        population = Population(data, spec)
        chosen = np.random.default_rng(0).choice(len(population), size=per_round * rounds, replace=False)
        clients = [population.clients(chosen[k * per_round : (k + 1) * per_round]) for k in range(rounds)]
        work = ClientWork(epochs=1, batch_size=32, learning_rate=0.05)
        budget = plan(PrivacyConfig(enabled=True), rounds, len(population), per_round, Availability(), seed=0)
        params = init_params(spec, 0)
        with Runtime() as runtime:
            fedavg = RowCoefficients.for_algorithm("fedavg", spec)
            heat, plain_heat_seconds = _timed_heat(FederatedProcess(spec, work, fedavg, runtime), population)
            noisy_heat, heat_seconds = _timed_heat(PrivateProcess(spec, work, fedavg, runtime, 1.0, budget, 0), population)
            processes = (FederatedProcess(spec, work, RowCoefficients.for_algorithm("fedsubavg", spec, heat), runtime),
                         PrivateProcess(spec, work, RowCoefficients.for_algorithm("fedsubavg", spec, noisy_heat), runtime, 1.0, budget, 0))
            for round_clients in clients:  # untimed: traces every computation (each union capacity once)
                for process in processes:
                    process.next(process.initialize(params), round_clients, seed=0)
            states = [p.initialize(params) for p in processes]
            times, sent, received = ([], []), ([], []), ([], [])
            for round_clients in clients:
                for k, process in enumerate(processes):
                    states[k], metrics = process.next(states[k], round_clients, seed=0)
                    times[k].append(metrics.seconds)
                    sent[k].append(metrics.upload_bytes / len(round_clients))
                    received[k].append(metrics.download_bytes / len(round_clients))
    case = f"{label}, {per_round} clients/round"
    note = (f"median of {rounds} rounds each; eps {budget.epsilon:.3g} at delta {budget.config.delta:g} for {rounds} rounds; "
            f"clip {budget.config.clip_norm}, noise multiplier {budget.noise_multiplier}; "
            f"randomized response p = {budget.config.keep_probability}, q = {budget.config.fake_probability}")
    same = "the same rounds without privacy"
    return [
        Figure(BENCH, f"round seconds with [privacy] ({case})", float(np.median(times[1])), "s", same, float(np.median(times[0])), note=note),
        Figure(BENCH, f"upload bytes per client with [privacy] ({case})", float(np.mean(sent[1])), "B", same, float(np.mean(sent[0])),
               note="secure sums counted at their bit widths: 1 bit per reported row, 32 per value"),
        Figure(BENCH, f"download bytes per client with [privacy] ({case})", float(np.mean(received[1])), "B", same,
               float(np.mean(received[0])), note="every client receives the union's rows"),
        Figure(BENCH, f"heat counts over all {len(population):,} clients with [privacy] ({label})", heat_seconds, "s",
               "plain heat counts", plain_heat_seconds),
    ]
