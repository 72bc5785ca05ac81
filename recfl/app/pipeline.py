"""``recfl run``: every stage end to end, each skipped when its outputs are current.

Stages (each writes under ``OUT/<stage>/``)::

    data -> pool -> cloud_model -> fedsubavg, fedavg -> candidates
         -> arm-cloud, arm-fedavg, arm-fedsubavg, arm-local, arm-coda-nofilter, arm-coda -> ab

Every stage starts by writing ``OUT/<stage>/started.json`` and finishes by
writing ``OUT/<stage>/stage.json``, both with a fingerprint of the config
keys it reads (only those: ``filter.*`` reruns the ``coda`` arm, not the
others; ``run.workers`` changes no result and reruns nothing) and of the
stages it depends on. Fingerprints depend on settings, and on one piece of
content: events stored in ``OUT/pool`` after its pool stage built it (e.g.
``recfl stream consume --pool OUT/pool``) enter the candidates' fingerprint,
so matching, the arms that read candidates and the report run again on them.
Such content is the one thing a stage's *recipe* (its fingerprint without
:data:`CONTENT_KEYS`) leaves out: a stage that ``reuses`` (the candidate arms)
and whose recipe is unchanged keeps its last outputs in ``OUT/<stage>.previous``
while it reruns, and takes over every device whose inputs are unchanged.
The whole plan is known before anything runs: a rerun skips a stage whose finished
fingerprint matches, and at the start removes the outputs of every stage
whose fingerprint changed (no stale report outlives the settings it came
from, even if the run then stops early). A crashed run resumes where it
stopped: an unfinished stage with the same fingerprint keeps its partial
outputs (the federated stages resume from their last round).

A run folder holds one run of one data set. ``OUT`` is *another run* when
its data stage finished with other data settings (another source, an
edited source file, other ``[data]`` or ``[synthetic]`` settings, another
``--data``) and a later stage finished too: none of its results would be
reused, so :func:`run` refuses it unless ``force`` (``recfl run --force``).
A run that stopped after its data stage (the pre-training check) is simply
replaced; any other change of settings (another config file included)
reruns just the stages that read it. Stage folders recfl did not write are
never touched.

TensorBoard summaries go to ``OUT/tensorboard/<stage>/`` (the federated rounds, and each arm's results per
device), removed with their stage's outputs.

Paths in ``stage.json`` and ``OUT/run.json`` are relative to ``OUT`` (a
data set prepared elsewhere, ``--data``, stays absolute), so a run folder
can be moved or copied and rerun in place.

:func:`run_seeds` runs the pipeline once per seed into ``OUT/seed-N/`` (the
stages no seed reaches are run once and copied into the other seeds'
folders) and compares the arms pooled over the seeds in ``OUT/ab/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from ab_testing.convergence import convergence_blocks
from ab_testing.evaluate import AbConfig, evaluate, evaluate_seeds
from ab_testing.predictions import Predictions, read_predictions
from ab_testing.report import write_report
from cloud_pool.matching import MatchConfig, write_candidates
from cloud_pool.pool import PoolConfig, build_pool
from device.personalize import device_users, personalize
from device.sample_filter import FilterConfig
from device.tflite_trainer import CANDIDATE_KEYS, FinetuneConfig
from recfl.app.candidates import candidate_source
from recfl.app.evaluable import evaluable, require_evaluable
from recfl.core import arms, config, interrupts
from recfl.core.atomic import write_json_atomic
from recfl.core.candidates import read_candidates
from recfl.core.dataset import DataConfig, PreparedDataset, prepare_from_config
from recfl.core.errors import RecflError
from recfl.core.evaluable import coverage, need
from recfl.core.federated.privacy.settings import PrivacyConfig
from recfl.core.federated.process import ALGORITHMS
from recfl.core.federated.simulate import FederatedConfig, simulate
from recfl.core.formats import SyntheticSpec
from recfl.core.locks import exclusive
from recfl.core.models import ModelConfig
from recfl.core.pool import load_split, pool_summary, pool_version
from recfl.core.summaries import SUMMARIES, device_results, write_distributions
from recfl.core.train import TrainConfig, train_cloud_model

log = logging.getLogger(__name__)

# the arms' names (``recfl.core.arms`` holds the arms): each is stage ``arm-NAME``, its predictions ``NAME.parquet``
CONTROL = arms.CONTROL.name
ARMS = arms.names()
GLOBAL = arms.names(arm for arm in arms.ARMS if arm.model in ALGORITHMS)  # arms scoring a federated stage's model as it is
PERSONALIZED = arms.names(arm for arm in arms.ARMS if arm.personalized)
STARTS = tuple(arm.model for arm in arms.ARMS if not arm.personalized)  # stages whose model the personalized arms may start from
SEED_KEYS = ("model.init_seed", "train.seed", "federated.seed", "finetune.seed", "filter.seed")  # what --seeds sets
SHARED_STAGES = ("data", "pool", "candidates")  # read no seed: the data split, the pool and the matching stay fixed
LAYOUT = 2  # stage.json format; 2: result paths relative to the run folder (earlier stage.json files rerun once)
CONTENT_KEYS = ("pool_version",)  # settings that are content, not recipe: a change may keep work of the last run
PREVIOUS = ".previous"  # suffix of a stage's last outputs kept for its rerun (Stage.reuses)


@dataclass(frozen=True)
class RunConfig:
    """The ``[run]`` config section: sizes of the end-to-end pipeline."""

    device_users: int = 200  # personalize and evaluate the first N device users by id (0 = all)
    workers: int = 2  # parallel device processes during personalization
    min_evaluable_users: int = 50  # stop before training when fewer evaluated users count for [ab] primary (0 = never)
    personalize_from: str = "fedsubavg"  # the model the personalized arms start from: cloud_model | fedsubavg | fedavg (README)

    def __post_init__(self):
        config.check_limits(self, "run", device_users=">= 0", workers=">= 1", min_evaluable_users=">= 0")
        if self.personalize_from not in STARTS:
            raise RecflError(f"run.personalize_from must be one of {', '.join(STARTS)}, got {self.personalize_from!r}")


@dataclass
class RunContext:
    """What stages share: the output root, the config document and earlier stages' results."""

    out: Path
    doc: dict
    data_dir: Path | None = None
    results: dict[str, dict] = field(default_factory=dict)
    progress: bool = True  # progress bars on stderr
    fingerprints: dict[str, str] = field(default_factory=dict)  # the plan's so far: a stage's settings may read them
    recipes: dict[str, str] = field(default_factory=dict)  # the plan's fingerprints without content keys

    def previous(self, stage: str) -> Path | None:
        """The last finished outputs of ``stage`` when only content it reads changed since (see :data:`CONTENT_KEYS`):
        a stage that ``reuses`` them keeps each unit of work whose own inputs are unchanged."""
        folder = self.out / (stage + PREVIOUS)
        done = _read_json(folder / "stage.json")
        return folder if done and done.get("recipe") == self.recipes.get(stage) else None

    def section(self, cls, name: str):
        return config.section(cls, self.doc, name)

    def table(self, cls, name: str) -> dict:
        return config.as_table(self.section(cls, name))

    def portable(self, path: str | Path) -> str:
        """``path`` as a stage result records it: relative to the run folder when inside it, else absolute."""
        path, root = Path(path).resolve(), self.out.resolve()
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def path(self, stage: str, key: str) -> Path:
        """A path an earlier stage recorded (see :meth:`portable`), for this run folder wherever it is now."""
        return self.out / self.results[stage][key]

    @property
    def data(self) -> PreparedDataset:
        return PreparedDataset(self.path("data", "data_dir"))

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
    reuses: bool = False  # when only content changed, its last outputs are kept in ``<stage>.previous`` for ``run``


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _recipe(settings: dict, upstream: list[str]) -> str:
    """A stage's fingerprint without the content keys of its settings (nor of its upstream's): equal when
    only content changed."""
    return _fingerprint({"settings": {k: v for k, v in settings.items() if k not in CONTENT_KEYS}, "upstream": upstream})


