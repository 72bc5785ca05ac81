"""``recfl run``: every stage end to end, each skipped when its outputs are current.

Stages (each writes under ``OUT/<stage>/``)::

    data -> pool -> cloud_model -> fedsubavg, fedavg -> candidates
         -> arm-cloud, arm-fedavg, arm-fedsubavg, arm-local, arm-coda-nofilter, arm-coda -> ab

Every stage starts by writing ``OUT/<stage>/started.json`` and finishes by
writing ``OUT/<stage>/stage.json``, both with a fingerprint of the settings
it reads and of the stages it depends on. A rerun skips a stage whose
finished fingerprint matches, so a crashed run resumes where it stopped; an
unfinished stage with the same fingerprint keeps its partial outputs (the
federated stages resume from their last round), one with another
fingerprint starts from an empty folder. A changed setting therefore reruns
exactly the stages downstream of it, never on top of stale outputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ab_testing.evaluate import AbConfig, evaluate
from ab_testing.predictions import read_predictions
from ab_testing.report import write_report
from cloud_pool.matching import MatchConfig, write_candidates
from cloud_pool.pool import PoolConfig, build_pool
from device.personalize import device_users, personalize
from device.sample_filter import FilterConfig
from device.tflite_trainer import FinetuneConfig
from recfl.app.candidates import candidate_source
from recfl.app.evaluable import evaluable, require_evaluable
from recfl.core import config
from recfl.core.atomic import write_json_atomic
from recfl.core.candidates import read_candidates
from recfl.core.dataset import DataConfig, PreparedDataset, prepare_from_config
from recfl.core.errors import RecflError
from recfl.core.evaluable import coverage, need
from recfl.core.federated.simulate import FederatedConfig, simulate
from recfl.core.formats import SyntheticSpec
from recfl.core.models import ModelConfig
from recfl.core.pool import load_split, pool_summary
from recfl.core.train import TrainConfig, train_cloud_model

log = logging.getLogger(__name__)

CONTROL = "cloud"
PERSONALIZED = ("local", "coda-nofilter", "coda")
GLOBAL = ("fedavg", "fedsubavg")
ARMS = (CONTROL, *GLOBAL, *PERSONALIZED)


@dataclass(frozen=True)
class RunConfig:
    """The ``[run]`` config section: sizes of the end-to-end pipeline."""

    device_users: int = 200  # personalize and evaluate the first N device users by id (0 = all)
    workers: int = 2  # parallel device processes during personalization
    min_evaluable_users: int = 50  # stop before training when fewer evaluated users count for [ab] primary (0 = never)

    def __post_init__(self):
        config.check_limits(self, "run", device_users=">= 0", workers=">= 1", min_evaluable_users=">= 0")


@dataclass
class RunContext:
    """What stages share: the output root, the config document and earlier stages' results."""

    out: Path
    doc: dict
    data_dir: Path | None = None
    results: dict[str, dict] = field(default_factory=dict)

    def section(self, cls, name: str):
        return config.section(cls, self.doc, name)

    def table(self, cls, name: str) -> dict:
        return config.as_table(self.section(cls, name))

    @property
    def data(self) -> PreparedDataset:
        return PreparedDataset(self.results["data"]["data_dir"])

    @property
    def run(self) -> RunConfig:
        return self.section(RunConfig, "run")


@dataclass(frozen=True)
class Stage:
    """One step: ``settings`` (fingerprinted), ``run`` (returns a JSON summary) and an optional
    ``check`` of its result, run whether the stage ran or was skipped (it may stop the pipeline)."""

    name: str
    settings: Callable[[RunContext], dict]
    run: Callable[[RunContext, Path], dict]
    depends: tuple[str, ...] = ()
    check: Callable[[RunContext], None] | None = None


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- data, pool, cloud model -------------------------------------------------------------------------

def _data_settings(ctx: RunContext) -> dict:
    if ctx.data_dir is not None:
        return {"prepared": str(ctx.data_dir.resolve()), "created": PreparedDataset(ctx.data_dir).manifest.get("created_utc")}
    data = ctx.section(DataConfig, "data")
    return {"data": config.as_table(data), "synthetic": ctx.table(SyntheticSpec, "synthetic"), "files": _source_stat(data.path)}


def _data_run(ctx: RunContext, out: Path) -> dict:
    data = PreparedDataset(ctx.data_dir) if ctx.data_dir is not None else prepare_from_config(ctx.section(DataConfig, "data"), ctx.doc, out)
    return {"data_dir": str(data.root), "source": data.manifest["source"], "train": data.manifest["train"], "test": data.manifest["test"],
            "split": data.manifest.get("split"), "negatives": data.negatives}


