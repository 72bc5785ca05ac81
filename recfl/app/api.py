"""The Python API: recfl's stages as functions for scripts and notebooks (``from recfl.app import api``).

Each function wraps the stage function its command calls (``recfl data prepare``, ``pool build``, ``pool
match``, ``train``, ``simulate``, ``personalize``, ``ab evaluate``, ``run``), takes the same typed config
dataclasses (the sections of ``configs/default.toml``, defaults included) and returns a typed result. It
writes the files the command writes, where ``out`` says, and prints nothing: no progress bars, no logging
handlers, TensorFlow's C++ logging off (:mod:`recfl.core.quiet`). A mistake raises
:class:`~recfl.core.errors.RecflError` with the line the command would print.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ab_testing.evaluate import AbConfig, AbResult
from ab_testing.evaluate import evaluate as evaluate_arms
from ab_testing.predictions import read_predictions
from ab_testing.report import write_report
from ab_testing.segments import read_activity
from cloud_pool.matching import MatchConfig, write_candidates
from cloud_pool.pool import PoolConfig
from cloud_pool.pool import build_pool as build_cloud_pool
from device.personalize import personalize as personalize_arm
from device.sample_filter import FilterConfig
from device.tflite_trainer import FinetuneConfig
from recfl.app import pipeline
from recfl.app.pipeline import RunConfig
from recfl.app.candidates import candidate_source
from recfl.app.sections import SECTIONS, load_config
from recfl.core import config
from recfl.core.arms import DEVICE_ARMS, arm_named
from recfl.core.dataset import DataConfig, PreparedDataset, prepare_from_config
from recfl.core.errors import RecflError
from recfl.core.federated.privacy.settings import PrivacyConfig
from recfl.core.federated.simulate import FederatedConfig
from recfl.core.federated.simulate import simulate as simulate_rounds
from recfl.core.formats import SyntheticSpec
from recfl.core.models import ModelConfig
from recfl.core.pool import PoolSplit, load_split, pool_summary
from recfl.core.train import TrainConfig, train_cloud_model

__all__ = [  # the functions, their results, and the config sections they take (importable from here)
    "prepare", "build_pool", "open_pool", "match", "train", "simulate", "personalize", "evaluate", "run", "model_dir",
    "Pool", "CloudModel", "Simulation", "ArmPredictions", "Run", "PreparedDataset", "AbResult", "RecflError",
    "DataConfig", "SyntheticSpec", "PoolConfig", "MatchConfig", "ModelConfig", "TrainConfig", "FederatedConfig",
    "PrivacyConfig", "FinetuneConfig", "FilterConfig", "AbConfig", "RunConfig",
]


@dataclass(frozen=True)
class Pool:
    """A cloud pool: its folder, its users' roles and ``pool.json`` with the live counts (built or streamed into)."""

    root: Path
    split: PoolSplit
    summary: dict


@dataclass(frozen=True)
class CloudModel:
    """A model trained centrally (``recfl train``): its folder and its metrics on the test events."""

    model_dir: Path
    test: dict  # auc, gauc, logloss, ... of the model
    popularity_baseline: dict  # the same metrics of the popularity baseline
    train_loss: list  # mean training loss per epoch


@dataclass(frozen=True)
class Simulation:
    """A federated run (``recfl simulate``): its folder, final model and one row per round of ``metrics.jsonl``."""

    run_dir: Path
    model_dir: Path
    rounds: pd.DataFrame  # round, train_loss, upload/download bytes, seconds; test_auc/gauc/logloss when evaluated
    summary: dict


@dataclass(frozen=True)
class ArmPredictions:
    """One arm's scored test events (``recfl personalize``) and, for a personalizing arm, one report row per device."""

    arm: str
    path: Path  # the predictions file (the A/B harness's input)
    metrics: dict  # auc, gauc, logloss over the arm's test events
    devices: pd.DataFrame | None  # PRED.devices/users.parquet: candidates, kept, epochs, validation losses, ...
    summary: dict


@dataclass(frozen=True)
class Run:
    """A pipeline run (``recfl run``): its folder, each stage's summary, the A/B report and its primary metric."""

    out: Path
    stages: dict  # stage name -> its summary (as OUT/run.json records it; paths relative to out)
    report: Path  # OUT/ab/report.html
    primary: dict  # metric, users counted, and per arm its value and interval


ModelSource = CloudModel | Simulation | Path | str


def prepare(out: str | Path, data: DataConfig = DataConfig(), synthetic: SyntheticSpec = SyntheticSpec()) -> PreparedDataset:
    """Load ``data.format`` from ``data.path`` (or generate the ``synthetic`` set), split it per user, sample
    negatives, fit vocabularies and write the prepared data set to ``out`` (``recfl data prepare``)."""
    return prepare_from_config(data, {"synthetic": config.as_table(synthetic)}, Path(out))


def build_pool(data: PreparedDataset, out: str | Path, pool: PoolConfig = PoolConfig()) -> Pool:
    """The cloud pool in ``out``: the sharing users (by salted hash) and their training events (``recfl pool build``)."""
    build_cloud_pool(data, out, pool.share_fraction, pool.salt)
    return open_pool(out)


def open_pool(root: str | Path) -> Pool:
    """A pool built or streamed into earlier, as it is now."""
    return Pool(Path(root), load_split(root), pool_summary(root))


