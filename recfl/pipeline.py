"""``recfl run``: the stages end to end, each skipped when its outputs are current.

Every stage writes under ``OUT/<stage>/`` and finishes by writing
``OUT/<stage>/stage.json`` with a fingerprint of its configuration and of
the stages it depends on. A rerun skips a stage whose fingerprint matches,
so a crashed run resumes where it stopped and a changed setting reruns
exactly the stages downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recfl import config
from recfl.dataset import DataConfig, PreparedDataset, prepare_from_config, write_json_atomic
from recfl.errors import RecflError
from recfl.formats import SyntheticSpec
from recfl.model import ModelConfig
from recfl.train import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What stages share: the output root, the config document and earlier stages' results."""

    out: Path
    doc: dict
    data_dir: Path | None = None
    results: dict[str, dict] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        return self.out / name


@dataclass(frozen=True)
class Stage:
    """One step: ``settings`` (fingerprinted) and ``run`` (returns a JSON summary)."""

    name: str
    settings: Callable[[RunContext], dict]
    run: Callable[[RunContext, Path], dict]
    depends: tuple[str, ...] = ()


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_settings(ctx: RunContext) -> dict:
    if ctx.data_dir is not None:
        return {"prepared": str(ctx.data_dir.resolve()), "manifest": PreparedDataset(ctx.data_dir).manifest.get("created_utc")}
    return {"data": config.as_table(config.section(DataConfig, ctx.doc, "data")),
            "synthetic": config.as_table(config.section(SyntheticSpec, ctx.doc, "synthetic"))}


def _data_run(ctx: RunContext, out: Path) -> dict:
    if ctx.data_dir is not None:
        return {"data_dir": str(ctx.data_dir), **PreparedDataset(ctx.data_dir).manifest["train"]}
    data = prepare_from_config(config.section(DataConfig, ctx.doc, "data"), ctx.doc, out)
    return {"data_dir": str(out), "train": data.manifest["train"], "test": data.manifest["test"]}


def _cloud_settings(ctx: RunContext) -> dict:
    return {"model": config.as_table(config.section(ModelConfig, ctx.doc, "model")),
            "train": config.as_table(config.section(TrainConfig, ctx.doc, "train"))}


def _cloud_run(ctx: RunContext, out: Path) -> dict:
    from recfl.train import train_cloud_model

    data = PreparedDataset(ctx.results["data"]["data_dir"])
    report = train_cloud_model(data, out, config.section(ModelConfig, ctx.doc, "model"), config.section(TrainConfig, ctx.doc, "train"))
    return {"model_dir": str(out), "test": report["model"], "popularity_baseline": report["popularity_baseline"]}


STAGES: tuple[Stage, ...] = (
    Stage("data", _data_settings, _data_run),
    Stage("cloud_model", _cloud_settings, _cloud_run, depends=("data",)),
)


def run(out: Path, doc: dict, data_dir: Path | None = None, stages: tuple[Stage, ...] = STAGES) -> dict:
    """Run (or skip) every stage in order; returns ``{stage: summary}`` and writes ``OUT/run.json``."""
    ctx = RunContext(Path(out), doc, Path(data_dir) if data_dir else None)
    ctx.out.mkdir(parents=True, exist_ok=True)
    fingerprints: dict[str, str] = {}
    for number, stage in enumerate(stages, start=1):
        fingerprint = _fingerprint({"settings": stage.settings(ctx), "upstream": [fingerprints[d] for d in stage.depends]})
        marker = ctx.stage_dir(stage.name) / "stage.json"
        done = json.loads(marker.read_text()) if marker.is_file() else None
        label = f"[{number}/{len(stages)}] {stage.name}"
        if done and done.get("fingerprint") == fingerprint:
            log.info("%s: up to date, skipped", label)
            ctx.results[stage.name] = done["result"]
        else:
            log.info("%s: running", label)
            started = time.time()
            ctx.stage_dir(stage.name).mkdir(parents=True, exist_ok=True)
            marker.unlink(missing_ok=True)
            result = stage.run(ctx, ctx.stage_dir(stage.name))
            write_json_atomic(marker, {"fingerprint": fingerprint, "result": result, "seconds": round(time.time() - started, 2)})
            ctx.results[stage.name] = result
            log.info("%s: done in %.1fs", label, time.time() - started)
        fingerprints[stage.name] = fingerprint
    write_json_atomic(ctx.out / "run.json", {"stages": ctx.results, "fingerprints": fingerprints})
    return ctx.results


def check_source_args(data_dir, fmt, path) -> None:
    """``--data`` and ``--format/--path`` are alternatives."""
    if data_dir and (fmt or path):
        raise RecflError("give either --data DIR (prepared) or --format/--path, not both")