def _data_check(ctx: RunContext) -> None:
    """Before anything trains: how many users each metric can count; stop if the primary metric counts too few."""
    data = ctx.data
    report = evaluable(data.train, data.test, ctx.section(AbConfig, "ab"), ctx.section(PoolConfig, "pool"), ctx.run.device_users)
    for group in ("all", "device", "evaluated"):
        counts = report[group]
        log.info("users who can count, %s (%d users, %d with test events): %s", group, counts["users"], counts["with_test"],
                 ", ".join(f"{m} {counts[m]}" for m in report["needs"]))
    require_evaluable(report, ctx.run.min_evaluable_users)


def _pool_settings(ctx: RunContext) -> dict:
    return {"pool": ctx.table(PoolConfig, "pool")}


def _pool_run(ctx: RunContext, out: Path) -> dict:
    cfg = ctx.section(PoolConfig, "pool")
    build_pool(ctx.data, out, cfg.share_fraction, cfg.salt)
    return {"pool_dir": str(out), **pool_summary(out)}


def _split(ctx: RunContext):
    return load_split(ctx.results["pool"]["pool_dir"])


def _cloud_settings(ctx: RunContext) -> dict:
    return {"model": ctx.table(ModelConfig, "model"), "train": ctx.table(TrainConfig, "train")}


def _cloud_run(ctx: RunContext, out: Path) -> dict:
    split = _split(ctx)
    report = train_cloud_model(ctx.data, out, ctx.section(ModelConfig, "model"), ctx.section(TrainConfig, "train"),
                               train_users=split.sharing_users, test_users=split.device_users)
    return {"model_dir": str(out), "trained_on_users": len(split.sharing_users), "device_test": report["model"],
            "popularity_baseline": report["popularity_baseline"]}


# --- federated rounds on the device users --------------------------------------------------------------

def _federated_stage(algorithm: str) -> Stage:
    def settings(ctx: RunContext) -> dict:
        return {"federated": {**ctx.table(FederatedConfig, "federated"), "algorithm": algorithm}}

    def run(ctx: RunContext, out: Path) -> dict:
        fed = replace(ctx.section(FederatedConfig, "federated"), algorithm=algorithm)
        return simulate(ctx.data, out, fed, ctx.section(ModelConfig, "model"), init=Path(ctx.results["cloud_model"]["model_dir"]),
                        resume=(out / "checkpoint.npz").is_file(), users=_split(ctx).device_users)

    return Stage(algorithm, settings, run, depends=("cloud_model",))


# --- matching and the arms -----------------------------------------------------------------------------

def _candidates_settings(ctx: RunContext) -> dict:
    return {"matching": ctx.table(MatchConfig, "matching"), "device_users": ctx.run.device_users}


def _candidates_run(ctx: RunContext, out: Path) -> dict:
    """Candidates for the device users the arms personalize (the first ``run.device_users`` by id)."""

    pool_dir = Path(ctx.results["pool"]["pool_dir"])
    users = device_users(ctx.data, pool_dir, ctx.run.device_users or None)
    write_candidates(pool_dir, ctx.data, out, ctx.section(MatchConfig, "matching"), users=users)
    candidates = read_candidates(out)
    return {"candidates_dir": str(out), "rows": int(len(candidates)), "users": int(candidates["target_user_id"].nunique())}


def _arm_stage(arm: str) -> Stage:
    model_stage = arm if arm in GLOBAL else "cloud_model"
    depends = (model_stage, "candidates") if arm in ("coda", "coda-nofilter") else (model_stage,)

    def settings(ctx: RunContext) -> dict:
        out = {"run": ctx.table(RunConfig, "run")}
        if arm in PERSONALIZED:
            out.update(filter=ctx.table(FilterConfig, "filter"), finetune=ctx.table(FinetuneConfig, "finetune"))
        return out

    def run(ctx: RunContext, out: Path) -> dict:
        model_dir = Path(ctx.results[model_stage]["model_dir"])
        pool_dir = Path(ctx.results["pool"]["pool_dir"])
        predictions = out / f"{arm}.parquet"
        summary = personalize(
            ctx.data, model_dir, arm if arm in PERSONALIZED else CONTROL, predictions, pool_dir=pool_dir,
            candidates=candidate_source(ctx.data, pool_dir, Path(ctx.results["candidates"]["candidates_dir"]))
            if "candidates" in depends else None,
            users=ctx.run.device_users or None, workers=ctx.run.workers,
            filter_config=ctx.section(FilterConfig, "filter"), finetune_config=ctx.section(FinetuneConfig, "finetune"),
            cache_dir=ctx.out / "tflite",
        )
        if arm in GLOBAL:  # a global model scored unchanged: the file carries the algorithm's name as its arm
            table = pd.read_parquet(predictions)
            table["arm"] = arm
            table.to_parquet(predictions, index=False)
        return {"predictions": str(predictions), "users": summary["users"], "metrics": summary["metrics"],
                **({"devices": summary["devices"]} if "devices" in summary else {})}

    return Stage(f"arm-{arm}", settings, run, depends=depends)