def match(data: PreparedDataset, pool: Pool, out: str | Path, matching: MatchConfig = MatchConfig(),
          users: Sequence[int] | None = None) -> Path:
    """Coarse matching: the candidate pool samples of each device user (or of ``users``), written to the
    candidates folder ``out``, which it returns (``recfl pool match``)."""
    write_candidates(pool.root, data, out, matching, users=None if users is None else np.asarray(users, np.int64), progress=False)
    return Path(out)


def train(data: PreparedDataset, out: str | Path, model: ModelConfig = ModelConfig(), train: TrainConfig = TrainConfig(),
          pool: Pool | None = None) -> CloudModel:
    """Train the cloud model on ``data`` (with a ``pool``: on its sharing users, tested on its device users) and
    save it to ``out`` (``recfl train``)."""
    users = {"train_users": pool.split.sharing_users, "test_users": pool.split.device_users} if pool else {}
    report = train_cloud_model(data, Path(out), model, train, progress=False, **users)
    return CloudModel(Path(out), report["model"], report["popularity_baseline"], report["train_loss"])


def simulate(data: PreparedDataset, out: str | Path, federated: FederatedConfig = FederatedConfig(),
             model: ModelConfig = ModelConfig(), init: ModelSource | None = None, pool: Pool | None = None,
             privacy: PrivacyConfig = PrivacyConfig(), resume: bool = False, workers: list[str] | None = None) -> Simulation:
    """Federated rounds (FedSubAvg or FedAvg, ``federated.algorithm``) in TensorFlow Federated, one client per user
    (with a ``pool``: per device user), starting from ``init`` (e.g. the cloud model) or from scratch
    (``recfl simulate``). ``out/tensorboard`` holds the rounds for TensorBoard."""
    out = Path(out)
    summary = simulate_rounds(data, out, federated, model, init=model_dir(init) if init is not None else None, resume=resume,
                              workers=workers, users=pool.split.device_users if pool else None, progress=False,
                              privacy=privacy)
    rounds = pd.DataFrame([json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    return Simulation(out, Path(summary["model_dir"]), rounds, summary)


def personalize(data: PreparedDataset, model: ModelSource, arm: str, out: str | Path, pool: Pool | None = None,
                candidates: str | Path | None = None, users: int | None = None, workers: int = 1,
                finetune: FinetuneConfig = FinetuneConfig(), sample_filter: FilterConfig = FilterConfig(),
                matching: MatchConfig = MatchConfig()) -> ArmPredictions:
    """Run ``arm`` (cloud, local, coda-nofilter, coda) on each device user of ``pool`` (every user with test
    events without one; the first ``users`` by id) and write their scored test events to ``out`` (``.parquet``).
    The coda arms take their candidates from a ``candidates`` folder (:func:`match`) or match them now with
    ``matching`` (``recfl personalize``)."""
    out, chosen = Path(out), arm_named(arm, DEVICE_ARMS)
    source = candidate_source(data, pool.root, Path(candidates) if candidates else None, matching) if pool else None
    summary = personalize_arm(data, model_dir(model), chosen, out, pool_dir=pool.root if pool else None, candidates=source,
                              users=users, workers=workers, filter_config=sample_filter, finetune_config=finetune, progress=False)
    devices = Path(summary["device_dir"]) / "users.parquet"
    return ArmPredictions(arm, out, summary["metrics"], pd.read_parquet(devices) if devices.is_file() else None, summary)


def evaluate(predictions: Sequence[ArmPredictions | str | Path], control: str, ab: AbConfig = AbConfig(),
             users: PreparedDataset | str | Path | None = None, out: str | Path | None = None) -> AbResult:
    """Compare every arm of the ``predictions`` files with the ``control`` arm: lifts with bootstrap intervals,
    corrected p-values, guards; with ``users`` (a prepared data set or a users file), activity segments too. With
    ``out``, writes ``report.md``, ``report.html`` and ``metrics.json`` there (``recfl ab evaluate``)."""
    paths = [p.path if isinstance(p, ArmPredictions) else Path(p) for p in predictions]
    activity = read_activity(users.root if isinstance(users, PreparedDataset) else users) if users is not None else None
    result = evaluate_arms(read_predictions(paths), control, ab, activity)
    if out is not None:
        write_report(result, out)
    return result


def run(out: str | Path, *settings, config_file: str | Path | None = None, data: PreparedDataset | str | Path | None = None,
        force: bool = False) -> Run:
    """The whole pipeline into the run folder ``out`` (``recfl run``): finished stages are skipped, changed
    settings rerun the stages that read them. ``settings`` are config sections (``DataConfig(...)``,
    ``FederatedConfig(...)``, ``RunConfig(...)``, ...), each replacing its section of ``config_file``
    (or the defaults); ``data`` is a prepared data set to start from instead of ``[data]``."""
    doc = load_config(config_file)
    names = {cls: name for name, cls in SECTIONS.items()}
    for section in settings:
        if type(section) not in names:
            raise RecflError(f"{type(section).__name__} is not a config section; give one of "
                             f"{', '.join(cls.__name__ for cls in SECTIONS.values())}")
        doc[names[type(section)]] = config.as_table(section)
    data_dir = data.root if isinstance(data, PreparedDataset) else data
    stages = pipeline.run(Path(out), doc, Path(data_dir) if data_dir else None, force=force, progress=False)
    return Run(Path(out), stages, Path(out) / stages["ab"]["report.html"], stages["ab"]["primary"])


def model_dir(model: ModelSource) -> Path:
    """The model folder of a trained model, a simulation's final model or a path."""
    return model.model_dir if isinstance(model, (CloudModel, Simulation)) else Path(model)
