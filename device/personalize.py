"""Personalize the global model on each device user and score the user's test events (one arm per run).

Arms: ``cloud`` scores with the global model unchanged; ``local`` fine-tunes
on the user's own training events; ``coda-nofilter`` adds every matched
cloud sample; ``coda`` adds only the samples the LightGBM filter keeps.

Per device (:func:`run_device`): the user's training events are encoded with
their own earlier positives as history, test events with history frozen at
the split. Candidate samples are encoded on the cloud side with their
**pool owner's** history (the owner's earlier positives in the pool), the
same way the cloud model saw them in training. The submodel covers the rows
of local training events, kept candidates and the events to score (a device
needs the rows of what it ranks); when it would not fit the fixed device
capacity, the least similar candidates are dropped first. The latest
``val_fraction`` of the user's training events is the early-stopping slice;
the rest plus the candidates are the fine-tuning set. The personalized
weights are saved to a checkpoint file per device, restored, and the test
events scored in the interpreter.

Given the ``previous`` outputs of the same arm and settings (a rerun after
new pool events), a device whose inputs are unchanged (:func:`task_inputs`:
its own events, the events it scores, its candidates and their features) is
not run again: its predictions, report and device files are taken over, as
running it again would reproduce them (every device's randomness is seeded
by the user id).

Work is spread over ``workers`` spawned processes. The ``.tflite`` is
converted (or found in the cache) once, in the parent, before any worker
starts; workers only load it. Workers start with SIGINT blocked, so Ctrl-C
(which a terminal sends to the whole process group) reaches the parent
only; the parent then terminates them and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from device.sample_filter import (
    FALLBACK,
    FilterConfig,
    ItemKnowledge,
    filter_candidates,
)
from device.tflite_trainer import (
    DeviceTrainer,
    FinetuneConfig,
    conversions,
    export,
    finetune,
)
from device.votes import votes, with_votes
from recfl.core import interrupts
from recfl.core.arms import DEVICE_ARMS, Arm, names
from recfl.core.atomic import atomic_path, write_json_atomic
from recfl.core.dataset import PreparedDataset
from recfl.core.errors import RecflError
from recfl.core.features import Encoder, Examples
from recfl.core.metrics import ctr_metrics
from recfl.core.models import ModelParams, ModelSpec, load_model, predict
from recfl.core.pool import load_split, open_store
from recfl.core.schema import marked, predictions_table
from recfl.core.submodel import Submodel

log = logging.getLogger(__name__)

ARMS = names(DEVICE_ARMS)  # the choices of ``recfl personalize --arm``
CandidateSource = Callable[[np.ndarray], pd.DataFrame]  # device user ids -> their candidates table (recfl.core.candidates)
CHUNK_USERS = 256  # users whose tasks are built at once (bounds the parent's memory)
DEVICE_FILES = (".weights.npz", ".rows.npz")  # what a device keeps, per user: its personalized weights and row map


@dataclass(frozen=True, eq=False)
class DeviceTask:
    """What one device holds (its own events) and downloads (candidates with cloud-computed features)."""

    user_id: int
    local: pd.DataFrame  # the user's training events; never leave the device
    test: pd.DataFrame  # events to score
    candidates: pd.DataFrame  # matched pool samples: canonical columns (+ similarity), row-aligned with candidate_examples
    candidate_examples: Examples


def similarity_order(candidates: pd.DataFrame) -> np.ndarray:
    """Candidates most similar first (ties in table order): all a device reads of their similarity."""
    return np.argsort(-candidates["similarity"].to_numpy(np.float64), kind="stable")


def task_inputs(task: DeviceTask) -> str:
    """A digest of what one device's result depends on besides the model and the settings: its own events,
    the events it scores, its candidates and their cloud-computed features, and the candidates' similarity order
    (not the values: a pool event elsewhere moves every cosine a little and rarely the order)."""
    digest = hashlib.blake2b(digest_size=16)
    for frame in (task.local, task.test, task.candidates.drop(columns="similarity")):
        digest.update(",".join(map(str, frame.columns)).encode())
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(similarity_order(task.candidates).astype(np.int64).tobytes())
    for field in fields(task.candidate_examples):
        digest.update(np.ascontiguousarray(getattr(task.candidate_examples, field.name)).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class PreviousDevices:
    """An earlier run of the same arm and settings: per user, its predictions, report (with its inputs' digest)
    and device files, to take over where the inputs are unchanged."""

    predictions: dict[int, pd.DataFrame]
    reports: dict[int, dict]
    device_dir: Path

    @classmethod
    def read(cls, predictions: Path) -> PreviousDevices | None:
        """The devices of ``predictions`` (a ``personalize`` output); None when it is missing or predates digests."""
        device_dir = predictions.with_name(predictions.stem + ".devices")
        if not predictions.is_file() or not (device_dir / "users.parquet").is_file():
            return None
        try:
            per_user, scored = pd.read_parquet(device_dir / "users.parquet"), pd.read_parquet(predictions)
        except (OSError, ValueError, pa.ArrowException) as error:  # damaged: every device runs again, nothing is lost
            log.warning("%s: earlier devices unreadable (%s); personalizing every device again", predictions, error)
            return None
        if "inputs" not in per_user or "user_id" not in scored:
            return None
        return cls({int(user): rows for user, rows in scored.groupby("user_id", sort=False)},
                   {int(row["user_id"]): row for row in per_user.to_dict("records")}, device_dir)

    def take(self, user: int, inputs: str, device_dir: Path) -> tuple[pd.DataFrame, dict] | None:
        """User ``user``'s predictions and report, its device files copied to ``device_dir``, if its inputs were ``inputs``."""
        report = self.reports.get(user)
        files = [self.device_dir / f"{user}{suffix}" for suffix in DEVICE_FILES]
        if report is None or report["inputs"] != inputs or user not in self.predictions or not all(f.is_file() for f in files):
            return None
        for source in files:
            shutil.copyfile(source, device_dir / source.name)
        return self.predictions[user], report


@dataclass(frozen=True, eq=False)
class DeviceContext:
    """Per-process state shared by every device a worker simulates."""

    arm: Arm
    data: PreparedDataset
    spec: ModelSpec
    params: ModelParams
    trainer: DeviceTrainer
    encode: Encoder
    filter_config: FilterConfig
    finetune_config: FinetuneConfig
    device_dir: Path

    @property
    def knowledge(self) -> ItemKnowledge:
        return ItemKnowledge(self.data.item_vocab, self.data.category_vocab, item_embeddings(self.spec, self.params))


def item_embeddings(spec: ModelSpec, params: ModelParams) -> np.ndarray | None:
    """The cloud model's item embeddings (its first table over the item vocabulary), if it has one."""
    table = next((t.name for t in spec.definition.tables if t.vocabulary == "items"), None)
    return None if table is None else params.tables[table]


def validation_split(n: int, fraction: float) -> int:
    """How many of ``n`` time-ordered training events (the latest) form the validation slice."""
    return 0 if n < 2 else min(n - 1, max(1, int(round(fraction * n))))


def capacity_prefix(base: Submodel, candidates: Examples, capacity: dict[str, int]) -> int:
    """How many leading ``candidates`` fit beside ``base``'s rows within ``capacity`` rows per table."""
    fits = np.full(len(candidates), True)
    for table, held in base.rows.items():
        fields = [f for f, t in base.fields.items() if t == table]
        values, cap = np.column_stack([_columns(getattr(candidates, f)) for f in fields]), capacity[table]
        if len(held) > cap:
            raise RecflError(f"a device needs {len(held)} {table} rows for its own events but the capacity is {cap}; "
                             "raise finetune.item_capacity / finetune.category_capacity")
        owner = np.repeat(np.arange(len(candidates)), values.shape[1])
        flat = values.ravel()
        new = ~np.isin(flat, held)
        _, first = np.unique(flat[new], return_index=True)
        added = np.cumsum(np.bincount(owner[new][first], minlength=len(candidates)))
        fits &= len(held) + added <= cap
    return int(np.argmin(fits)) if not fits.all() else len(candidates)


def _columns(values: np.ndarray) -> np.ndarray:
    """A field as a 2-D array of row ids (one row per example)."""
    return values.reshape(len(values), int(np.prod(values.shape[1:])))


def run_device(task: DeviceTask, ctx: DeviceContext) -> tuple[pd.DataFrame, dict]:
    """Filter (coda), build the submodel, fine-tune in TFLite, save the device model, score the test events."""
    started = time.perf_counter()
    cfg = ctx.finetune_config
    # the user's events, plus sampled negatives drawn on the device when the data set's rule asks for them
    local = ctx.data.with_training_negatives(task.local, ("device", task.user_id)).sort_values(["timestamp", "event_id"], kind="stable")
    local_ex = ctx.encode(local, local)
    test_ex = ctx.encode(task.test, local)
    report: dict = {"user_id": task.user_id, "arm": ctx.arm.name, "local_events": len(task.local), "test_events": len(task.test)}

    candidates, cand_ex = task.candidates, task.candidate_examples
    if not ctx.arm.candidates:
        candidates, cand_ex = candidates.iloc[:0], cand_ex.take(slice(0, 0))
    voters = candidates  # what votes read: every candidate received, or (votes_from = "kept") what the filter keeps
    report["candidate_bytes"] = int(sum(getattr(cand_ex, k).nbytes for k in ("item", "cats", "hist", "label")))  # downloaded
    weight = voter_weight = np.ones(len(candidates))
    if ctx.arm.filtered:
        result = filter_candidates(local, candidates, ctx.knowledge, ctx.filter_config, local_ex.hist, cand_ex.hist)
        report.update(result.report())
        candidates, cand_ex, weight = candidates[result.keep], cand_ex.take(result.keep), result.weight[result.keep]
        if cfg.votes_from == "kept":
            voters, voter_weight = candidates, weight
    else:
        report.update(candidates=len(candidates), kept=len(candidates))
    trained = bool(np.float32(cfg.candidate_weight))  # 0: the candidates only vote, fine-tuning sees what local's does
    cand_ex = replace(cand_ex, weight=(cfg.candidate_weight * weight).astype(np.float32))
    cand_ex = cand_ex.take(similarity_order(candidates) if trained else slice(0, 0))
    capacity = cfg.capacity(ctx.spec)
    base = Submodel.covering(ctx.spec, local_ex, test_ex)
    fit_n = capacity_prefix(base, cand_ex, capacity)
    trimmed, cand_ex = len(cand_ex) - fit_n, cand_ex.take(slice(0, fit_n))
    sub = Submodel.covering(ctx.spec, local_ex, test_ex, cand_ex)
    report.update(trimmed=trimmed, trained_candidates=fit_n, submodel_bytes=sub.payload_bytes(ctx.params),
                  **{f"{table}_rows": rows for table, rows in sub.sizes.items()})

    n_val = validation_split(len(local_ex), cfg.val_fraction)
    own, cands = sub.localize(local_ex.take(slice(0, len(local_ex) - n_val))), sub.localize(cand_ex)
    val = sub.localize(local_ex.take(slice(len(local_ex) - n_val, None)))
    ctx.trainer.set_params(sub.extract(ctx.params, capacity), anchor=True)
    rng = np.random.default_rng([cfg.seed, task.user_id])
    phases = [Examples.concat([own, cands])] if cfg.schedule == "joint" or not len(cands) else [cands, own]
    tuned = [finetune(ctx.trainer, fit, val, cfg, rng) for fit in phases][-1]
    checkpoint, rows = (ctx.device_dir / f"{task.user_id}{suffix}" for suffix in DEVICE_FILES)
    ctx.trainer.save(checkpoint)  # the personalized model stays on the device
    np.savez(rows, **sub.rows)
    ctx.trainer.restore(checkpoint)
    scores = ctx.trainer.predict(sub.localize(test_ex))
    vote = votes(task.test["item_id"].to_numpy(), voters["item_id"].to_numpy(), voters["label"].to_numpy(),
                 cfg.votes_shrink, voter_weight) if cfg.votes and ctx.arm.candidates else np.zeros(len(scores))
    scores = with_votes(scores, vote, cfg.votes)  # unchanged where no vote: every score of an arm without candidates
    report.update(fit_events=sum(len(f) for f in phases), val_events=len(val), epochs=tuned.epochs, best_epoch=tuned.best_epoch,
                  steps=tuned.steps, val_loss_before=tuned.val_losses[0] if tuned.val_losses else float("nan"),
                  val_loss_best=min(tuned.val_losses) if tuned.val_losses else float("nan"),
                  finetune_seconds=round(tuned.seconds, 4), voted_events=int(np.count_nonzero(vote)),
                  seconds=round(time.perf_counter() - started, 4))
    return predictions_table(task.test, scores, ctx.arm.name), report


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker process needs to build its :class:`DeviceContext` (picklable paths and configs)."""

    arm: Arm
    data_dir: Path
    model_dir: Path
    tflite_path: Path
    filter_config: FilterConfig
    finetune_config: FinetuneConfig
    device_dir: Path

    def context(self) -> DeviceContext:
        spec, params = load_model(self.model_dir)
        cfg = self.finetune_config
        trainer = DeviceTrainer(self.tflite_path, cfg.program_spec(spec))
        data = PreparedDataset(self.data_dir)
        return DeviceContext(self.arm, data, spec, params, trainer, _encoder(data, spec), self.filter_config, cfg,
                             self.device_dir)


_CONTEXT: DeviceContext | None = None


def _init_worker(settings: WorkerSettings) -> None:
    global _CONTEXT
    _CONTEXT = settings.context()


def _work(task: DeviceTask) -> tuple[pd.DataFrame, dict]:
    return run_device(task, _CONTEXT)


def personalize(data: PreparedDataset, model_dir: Path, arm: Arm, out: Path, pool_dir: Path | None = None,
                candidates: CandidateSource | None = None, users: int | None = None, workers: int = 1,
                filter_config: FilterConfig = FilterConfig(), finetune_config: FinetuneConfig = FinetuneConfig(),
                cache_dir: Path | None = None, progress: bool = True, previous: Path | None = None) -> dict:
    """Run ``arm`` for each device user and write their scored test events to ``out`` (Parquet).

    ``candidates`` gives the matched pool samples of a set of device users
    (an arm with candidates, the coda arms, needs it: a candidates directory
    read back, or matching on the fly, as the caller chooses). ``previous`` is
    the ``out`` of an earlier run of this arm with the same model and settings:
    devices whose inputs are unchanged are taken over from it, not run.

    Writes ``out`` plus ``<out stem>.devices/`` (a checkpoint and row map per
    device, and ``users.parquet``: one report row per user, with the digest of
    its inputs and whether it was taken over). Returns a summary.
    """
    started = time.perf_counter()
    if workers < 1:
        raise RecflError(f"--workers must be at least 1, got {workers}")
    if arm.candidates and (pool_dir is None or candidates is None):
        raise RecflError(f"--arm {arm.name} needs --pool POOLDIR (the cloud pool the candidates come from)")
    spec, params = load_model(model_dir, data)
    selected = device_users(data, pool_dir, users)
    out = Path(out)
    device_dir = out.with_name(out.stem + ".devices")
    device_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {"arm": arm.name, "users": int(len(selected)), "predictions": str(out), "device_dir": str(device_dir)}

    if not arm.personalized:
        test = data.test[data.test["user_id"].isin(selected)]
        examples = _encoder(data, spec)(test, data.train)
        frames, reports = [predictions_table(test, predict(spec, params, examples.inputs()), arm.name)], []
    else:
        cache_dir = Path(cache_dir) if cache_dir is not None else Path(model_dir) / "tflite"
        before = len(conversions(cache_dir))
        tflite_path = export(finetune_config.program_spec(spec), cache_dir, finetune_config.batch_size, finetune_config.ops)
        summary.update(tflite=str(tflite_path), tflite_bytes=tflite_path.stat().st_size,
                       tflite_conversions=len(conversions(cache_dir)) - before)
        settings = WorkerSettings(arm, data.root, Path(model_dir), tflite_path, filter_config, finetune_config, device_dir)
        earlier = PreviousDevices.read(Path(previous)) if previous is not None else None
        frames, reports, inputs = [], [], {}
        with tqdm(total=len(selected), desc=f"personalize {arm.name}", unit="user", disable=not progress) as bar:

            def fresh():
                """The tasks to run; those whose inputs are unchanged are taken over from ``earlier`` on the way."""
                for task in device_tasks(data, spec, selected, arm, pool_dir, candidates):
                    inputs[task.user_id] = task_inputs(task)
                    kept = earlier.take(task.user_id, inputs[task.user_id], device_dir) if earlier is not None else None
                    if kept is None:
                        yield task
                        continue
                    frames.append(kept[0])
                    reports.append({**kept[1], "reused": True})
                    bar.update(1)

            for frame, report in _run_all(fresh(), settings, workers):
                interrupts.check()
                frames.append(frame)
                reports.append({**report, "inputs": inputs[report["user_id"]], "reused": False})
                bar.update(1)
        summary["reused_devices"] = sum(report["reused"] for report in reports)

    predictions = pd.concat(frames, ignore_index=True) if frames else predictions_table(data.test.iloc[:0], np.zeros(0), arm.name)
    predictions = predictions.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    _write_parquet(predictions, out)
    if reports:
        per_user = pd.DataFrame(reports).sort_values("user_id").reset_index(drop=True)
        _write_parquet(per_user, device_dir / "users.parquet")
        summary["devices"] = _summarize(per_user)
    summary["metrics"] = ctr_metrics(predictions["user_id"].to_numpy(), predictions["label"].to_numpy(),
                                     predictions["score"].to_numpy())
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json_atomic(device_dir / "summary.json", summary)
    return summary


def _run_all(tasks, settings: WorkerSettings, workers: int):
    """``run_device`` over ``tasks``: in this process, or in ``workers`` spawned processes with at most
    two tasks per worker in flight (tasks are built lazily; a dead worker fails the run instead of hanging).

    Any exception here or in a worker, Ctrl-C included, terminates the workers at once rather than letting
    them finish the tasks in flight."""
    if workers == 1:
        ctx = settings.context()
        yield from (run_device(task, ctx) for task in tasks)
        return
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_init_worker, initargs=(settings,)) as executor:
        try:
            pending = set()
            for task in tasks:
                with _sigint_blocked():  # submit spawns the workers; they inherit the blocked signal
                    pending.add(executor.submit(_work, task))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (future.result() for future in done)
            for future in as_completed(pending):
                yield future.result()
        except BaseException:
            for process in list(executor._processes.values()):  # Python 3.14 names this terminate_workers()
                process.terminate()
            executor.shutdown(cancel_futures=True)
            raise


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread meanwhile: a process started here keeps it blocked (a pending
    SIGINT reaches this thread when the block ends)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def device_users(data: PreparedDataset, pool_dir: Path | None, users: int | None) -> np.ndarray:
    """Device users with test events (all users without a pool), sorted; the first ``users`` of them."""
    with_test = np.unique(data.test["user_id"].to_numpy(np.int64))
    if pool_dir is not None:
        with_test = np.intersect1d(with_test, load_split(pool_dir).device_users)
    if users is not None:
        if users < 1:
            raise RecflError(f"--users must be at least 1, got {users}")
        with_test = with_test[:users]
    if not len(with_test):
        raise RecflError(f"{data.root}: no device users with test events")
    return with_test


def device_tasks(data: PreparedDataset, spec: ModelSpec, users: np.ndarray, arm: Arm, pool_dir: Path | None,
                 candidates: CandidateSource | None = None):
    """One :class:`DeviceTask` per user, built lazily in chunks of users (the cloud side's work)."""
    pool = None
    if arm.candidates:
        with open_store(pool_dir) as store:
            pool = store.read()
    train = data.train[data.train["user_id"].isin(users)]
    test = data.test[data.test["user_id"].isin(users)]
    by_user_train = dict(tuple(train.groupby("user_id", sort=False)))
    by_user_test = dict(tuple(test.groupby("user_id", sort=False)))
    empty = data.train.iloc[:0]
    encode = _encoder(data, spec)
    for lo in range(0, len(users), CHUNK_USERS):
        chunk = users[lo : lo + CHUNK_USERS]
        matched = None
        if arm.candidates:
            matched = with_candidate_negatives(data, candidates(chunk))
        if matched is not None:
            examples = encode(matched, pool)
            groups = matched.groupby("target_user_id", sort=False).indices
        for user in chunk.tolist():
            if matched is not None and user in groups:
                rows = groups[user]
                cands, cand_ex = matched.iloc[rows].reset_index(drop=True), examples.take(rows)
            else:
                cands = empty.assign(similarity=np.zeros(0), target_user_id=np.zeros(0, np.int64))
                cand_ex = Examples.empty(spec.features)
            yield DeviceTask(user, by_user_train.get(user, empty), by_user_test[user], cands, cand_ex)


def with_candidate_negatives(data: PreparedDataset, matched: pd.DataFrame) -> pd.DataFrame:
    """Candidates plus sampled negatives for their positives when the data set's rule asks for them, drawn once
    per pool event: a pool event matched to several device users brings each of them the same negatives (drawn
    per copy, one owner's positives at one timestamp would count once per device user that matched them)."""
    if not data.train_negatives:
        return matched.reset_index(drop=True)
    targets = matched[["event_id", "target_user_id", "similarity"]].rename(columns={"event_id": "source"})
    own = matched.drop(columns=["target_user_id", "similarity"]).drop_duplicates("event_id")
    drawn = data.with_training_negatives(own.assign(source=own["event_id"]), ("candidates",))
    negatives = drawn.iloc[len(own):].merge(targets, on="source").drop(columns="source")  # after ``own``, as drawn
    matched = marked(matched)
    return pd.concat([matched, negatives[list(matched.columns)]], ignore_index=True)


def _encoder(data: PreparedDataset, spec: ModelSpec) -> Encoder:
    return Encoder(data.item_vocab, data.category_vocab, data.items, spec.features)


def _summarize(per_user: pd.DataFrame) -> dict:
    """Medians and counts over devices (fine-tuning and, for coda, the filter)."""
    out = {"median_finetune_seconds": float(per_user["finetune_seconds"].median()),
           "median_epochs": float(per_user["epochs"].median()),
           "users_keeping_global_weights": int((per_user["best_epoch"] == 0).sum()),
           "median_submodel_bytes": float(per_user["submodel_bytes"].median()),
           "median_candidates": float(per_user["candidates"].median()),
           "median_trained_candidates": float(per_user["trained_candidates"].median()),
           "trimmed_candidates": int(per_user["trimmed"].sum())}
    if "filter_path" in per_user:
        classified = per_user["filter_path"] == "classifier"
        out.update(filter_fallback_users=int((per_user["filter_path"] == FALLBACK).sum()),
                   median_kept_fraction=float(per_user["kept_fraction"].median()),
                   median_filter_auc=float(per_user.loc[classified, "filter_auc"].median()) if classified.any() else float("nan"))
    return out


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