def _ab_settings(ctx: RunContext) -> dict:
    return {"ab": ctx.table(AbConfig, "ab")}


def _ab_run(ctx: RunContext, out: Path) -> dict:
    cfg = ctx.section(AbConfig, "ab").with_primary
    files = [ctx.results[f"arm-{arm}"]["predictions"] for arm in ARMS]
    activity = ctx.data.train["user_id"].value_counts().rename("train_events")
    predictions = read_predictions(files)
    result = evaluate(predictions, CONTROL, cfg, activity, progress=True)
    paths = write_report(result, out)
    control = predictions.of(CONTROL)
    users = coverage(control, [cfg.primary], {"evaluated": np.unique(control["user_id"].to_numpy())})["evaluated"]
    values = {v.arm: {"value": _finite(v.value), "ci": [_finite(c) for c in v.ci]}
              for v in result.values if v.segment == "all" and v.metric == cfg.primary}
    primary = {"metric": cfg.primary, "needs": need(cfg.primary), "users": users["users"], "counted": users[cfg.primary],
               "values": values}
    return {**paths, "primary": primary, "warnings": result.warnings}


def _finite(value: float) -> float | None:
    """A metric value for the run summary: None where it is undefined, never NaN."""
    return float(value) if np.isfinite(value) else None


def stages() -> tuple[Stage, ...]:
    """The pipeline in dependency order."""
    return (
        Stage("data", _data_settings, _data_run, check=_data_check),
        Stage("pool", _pool_settings, _pool_run, depends=("data",)),
        Stage("cloud_model", _cloud_settings, _cloud_run, depends=("pool",)),
        _federated_stage("fedsubavg"),
        _federated_stage("fedavg"),
        Stage("candidates", _candidates_settings, _candidates_run, depends=("pool",)),
        *(_arm_stage(arm) for arm in ARMS),
        Stage("ab", _ab_settings, _ab_run, depends=tuple(f"arm-{arm}" for arm in ARMS)),
    )


def run(out: Path, doc: dict, data_dir: Path | None = None, only: tuple[Stage, ...] | None = None) -> dict:
    """Run (or skip) every stage in order; returns ``{stage: summary}`` and writes ``OUT/run.json``."""
    ctx = RunContext(Path(out), doc, Path(data_dir) if data_dir else None)
    ctx.out.mkdir(parents=True, exist_ok=True)
    pipeline = only or stages()
    fingerprints: dict[str, str] = {}
    for number, stage in enumerate(pipeline, start=1):
        fingerprint = _fingerprint({"settings": stage.settings(ctx), "upstream": [fingerprints[d] for d in stage.depends]})
        marker = ctx.out / stage.name / "stage.json"
        done = json.loads(marker.read_text()) if marker.is_file() else None
        label = f"[{number}/{len(pipeline)}] {stage.name}"
        if done and done.get("fingerprint") == fingerprint:
            log.info("%s: up to date, skipped", label)
            ctx.results[stage.name] = done["result"]
        else:
            log.info("%s: running", label)
            started = time.time()
            _prepare_stage_dir(marker.parent, fingerprint)
            result = stage.run(ctx, marker.parent)
            write_json_atomic(marker, {"fingerprint": fingerprint, "result": result, "seconds": round(time.time() - started, 2)})
            ctx.results[stage.name] = result
            log.info("%s: done in %.1fs", label, time.time() - started)
        if stage.check is not None:
            stage.check(ctx)
        fingerprints[stage.name] = fingerprint
    write_json_atomic(ctx.out / "run.json", {"stages": ctx.results, "fingerprints": fingerprints})
    return ctx.results


def _prepare_stage_dir(folder: Path, fingerprint: str) -> None:
    """Keep the partial outputs of an interrupted run of the same stage settings; otherwise start empty."""
    started = folder / "started.json"
    partial = json.loads(started.read_text()).get("fingerprint") if started.is_file() else None
    if partial != fingerprint and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stage.json").unlink(missing_ok=True)
    write_json_atomic(started, {"fingerprint": fingerprint})


def _source_stat(path: str | None) -> list | None:
    """Size and modification time of a data source's files, so an edited file reruns the pipeline."""
    if not path or not Path(path).exists():
        return None
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def check_source_args(data_dir, fmt, path) -> None:
    """``--data`` and ``--format/--path`` are alternatives."""
    if data_dir and (fmt or path):
        raise RecflError("give either --data DIR (prepared) or --format/--path, not both")
