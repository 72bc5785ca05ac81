"""``recfl simulate``: federated rounds over a prepared data set, one client per user.

A run directory holds ``run.json`` (settings), ``heat.npz`` (FedSubAvg's row
counts, gathered once), ``checkpoint.npz`` (the global model after the last
finished round, replaced atomically every round), ``metrics.jsonl`` (one line
per round, with test AUC/gAUC every ``eval_every`` rounds) and, at the end,
``model/`` (params + SavedModel) and ``summary.json``; ``tensorboard/`` (or the folder given) holds the
rounds as TensorBoard scalars (:mod:`recfl.core.summaries`). All randomness derives
from the seed and the round number, so ``--resume`` after a kill reaches the
same final model as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from recfl.core import config, interrupts
from recfl.core.atomic import append_line_durable, atomic_path, write_json_atomic
from recfl.core.dataset import PreparedDataset
from recfl.core.errors import RecflError
from recfl.core.features import Encoder
from recfl.core.federated.clients import Population
from recfl.core.federated.computations import ClientWork
from recfl.core.federated.privacy.accounting import Budget, plan
from recfl.core.federated.privacy.process import PrivateProcess
from recfl.core.federated.privacy.settings import PrivacyConfig
from recfl.core.federated.process import (
    ALGORITHMS,
    FederatedProcess,
    Heat,
    RowCoefficients,
    ServerState,
)
from recfl.core.federated.runtime import CALL_TIMEOUT, ISOLATIONS, Runtime
from recfl.core.federated.sampling import Availability, poisson_sample_clients, sample_clients
from recfl.core.federated.tff_process import SelectProcess
from recfl.core.federated.transport import TLSFiles, WorkerLost
from recfl.core.metrics import ctr_metrics
from recfl.core.models import (
    ModelConfig,
    ModelParams,
    ModelSpec,
    init_params,
    load_model,
    predict,
    save_model,
    vocabulary_sizes,
)
from recfl.core.summaries import SUMMARIES, RoundSummaries

log = logging.getLogger(__name__)

# How rows reach the clients: both run the same client work, aggregation and server step.
DISTRIBUTORS = {"host": FederatedProcess, "select": SelectProcess}
# Settings that change how a run executes, not what it computes: free to differ on --resume.
EXECUTION_ONLY = ("rounds", "eval_every", "chunk_clients", "call_timeout", "worker_isolation")


@dataclass(frozen=True)
class FederatedConfig:
    """The ``[federated]`` config section."""

    algorithm: str = "fedsubavg"
    rounds: int = 30
    clients_per_round: int = 20
    local_epochs: int = 1
    batch_size: int = 32
    client_lr: float = 0.05
    server_lr: float = 1.0
    eval_every: int = 5
    seed: int = 0
    availability: str = "always"
    online_probability: float = 1.0
    diurnal_amplitude: float = 0.5
    hours_per_round: float = 1.0
    chunk_clients: int = 50
    distributor: str = "host"  # host: rows gathered by the server, chunks over workers | select: the TFF process (federated_select)
    call_timeout: float = CALL_TIMEOUT  # seconds one call to a TFF worker may take before the worker counts as lost
    worker_isolation: str = "namespace"  # namespace: the local worker in a network namespace of its own | none

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise RecflError(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if self.distributor not in DISTRIBUTORS:
            raise RecflError(f"unknown distributor {self.distributor!r}; choose one of {', '.join(DISTRIBUTORS)}")
        if self.worker_isolation not in ISOLATIONS:
            raise RecflError(f"unknown worker_isolation {self.worker_isolation!r}; choose one of {', '.join(ISOLATIONS)}")
        config.check_limits(self, "federated", rounds=">= 1", clients_per_round=">= 1", local_epochs=">= 1", batch_size=">= 1",
                            eval_every=">= 1", chunk_clients=">= 1", client_lr="> 0", server_lr="> 0",
                            online_probability="(0, 1]", diurnal_amplitude="[0, 1]", hours_per_round="> 0",
                            call_timeout="> 0")

    @property
    def work(self) -> ClientWork:
        return ClientWork(self.local_epochs, self.batch_size, self.client_lr)

    @property
    def available(self) -> Availability:
        return Availability(self.availability, self.online_probability, self.diurnal_amplitude, self.hours_per_round)


DAMAGED = "the run folder is damaged; start the run again in a new --out"


def _read_npz(path: Path, read):
    """``read(npz)`` of a run folder's ``.npz``; a file that is not what recfl wrote is one clear error."""
    try:
        with np.load(path) as npz:
            return read(npz)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise RecflError(f"{path} cannot be read ({type(exc).__name__}: {exc}): {DAMAGED}") from None


def _save_checkpoint(path: Path, state: ServerState) -> None:
    with atomic_path(path, durable=True) as tmp:
        np.savez(tmp, round=np.int64(state.round), *state.params.arrays())