# --- data, pool, cloud model -------------------------------------------------------------------------

def _data_settings(ctx: RunContext) -> dict:
    if ctx.data_dir is not None:
        return {"prepared": str(ctx.data_dir.resolve()), "created": PreparedDataset(ctx.data_dir).manifest.get("created_utc")}
    data = ctx.section(DataConfig, "data")
    return {"data": config.as_table(data), "files": _source_stat(data.path),
            "synthetic": ctx.table(SyntheticSpec, "synthetic") if data.format == "synthetic" else None}


def _data_run(ctx: RunContext, out: Path) -> dict:
    data = PreparedDataset(ctx.data_dir) if ctx.data_dir is not None else prepare_from_config(ctx.section(DataConfig, "data"), ctx.doc, out)
    return {"data_dir": ctx.portable(data.root), "source": data.manifest["source"], "train": data.manifest["train"], "test": data.manifest["test"],
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
    return {"pool_dir": ctx.portable(out), **pool_summary(out), "version": pool_version(out)}


def _pool_arrivals(ctx: RunContext) -> dict:
    """``{"pool_version": V}`` once events reached the run's pool after its (up-to-date) pool stage built it,
    e.g. streamed in with ``recfl stream consume --pool OUT/pool``, so that matching and what reads the
    candidates run again on them; ``{}`` while it holds what it built (such runs keep their fingerprints)."""
    done = _read_json(ctx.out / "pool" / "stage.json")
    if not done or done.get("fingerprint") != ctx.fingerprints.get("pool") or "version" not in done.get("result", {}):
        return {}
    now = pool_version(ctx.out / "pool")
    return {} if now == done["result"]["version"] else {"pool_version": now}


def _split(ctx: RunContext):
    return load_split(ctx.path("pool", "pool_dir"))


def _cloud_settings(ctx: RunContext) -> dict:
    return {"model": ctx.table(ModelConfig, "model"), "train": ctx.table(TrainConfig, "train")}


def _cloud_run(ctx: RunContext, out: Path) -> dict:
    split = _split(ctx)
    report = train_cloud_model(ctx.data, out, ctx.section(ModelConfig, "model"), ctx.section(TrainConfig, "train"),
                               progress=ctx.progress, train_users=split.sharing_users, test_users=split.device_users)
    return {"model_dir": ctx.portable(out), "trained_on_users": len(split.sharing_users), "device_test": report["model"],
            "popularity_baseline": report["popularity_baseline"]}


# --- federated rounds on the device users --------------------------------------------------------------

def _federated_stage(algorithm: str) -> Stage:
    def settings(ctx: RunContext) -> dict:
        privacy = ctx.section(PrivacyConfig, "privacy")  # in the fingerprint only when on: plain runs keep theirs
        return {"federated": {**ctx.table(FederatedConfig, "federated"), "algorithm": algorithm},
                **({"privacy": config.as_table(privacy)} if privacy.enabled else {})}

    def run(ctx: RunContext, out: Path) -> dict:
        fed = replace(ctx.section(FederatedConfig, "federated"), algorithm=algorithm)
        summary = simulate(ctx.data, out, fed, ctx.section(ModelConfig, "model"), init=ctx.path("cloud_model", "model_dir"),
                           resume=(out / "checkpoint.npz").is_file(), users=_split(ctx).device_users, progress=ctx.progress,
                           privacy=ctx.section(PrivacyConfig, "privacy"), summaries=ctx.out / SUMMARIES / algorithm)
        return {**summary, "model_dir": ctx.portable(summary["model_dir"])}

    return Stage(algorithm, settings, run, depends=("cloud_model",))


# --- matching and the arms -----------------------------------------------------------------------------

def _candidates_settings(ctx: RunContext) -> dict:
    return {"matching": ctx.table(MatchConfig, "matching"), "device_users": ctx.run.device_users, **_pool_arrivals(ctx)}


def _candidates_run(ctx: RunContext, out: Path) -> dict:
    """Candidates for the device users the arms personalize (the first ``run.device_users`` by id)."""

    pool_dir = ctx.path("pool", "pool_dir")
    users = device_users(ctx.data, pool_dir, ctx.run.device_users or None)
    write_candidates(pool_dir, ctx.data, out, ctx.section(MatchConfig, "matching"), users=users, progress=ctx.progress)
    candidates = read_candidates(out)
    return {"candidates_dir": ctx.portable(out), "rows": int(len(candidates)), "users": int(candidates["target_user_id"].nunique())}


def _arm_stage(arm: arms.Arm, start: str) -> Stage:
    """The arm's predictions: a global model scored unchanged, or each device's personalization of ``start``'s model."""
    model_stage = arm.model or start
    depends = (model_stage, "candidates") if arm.candidates else (model_stage,)
    device_arm = arm if arm.personalized else arms.CONTROL  # scoring a global model as it is: the control's device work

    def settings(ctx: RunContext) -> dict:
        """What the arm reads: which users; fine-tuning if it personalizes (its candidate keys only with candidates);
        the filter only if it filters (coda; not ``run.workers``)."""
        out = {"device_users": ctx.run.device_users}
        if arm.personalized:
            finetune = ctx.table(FinetuneConfig, "finetune")
            out.update(finetune={k: v for k, v in finetune.items() if arm.candidates or k not in CANDIDATE_KEYS})
        if arm.filtered:
            out.update(filter=ctx.table(FilterConfig, "filter"))
        return out

    def run(ctx: RunContext, out: Path) -> dict:
        model_dir = ctx.path(model_stage, "model_dir")
        pool_dir = ctx.path("pool", "pool_dir")
        predictions = out / f"{arm.name}.parquet"
        previous = ctx.previous(name)
        summary = personalize(
            ctx.data, model_dir, device_arm, predictions, pool_dir=pool_dir,
            candidates=candidate_source(ctx.data, pool_dir, ctx.path("candidates", "candidates_dir"))
            if arm.candidates else None,
            users=ctx.run.device_users or None, workers=ctx.run.workers,
            filter_config=ctx.section(FilterConfig, "filter"), finetune_config=ctx.section(FinetuneConfig, "finetune"),
            cache_dir=ctx.out / "tflite", progress=ctx.progress,
            previous=previous / predictions.name if previous is not None else None,
        )
        table = pd.read_parquet(predictions)
        if device_arm is not arm:  # a federated model scored as the control is: the file carries the arm's own name
            table["arm"] = arm.name
            table.to_parquet(predictions, index=False)
        devices = Path(summary["device_dir"]) / "users.parquet"
        write_distributions(ctx.out / SUMMARIES / f"arm-{arm.name}",
                            device_results(table, pd.read_parquet(devices) if devices.is_file() else None))
        return {"predictions": ctx.portable(predictions), "users": summary["users"], "metrics": summary["metrics"],
                **({"devices": summary["devices"]} if "devices" in summary else {}),
                **({"reused_devices": summary["reused_devices"]} if "reused_devices" in summary else {})}

    name = f"arm-{arm.name}"
    return Stage(name, settings, run, depends=depends, reuses=arm.candidates and arm.personalized)


def _ab_settings(ctx: RunContext) -> dict:
    return {"ab": ctx.table(AbConfig, "ab")}


def _ab_run(ctx: RunContext, out: Path) -> dict:
    predictions = read_predictions([ctx.path(f"arm-{arm}", "predictions") for arm in ARMS])
    predictions = replace(predictions, sources={arm: ctx.results[f"arm-{arm}"]["predictions"] for arm in ARMS})  # as run.json
    curves = {algorithm: [json.loads(line) for line in (ctx.out / algorithm / "metrics.jsonl").read_text().splitlines()]
              for algorithm in GLOBAL}
    return _ab_report(ctx, out, {"": predictions}, ctx.data, convergence_blocks(curves))


def _ab_report(ctx: RunContext, out: Path, runs: dict[str, Predictions], data: PreparedDataset, extra=()) -> dict:
    """The A/B report of one run (``runs`` with one unnamed entry) or pooled over seeds, and the run's headline;
    ``extra`` report blocks (a run's federated convergence) go before the method."""
    cfg = ctx.section(AbConfig, "ab").with_primary
    activity = data.train["user_id"].value_counts().rename("train_events")
    pooled = len(runs) > 1 or "" not in runs
    result = (evaluate_seeds(runs, CONTROL, cfg, activity, progress=ctx.progress) if pooled
              else evaluate(runs[""], CONTROL, cfg, activity, progress=ctx.progress))
    paths = {name: ctx.portable(path) for name, path in write_report(result, out, extra).items()}
    control = next(iter(runs.values())).of(CONTROL)
    users = coverage(control, [cfg.primary], {"evaluated": np.unique(control["user_id"].to_numpy())})["evaluated"]
    values = {v.arm: {"value": _finite(v.value), "ci": [_finite(c) for c in v.ci]}
              for v in result.values if v.segment == "all" and v.metric == cfg.primary}
    primary = {"metric": cfg.primary, "needs": need(cfg.primary), "users": users["users"], "counted": users[cfg.primary],
               "values": values}
    if pooled:
        primary["seeds"] = list(result.seeds)
        primary["lifts"] = {c.treatment: {"lift": _finite(c.lift.abs_lift), "ci": [_finite(x) for x in c.lift.abs_ci],
                                          "per_seed": {x.seed: _finite(x.abs_lift) for x in result.seed_lifts
                                                       if (x.treatment, x.segment, x.metric) == (c.treatment, "all", c.metric)}}
                            for c in result.comparisons if c.segment == "all" and c.metric == cfg.primary}
    return {**paths, "primary": primary, "warnings": result.warnings}


def _finite(value: float) -> float | None:
    """A metric value for the run summary: None where it is undefined, never NaN."""
    return float(value) if np.isfinite(value) else None


def stages(start: str = RunConfig.personalize_from) -> tuple[Stage, ...]:
    """The pipeline in dependency order; the personalized arms start from the model of stage ``start``."""
    return (
        Stage("data", _data_settings, _data_run, check=_data_check),
        Stage("pool", _pool_settings, _pool_run, depends=("data",)),
        Stage("cloud_model", _cloud_settings, _cloud_run, depends=("pool",)),
        *(_federated_stage(algorithm) for algorithm in ALGORITHMS),
        Stage("candidates", _candidates_settings, _candidates_run, depends=("pool",)),
        *(_arm_stage(arm, start) for arm in arms.ARMS),
        Stage("ab", _ab_settings, _ab_run, depends=tuple(f"arm-{arm}" for arm in ARMS)),
    )


def run(out: Path, doc: dict, data_dir: Path | None = None, only: tuple[Stage, ...] | None = None,
        force: bool = False, progress: bool = True) -> dict:
    """Run (or skip) every stage in order; returns ``{stage: summary}`` and keeps ``OUT/run.json`` current.

    ``force`` replaces another run held in ``out`` (see the module docstring) instead of refusing it.
    """
    ctx = RunContext(Path(out), doc, Path(data_dir) if data_dir else None, progress=progress)
    pipeline = only or stages(ctx.run.personalize_from)
    plan: dict[str, tuple[str, dict]] = {}  # stage -> (fingerprint, settings); settings alone decide it
    for stage in pipeline:
        settings = json.loads(json.dumps(stage.settings(ctx), sort_keys=True, default=str))  # as stage.json records it
        plan[stage.name] = (_fingerprint({"settings": settings, "upstream": [plan[d][0] for d in stage.depends]}), settings)
        ctx.fingerprints[stage.name] = plan[stage.name][0]
        ctx.recipes[stage.name] = _recipe(settings, [ctx.recipes[d] for d in stage.depends])
    _check_out(ctx.out, pipeline, plan, force)
    with exclusive(ctx.out, "recfl run"):  # two runs writing one folder would corrupt each other's stages
        _run_stages(ctx, pipeline, plan)
    return ctx.results


def _run_stages(ctx: RunContext, pipeline: tuple[Stage, ...], plan: dict[str, tuple[str, dict]]) -> None:
    """Drop stale stage folders, then run (or skip) each stage in order, keeping ``OUT/run.json`` current."""
    for stage in pipeline:
        _drop_stale(ctx.out / stage.name, plan[stage.name][0], ctx.recipes[stage.name] if stage.reuses else None)
    fingerprints = {name: fingerprint for name, (fingerprint, _) in plan.items()}
    _write_record(ctx, fingerprints)
    for number, stage in enumerate(pipeline, start=1):
        interrupts.check()
        fingerprint, settings = plan[stage.name]
        marker = ctx.out / stage.name / "stage.json"
        done = _read_json(marker)
        label = f"[{number}/{len(pipeline)}] {stage.name}"
        if done and done.get("fingerprint") == fingerprint and done.get("layout") == LAYOUT:
            log.info("%s: up to date, skipped", label)
            ctx.results[stage.name] = done["result"]
        else:
            log.info("%s: running", label)
            started = time.time()
            _prepare_stage_dir(marker.parent, fingerprint, settings)
            result = stage.run(ctx, marker.parent)
            write_json_atomic(marker, {"fingerprint": fingerprint, "recipe": ctx.recipes[stage.name], "layout": LAYOUT,
                                       "settings": settings, "result": result, "seconds": round(time.time() - started, 2)})
            if stage.reuses:
                shutil.rmtree(marker.parent.with_name(stage.name + PREVIOUS), ignore_errors=True)
            ctx.results[stage.name] = result
            log.info("%s: done in %.1fs", label, time.time() - started)
        if stage.check is not None:
            stage.check(ctx)
        _write_record(ctx, fingerprints)


def run_seeds(out: Path, doc: dict, seeds: list[int], data_dir: Path | None = None, force: bool = False) -> dict:
    """The pipeline once per seed into ``out/seed-N/``, then the arms compared pooled over the seeds in ``out/ab/``.

    Seed N sets every key of :data:`SEED_KEYS` to N (the cloud model's initialization and batches, the federated
    rounds, the device filter and fine-tuning); the data split, the pool and the candidates read no seed, so
    they run once, in the first seed's folder, and are copied into the others' (where their fingerprints match
    and they are skipped). Finished seeds are skipped like finished stages. Returns ``{"seeds": {label:
    results}, "ab": pooled summary}``.
    """
    if len(set(seeds)) != len(seeds) or min(seeds, default=0) < 0 or not seeds:
        raise RecflError(f"--seeds {' '.join(map(str, seeds))}: give distinct non-negative integers, e.g. --seeds 0 1 2")
    if (out / "data" / "started.json").is_file():
        raise RecflError(f"--out {out} holds a run of one seed (recfl run without --seeds); give another --out for --seeds")
    folders: dict[str, Path] = {}
    results: dict[str, dict] = {}
    with exclusive(out, "recfl run"):  # held from the first seed to the pooled report, each seed's folder with it
        for seed in seeds:
            label, folder = f"seed-{seed}", out / f"seed-{seed}"
            log.info("seed %d (%d of %d): %s", seed, len(folders) + 1, len(seeds), folder)
            seeded = copy.deepcopy(doc)
            for key in SEED_KEYS:
                section, name = key.split(".")
                seeded.setdefault(section, {})[name] = seed
            with exclusive(folder, "recfl run"):  # the shared stages are copied in under the seed's own hold
                if folders:
                    _copy_shared(next(iter(folders.values())), folder)
                results[label] = run(folder, seeded, data_dir, force=force)
            folders[label] = folder
        return {"seeds": results, "ab": run(out, doc, only=(_pooled_ab_stage(folders),))["ab"]}


def check_not_seeds(out: Path) -> None:
    """A single run does not go into a folder of seed runs (its report would replace the pooled one)."""
    if any(out.glob("seed-*/run.json")):
        raise RecflError(f"--out {out} holds runs of several seeds (recfl run --seeds); give another --out, "
                         "or run --seeds again")


def _copy_shared(first: Path, folder: Path) -> None:
    """Copy the first seed's finished :data:`SHARED_STAGES` into ``folder`` where its own are missing or differ."""
    for name in SHARED_STAGES:
        source, target = first / name, folder / name
        done, mine = _read_json(source / "stage.json"), _read_json(target / "stage.json")
        if done is None or (mine or {}).get("fingerprint") == done["fingerprint"]:
            continue
        if target.exists():
            if not (target / "started.json").is_file():
                continue  # not recfl's: the run refuses it
            shutil.rmtree(target)
        shutil.copytree(source, target)


def _pooled_ab_stage(folders: dict[str, Path]) -> Stage:
    """``OUT/ab``: the seeds' arms compared pooled over the seeds; reruns when any seed's stages changed."""

    def settings(ctx: RunContext) -> dict:
        return {"ab": ctx.table(AbConfig, "ab"),
                "seeds": {label: (_read_json(f / "run.json") or {}).get("fingerprints") for label, f in folders.items()}}

    def run_pooled(ctx: RunContext, out: Path) -> dict:
        runs = {}
        for label, folder in folders.items():
            stages_ = _read_json(folder / "run.json")["stages"]
            predictions = read_predictions([folder / stages_[f"arm-{arm}"]["predictions"] for arm in ARMS])
            runs[label] = replace(predictions, sources={arm: f"{label}/{stages_[f'arm-{arm}']['predictions']}" for arm in ARMS})
        first = next(iter(folders.values()))
        data = PreparedDataset(first / _read_json(first / "run.json")["stages"]["data"]["data_dir"])
        return _ab_report(ctx, out, runs, data)

    return Stage("ab", settings, run_pooled)


def arm_predictions(folder: Path) -> list[Path]:
    """The arms' predictions files of a finished ``recfl run`` folder, as its ``run.json`` records them."""
    try:
        stages_ = (_read_json(folder / "run.json") or {}).get("stages", {})
    except (ValueError, AttributeError):
        raise RecflError(f"{folder}: run.json is not a recfl run record") from None
    missing = [arm for arm in ARMS if "predictions" not in stages_.get(f"arm-{arm}", {})]
    if missing:
        raise RecflError(f"{folder}: not a finished recfl run (run.json has no predictions of {', '.join(missing)})")
    return [folder / stages_[f"arm-{arm}"]["predictions"] for arm in ARMS]


def _write_record(ctx: RunContext, fingerprints: dict[str, str]) -> None:
    """``OUT/run.json``: the results of the stages finished so far (paths relative to ``OUT``) and every fingerprint."""
    write_json_atomic(ctx.out / "run.json", {"stages": ctx.results, "fingerprints": fingerprints,
                                             "paths": "relative to this folder"})


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _check_out(out: Path, pipeline: tuple[Stage, ...], plan: dict[str, tuple[str, dict]], force: bool) -> None:
    """Refuse an ``out`` that holds another run (unless ``force``) or stage folders recfl did not write."""
    if out.exists() and not out.is_dir():
        raise RecflError(f"--out {out}: exists and is not a folder")
    for stage in pipeline:
        for folder in (out / stage.name, *((out / (stage.name + PREVIOUS),) if stage.reuses else ())):
            if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / "started.json").is_file())):
                raise RecflError(f"--out {out}: {folder.name} was not written by recfl run; give a new or empty folder "
                                 "(recfl replaces only its own stage folders)")
    if "data" not in plan or force:
        return
    done = _read_json(out / "data" / "stage.json") or {}
    fingerprint, settings = plan["data"]
    results = any((out / stage.name / "stage.json").is_file() for stage in pipeline if stage.name != "data")
    if results and "settings" in done and done["fingerprint"] != fingerprint:  # (an earlier recfl recorded none)
        changes = "; ".join(islice(_differences(done["settings"], settings), 3))
        raise RecflError(f"--out {out} holds a run of another data set ({changes}): every stage of it would be "
                         "replaced; give another --out, or --force to replace it")


