"""CoDA on the device, end to end: tune on a validation split carved from TRAIN, then every arm on test.

    python -m tools.coda_experiment --format movielens-100k --path ../shared/data/ml-100k --out runs/coda-ml100k

1. Prepare the source (per-user time split, 20% test) as ``OUT/test/data``, and
   carve a validation set from its *training* events only (each user's latest
   20% of train become validation "test" events) as ``OUT/val/data``.
2. For each split: the cloud pool (50% of users share), the cloud model trained
   on the sharing users only, and the device users' matched candidates (one
   directory per matching budget that the runs need).
3. Validation runs (:data:`VALIDATION`): each arm over a small grid plus probes
   of why CoDA does or does not help, all scored by the A/B harness (paired
   bootstrap over users) against the unchanged cloud model. For each arm the
   grid setting with the best validation gAUC is kept (:func:`select`).
4. Test: the four arms with their selected settings, then the A/B harness over
   the four predictions files with ``local`` as control, and again with
   ``coda-nofilter`` as control (does filtering help).

Writes ``OUT/results.json`` and ``OUT/results.md``; rerunning skips every run
whose predictions already exist. Nothing here reads a test event before step 4.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ab_testing.evaluate import AbConfig, evaluate
from ab_testing.predictions import from_frame
from cloud_pool.matching import MatchConfig, write_candidates
from cloud_pool.pool import build_pool
from device.personalize import personalize
from device.sample_filter import FilterConfig
from device.tflite_trainer import FinetuneConfig
from recfl.app.candidates import candidate_source
from recfl.core import config
from recfl.core.dataset import PreparedDataset, prepare
from recfl.core.formats import load
from recfl.core.formats.base import SourceData
from recfl.core.pool import load_split
from recfl.core.train import train_cloud_model

log = logging.getLogger("coda_experiment")

ARM_ORDER = ("cloud", "local", "coda-nofilter", "coda")


@dataclass(frozen=True)
class Run:
    """One personalize run: an arm, ``--set`` overrides, and the matching budget of its candidates."""

    arm: str
    sets: tuple[str, ...] = ()
    budget: float = 10.0
    purpose: str = "grid"  # grid: candidates for selection; probe: an investigation, never selected

    @property
    def name(self) -> str:
        """A readable file name: ``coda,ft.learning_rate=0.2,fl.features=item+history,budget=2.5``."""
        sets = [re.sub(r'[\[\]" ]', "", s).replace(",", "+").replace("finetune.", "ft.").replace("filter.", "fl.") for s in self.sets]
        return ",".join([self.arm, *sets] + ([f"budget={self.budget:g}"] if self.budget != 10.0 else []))


LRS = (0.05, 0.2, 0.5)
VALIDATION: tuple[Run, ...] = (
    Run("cloud"),
    *(Run("local", (f"finetune.learning_rate={lr}",)) for lr in LRS),
    *(Run("coda-nofilter", (f"finetune.learning_rate={lr}",)) for lr in LRS),
    *(Run("coda", (f"finetune.learning_rate={lr}", f"filter.keep_fraction={k}")) for lr in (0.05, 0.2) for k in (0.1, 0.25, 0.5)),
    # why (not): the matching budget, the classifier vs coarse similarity alone, the classifier's features, epochs
    *(Run("coda-nofilter", ("finetune.learning_rate=0.2",), budget=b, purpose="probe") for b in (1.0, 2.5, 5.0)),
    *(Run("coda", ("finetune.learning_rate=0.2", f"filter.keep_fraction={k}", "filter.min_local=1000000"), purpose="probe")
      for k in (0.1, 0.25)),  # every user takes the fallback: the top fraction by coarse similarity, no classifier
    Run("coda", ("finetune.learning_rate=0.2", 'filter.rule="threshold"', "filter.threshold=0.5"), purpose="probe"),
    Run("coda", ("finetune.learning_rate=0.2", "filter.keep_fraction=0.25",
                 'filter.features=["item","category","label","popularity","embedding","history"]'), purpose="probe"),
    Run("coda", ("finetune.learning_rate=0.2", "filter.keep_fraction=0.25",
                 'filter.features=["item","category","label","popularity","embedding","hour","weekday","behavior"]'),
        purpose="probe"),
    Run("local", ("finetune.learning_rate=0.2", "finetune.max_epochs=1"), purpose="probe"),
    Run("coda-nofilter", ("finetune.learning_rate=0.2", "finetune.max_epochs=1"), purpose="probe"),
)


def carve_validation(test_split: Path, out: Path):
    """A prepared data set from the training events of ``test_split`` alone, split the same way."""

    source = PreparedDataset(test_split)
    m = source.manifest
    carved = SourceData(f"{m['source']} (training events only)", str(source.root), m["label_rule"], source.train, source.items)
    return prepare(carved, out, source.settings)


def setup_split(root: Path, budgets: set[float]) -> None:
    """Pool, cloud model (sharing users only) and candidates per budget under ``root`` (skips what exists)."""

    data = PreparedDataset(root / "data")
    if not (root / "pool" / "pool.json").is_file():
        build_pool(data, root / "pool", 0.5)
    split = load_split(root / "pool")
    if not (root / "model" / "metrics.json").is_file():
        train_cloud_model(data, root / "model", progress=False, train_users=split.sharing_users, test_users=split.device_users)
    for budget in budgets:
        if not list((root / _cands(budget)).glob("shard-*.parquet")):
            write_candidates(root / "pool", data, root / _cands(budget), MatchConfig(budget_multiplier=budget), progress=False)


def _cands(budget: float) -> str:
    return f"candidates-x{budget:g}"


def personalize_run(root: Path, run: Run, workers: int) -> Path:
    """``recfl personalize`` for ``run`` on the split under ``root``; returns the predictions file."""

    out = root / "runs" / f"{run.name}.parquet"
    if out.is_file():
        return out
    doc = config.load(None, list(run.sets))
    data = PreparedDataset(root / "data")
    summary = personalize(data, root / "model", run.arm, out, root / "pool",
                          candidate_source(data, root / "pool", root / _cands(run.budget)), workers=workers, filter_config=config.section(FilterConfig, doc, "filter"),
                          finetune_config=config.section(FinetuneConfig, doc, "finetune"), progress=False)
    log.info("%s: gAUC %.4f in %.0f s", run.name, summary["metrics"]["gauc"], summary["seconds"])
    return out


def compare(files: dict[str, Path], control: str, bootstrap: int, metrics=("gauc",)) -> dict:
    """The A/B harness (paired bootstrap over users) on the named predictions files; arms renamed to the keys."""


    frame = pd.concat([pd.read_parquet(p).assign(arm=name) for name, p in files.items()], ignore_index=True)
    result = evaluate(from_frame(frame, "coda_experiment"), control, AbConfig(metrics=tuple(metrics), bootstrap=bootstrap))
    return result.to_json()


def select(runs: tuple[Run, ...], values: dict[str, float]) -> dict[str, Run]:
    """Per arm, the grid run with the highest validation gAUC."""
    best: dict[str, Run] = {}
    for run in runs:
        if run.purpose == "grid" and (run.arm not in best or values[run.name] > values[best[run.arm].name]):
            best[run.arm] = run
    return best


def _value_table(ab: dict, metric: str = "gauc") -> dict[str, dict]:
    rows = {v["arm"]: {"value": v["value"], "ci": v["ci"]} for v in ab["values"] if v["segment"] == "all" and v["metric"] == metric}
    for c in ab["comparisons"]:
        if c["segment"] == "all" and c["metric"] == metric:
            rows[c["treatment"]].update(lift=c["abs_lift"], lift_ci=c["abs_ci"], p=c["p_adjusted"], significant=c["significant"])
    return rows


def markdown(results: dict) -> str:
    """The README tables: test gAUC per arm with intervals and lifts, and the validation runs."""
    test = results["test"]
    lines = ["| arm (settings chosen on validation) | test gAUC [95% CI] | vs local [95% CI] | vs coda-nofilter [95% CI] |",
             "|---|---|---|---|"]
    for arm in ARM_ORDER:
        row, nf = test["vs_local"][arm], test["vs_nofilter"].get(arm, {})
        lift = lambda r: "control" if "lift" not in r else f"{r['lift']:+.4f} [{r['lift_ci'][0]:+.4f}, {r['lift_ci'][1]:+.4f}]"
        lines.append(f"| {arm} ({results['selected'][arm] or 'global model'}) | {row['value']:.4f} "
                     f"[{row['ci'][0]:.4f}, {row['ci'][1]:.4f}] | {lift(row)} | {lift(nf) if nf else '-'} |")
    lines += ["", "| validation run | val gAUC [95% CI] | vs cloud [95% CI] | purpose |", "|---|---|---|---|"]
    for name, row in results["validation"].items():
        lift = "" if "lift" not in row else f"{row['lift']:+.4f} [{row['lift_ci'][0]:+.4f}, {row['lift_ci'][1]:+.4f}]"
        lines.append(f"| {name} | {row['value']:.4f} [{row['ci'][0]:.4f}, {row['ci'][1]:.4f}] | {lift or 'control'} | {row['purpose']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", default="movielens-100k")
    parser.add_argument("--path", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    out: Path = args.out
    if not (out / "test" / "data" / "manifest.json").is_file():
        prepare(load(args.format, args.path), out / "test" / "data")
    if not (out / "val" / "data" / "manifest.json").is_file():
        carve_validation(out / "test" / "data", out / "val" / "data")

    setup_split(out / "val", {r.budget for r in VALIDATION})
    val_files = {run.name: personalize_run(out / "val", run, args.workers) for run in VALIDATION}
    validation = _value_table(compare(val_files, Run("cloud").name, args.bootstrap))
    for run in VALIDATION:
        validation[run.name]["purpose"] = run.purpose
    best = select(VALIDATION, {name: row["value"] for name, row in validation.items()})
    best["cloud"] = Run("cloud")

    setup_split(out / "test", {best[a].budget for a in ARM_ORDER})
    test_files = {arm: personalize_run(out / "test", best[arm], args.workers) for arm in ARM_ORDER}
    results = {
        "data": str(PreparedDataset(out / "test" / "data").root),
        "selected": {arm: ", ".join(best[arm].sets) for arm in ARM_ORDER},
        "validation": validation,
        "test": {"vs_local": _value_table(compare(test_files, "local", args.bootstrap)),
                 "vs_nofilter": _value_table(compare({a: test_files[a] for a in ("coda-nofilter", "coda")}, "coda-nofilter",
                                                     args.bootstrap)),
                 "files": {arm: str(p) for arm, p in test_files.items()}},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