def _load_checkpoint(path: Path, spec: ModelSpec) -> ServerState:
    round_, arrays = _read_npz(path, lambda npz: (int(npz["round"]), [npz[f"arr_{i}"] for i in range(len(npz.files) - 1)]))
    shapes = [tuple(shape) for _, _, shape in spec.shapes()]
    if [a.shape for a in arrays] != shapes:
        raise RecflError(f"{path} holds weights of shapes {[a.shape for a in arrays]}, not the model's {shapes}: {DAMAGED}")
    return ServerState(ModelParams.from_arrays(spec, arrays), round_)


def _start(spec: ModelSpec, model_config: ModelConfig, init: Path | None) -> ModelParams:
    if init is None:
        return init_params(spec, model_config.init_seed)
    init_spec, params = load_model(init)
    if init_spec != spec:
        raise RecflError(f"--init {init}: model architecture/vocabulary {init_spec} does not match the data set's {spec}")
    return params


def _metric_lines(path: Path, upto: int) -> list[str]:
    """Lines of ``metrics.jsonl`` for rounds <= ``upto``: a resume drops the rest, which the checkpoint never
    committed (a line is written before its round's checkpoint), a line cut short by a kill included."""
    if not path.is_file():
        return []
    try:
        text = path.read_text()
        lines = text.splitlines()
        if lines and not text.endswith("\n"):
            lines.pop()  # the last write did not finish: its round was never checkpointed
        return [line for line in lines if line and int(json.loads(line)["round"]) <= upto]
    except (ValueError, KeyError, TypeError) as exc:  # not JSON, not UTF-8, not a record with a round
        raise RecflError(f"{path} holds a line that is not a round's metrics ({type(exc).__name__}: {exc}): {DAMAGED}") from None