def _differences(old: dict, new: dict, prefix: str = ""):
    """``key: old -> new`` for each leaf that differs between two settings tables."""
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}: {_short(a)} -> {_short(b)}"


def _short(value) -> str:
    text = "unset" if value is None else "{...}" if isinstance(value, dict) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _drop_stale(folder: Path, fingerprint: str, recipe: str | None = None) -> None:
    """Before anything runs: a finished stage whose settings changed is unfinished now; another fingerprint's
    outputs go (a rerun would replace them anyway, and they must not outlive their settings if it stops early).

    With a ``recipe`` (a stage that reuses work), finished outputs whose recipe is ``recipe`` (only content
    changed) are moved to ``<stage>.previous`` instead, replacing older ones; kept outputs of another recipe go."""
    done = _read_json(folder / "stage.json")
    kept = folder.with_name(folder.name + PREVIOUS)
    if recipe is not None and done and done.get("fingerprint") != fingerprint and done.get("recipe") == recipe \
            and done.get("layout") == LAYOUT:
        shutil.rmtree(kept, ignore_errors=True)
        folder.rename(kept)  # atomic: a crash leaves either the finished stage or its kept copy
        shutil.rmtree(folder.parent / SUMMARIES / folder.name, ignore_errors=True)
        return
    if (_read_json(kept / "stage.json") or {}).get("recipe") != recipe:
        shutil.rmtree(kept, ignore_errors=True)
    if done and (done.get("fingerprint") != fingerprint or done.get("layout") != LAYOUT):
        (folder / "stage.json").unlink()
    started = _read_json(folder / "started.json")
    if started and started.get("fingerprint") != fingerprint:
        shutil.rmtree(folder)
        shutil.rmtree(folder.parent / SUMMARIES / folder.name, ignore_errors=True)


def _prepare_stage_dir(folder: Path, fingerprint: str, settings: dict) -> None:
    """Keep the partial outputs of an interrupted run of the same stage settings; otherwise start empty."""
    started = _read_json(folder / "started.json")
    if (started or {}).get("fingerprint") != fingerprint and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stage.json").unlink(missing_ok=True)
    write_json_atomic(folder / "started.json", {"fingerprint": fingerprint, "settings": settings})


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