def simulate(data: PreparedDataset, out: Path, fed: FederatedConfig = FederatedConfig(), model_config: ModelConfig = ModelConfig(),
             init: Path | None = None, resume: bool = False, workers: list[str] | None = None,
             users: np.ndarray | None = None, progress: bool = True, tls: TLSFiles | None = None,
             privacy: PrivacyConfig = PrivacyConfig(), summaries: Path | None = None) -> dict:
    """Run (or resume) a simulation and return its summary; ``tls`` is this client's side of mutual TLS with ``workers``;
    ``summaries`` is the TensorBoard event folder of its rounds (default ``out/tensorboard``);
    with ``privacy.enabled``, private rounds (:mod:`recfl.core.federated.privacy`: Poisson-sampled clients, one secure
    aggregation per round).

    When every worker is lost the run stops with :class:`WorkerLost` after its last finished round; ``resume`` continues it.
    """
    if fed.distributor == "select" and workers and len(workers) > 1:
        raise RecflError("federated.distributor = 'select' runs each round as one TFF computation on one worker; "
                         "use the 'host' distributor to spread rounds over several --workers")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec.build(model_config, vocabulary_sizes(data))
    settings = {
        "data": str(Path(data.root).resolve()), "init": str(init) if init else None,
        "federated": {k: v for k, v in config.as_table(fed).items() if k not in EXECUTION_ONLY},
        "model": config.as_table(model_config), "users": None if users is None else int(len(users)),
    }
    if privacy.enabled:
        if fed.distributor != "host":
            raise RecflError("privacy.enabled needs federated.distributor = 'host' (its rounds gather the union's rows on the server)")
        settings["privacy"] = config.as_table(privacy)
    checkpoint, metrics_path = out / "checkpoint.npz", out / "metrics.jsonl"
    if checkpoint.is_file() and not resume:
        raise RecflError(f"{out} already holds a simulation; pass --resume to continue it or choose another --out")
    if resume and (out / "run.json").is_file():
        previous = json.loads((out / "run.json").read_text())
        if previous != json.loads(json.dumps(settings)):
            raise RecflError(f"{out}: --resume with different settings than the run it continues (see {out / 'run.json'})")
    write_json_atomic(out / "run.json", settings)

    population = Population(data, spec, users)
    if len(population) == 0:
        raise RecflError("no clients: no user of the simulation has training events")
    test_users = population.user_ids
    test_events = data.test[data.test["user_id"].isin(test_users)]
    test = Encoder(data.item_vocab, data.category_vocab, data.items, spec.features)(test_events, data.train)
    budget = plan(privacy, fed.rounds, len(population), fed.clients_per_round, fed.available, fed.seed) if privacy.enabled else None

    runtime = Runtime(workers, log_dir=out, call_timeout=fed.call_timeout, isolate=fed.worker_isolation == "namespace", tls=tls)
    try:
        with runtime:
            state = _run_rounds(out, fed, spec, model_config, init, resume, population, test, runtime, progress, budget,
                                Path(summaries) if summaries is not None else out / SUMMARIES)
    except WorkerLost as lost:
        done = _load_checkpoint(checkpoint, spec).round if checkpoint.is_file() else 0
        raise WorkerLost(f"{lost}: the run stopped after round {done}; start the worker(s) again and continue with --resume") from None

    save_model(out / "model", spec, state.params, meta={"federated": settings})
    history = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    evaluated = [r for r in history if "test_auc" in r]
    summary = {
        "algorithm": fed.algorithm, "rounds": state.round, "clients": len(population),
        "final": {k: evaluated[-1][k] for k in ("test_auc", "test_gauc", "test_logloss")} if evaluated else None,
        "mean_round_seconds": float(np.mean([r["seconds"] for r in history])) if history else None,
        "mean_upload_bytes_per_client": float(np.sum([r["upload_bytes"] for r in history]) / max(1, np.sum([r["clients"] for r in history]))),
        "model_dir": str(out / "model"),
        **({"privacy": budget.report()} if budget else {}),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def _run_rounds(out: Path, fed: FederatedConfig, spec: ModelSpec, model_config: ModelConfig, init: Path | None, resume: bool,
                population: Population, test, runtime: Runtime, progress: bool, budget: Budget | None,
                summaries: Path) -> ServerState:
    """Rounds until ``fed.rounds``, a checkpoint, a metrics line and its TensorBoard scalars after each; returns the final state."""
    checkpoint, metrics_path = out / "checkpoint.npz", out / "metrics.jsonl"
    heat = _heat(out, fed, population, spec, runtime, budget)
    coefficients = RowCoefficients.for_algorithm(fed.algorithm, spec, heat)
    process = _process(spec, fed, coefficients, runtime, budget, fed.distributor)
    state = _load_checkpoint(checkpoint, spec) if resume and checkpoint.is_file() else process.initialize(_start(spec, model_config, init))
    lines = _metric_lines(metrics_path, state.round)
    metrics_path.write_text("".join(line + "\n" for line in lines))
    if state.round:
        log.info("resuming %s after round %d", out, state.round)
    bar = tqdm(total=fed.rounds, initial=state.round, desc=f"{fed.algorithm} rounds", unit="round", disable=not progress)
    board = RoundSummaries(summaries, map(json.loads, lines))
    with logging_redirect_tqdm(), bar, board:  # a warning (a lost worker) on a line of its own, not inside the bar
        while state.round < fed.rounds:
            interrupts.check()
            started = time.perf_counter()
            chosen = (poisson_sample_clients if budget else sample_clients)(state.round, len(population), fed.clients_per_round,
                                                                            fed.available, fed.seed)
            state, metrics = process.next(state, population.clients(chosen, state.round), fed.seed)
            record = {**metrics.__dict__, "seconds": round(time.perf_counter() - started, 4)}
            if state.round % fed.eval_every == 0 or state.round == fed.rounds:
                scores = predict(spec, state.params, test.inputs())
                evaluation = ctr_metrics(test.user_id, test.label, scores)
                record.update(test_auc=evaluation["auc"], test_gauc=evaluation["gauc"], test_logloss=evaluation["logloss"])
            append_line_durable(metrics_path, json.dumps(record))  # before the checkpoint: a committed round has its line
            _save_checkpoint(checkpoint, state)
            board.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.train_loss:.4f}", **({"auc": f"{record['test_auc']:.4f}"} if "test_auc" in record else {}))
    return state


def _process(spec: ModelSpec, fed: FederatedConfig, coefficients: RowCoefficients, runtime: Runtime, budget: Budget | None,
             distributor: str) -> FederatedProcess:
    """The round driver: private rounds with a ``budget``, else the distributor's."""
    if budget:
        return PrivateProcess(spec, fed.work, coefficients, runtime, fed.server_lr, budget, fed.seed)
    return DISTRIBUTORS[distributor](spec, fed.work, coefficients, runtime, fed.server_lr, fed.chunk_clients)


def _heat(out: Path, fed: FederatedConfig, population: Population, spec: ModelSpec, runtime: Runtime,
          budget: Budget | None = None) -> Heat | None:
    """FedSubAvg's heat counts: gathered once over all clients (privately with a ``budget``), then read back on resume."""
    if fed.algorithm != "fedsubavg":
        return None
    path = out / "heat.npz"
    if path.is_file():
        return _read_npz(path, lambda npz: Heat({t: npz[f"table_{t}"] for t, _ in spec.rows}, float(npz["total"])))
    process = _process(spec, fed, RowCoefficients.for_algorithm("fedavg", spec), runtime, budget, "host")
    step = 1000
    batches = (population.clients(np.arange(lo, min(lo + step, len(population)))) for lo in range(0, len(population), step))
    heat = process.heat(batches)
    with atomic_path(path) as tmp:
        np.savez(tmp, total=heat.total, **{f"table_{t}": counts for t, counts in heat.tables.items()})
    return heat
