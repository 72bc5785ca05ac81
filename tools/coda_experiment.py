"""The CoDA experiment grid: variants of ``recfl run``, seed-pooled, tuned on validation, one results table.

    python -m tools.coda_experiment --grid configs/grids/coda-ml100k.toml --out runs/coda-grid [--split val-devices|val|test]

The grid file names the ``recfl run`` config, the seeds and the variants,
each a list of ``--set`` overrides (a variant with none is the defaults)::

    config = "configs/movielens-100k.toml"
    seeds = [0, 1, 2]
    set = []  # optional: overrides every variant shares, applied before its own
    [[variant]]
    name = "defaults"
    set = []
    [[variant]]
    name = "from the cloud model"
    set = ["run.personalize_from=cloud_model"]

Choosing among variants never reads a test event: every variant runs on a
validation set carved from the training events alone (:func:`carve_validation`).
``--split val-devices`` (the default) holds out the device users' latest
training events and nothing else: every sharing user keeps all of theirs, so
the pool, the cloud model and the candidates learn from the same events as on
test. Measured on MovieLens 100K and Amazon, it predicts test lifts better than
``--split val``, which holds out every user's latest training events (README,
"Does validation predict test?"). ``--split test`` runs the same grid on the
real split: run it once, for the variants validation chose. Each variant is ``recfl run --seeds``
(:func:`recfl.app.pipeline.run_seeds`) in ``OUT/SPLIT/VARIANT``; the first
variant's seed folders seed the others', so a variant reruns only the stages
whose settings it changes. Every arm is then compared with each control
(``cloud`` and ``local``) pooled over the seeds (a two-level bootstrap over
seeds and users, :func:`ab_testing.evaluate.evaluate_seeds`), and the table
goes to ``OUT/SPLIT/results.md`` and ``results.csv``. Once both splits have
run, ``OUT/validation-vs-test.md`` (``validation-devices-vs-test.md`` for
``val-devices``) says how well validation predicted test (:func:`agreement`):
the measurement behind trusting a validation choice. ``OUT/test-data`` is
prepared once and refused, not replaced, when the config's ``[data]`` changes;
one grid at a time writes ``OUT`` (:func:`recfl.core.locks.exclusive`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ab_testing.evaluate import AbConfig, evaluate_seeds
from ab_testing.predictions import read_predictions
from device.personalize import DEVICE_FILES
from recfl.app.pipeline import arm_predictions, run_seeds
from recfl.app.sections import SECTIONS, load_config
from recfl.core import config
from recfl.core.arms import CONTROL, LOCAL, names
from recfl.core.dataset import DataConfig, PreparedDataset, prepare, prepare_from_config, prepared_differences
from recfl.core.errors import RecflError, os_error_line
from recfl.core.formats.base import SourceData
from recfl.core.locks import exclusive
from recfl.core.pool import PoolConfig, assign_roles

log = logging.getLogger("coda_experiment")

CONTROLS = names((CONTROL, LOCAL))  # every arm is compared with each
VALIDATIONS = {"val-devices": "validation-devices-vs-test.md", "val": "validation-vs-test.md"}  # proxy: its report


@dataclass(frozen=True)
class Variant:
    """One grid point: a name and the ``--set`` overrides it applies to the run config."""

    name: str
    sets: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name)


@dataclass(frozen=True)
class Grid:
    """A grid file: the run config, the seeds and the variants."""

    config: Path | None
    seeds: tuple[int, ...]
    variants: tuple[Variant, ...]

    @classmethod
    def read(cls, path: Path) -> Grid:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RecflError(f"--grid {path}: {exc}") from None
        common = doc.get("set", [])  # overrides every variant shares, applied before its own
        if not isinstance(common, list) or not all(isinstance(c, str) for c in common):
            raise RecflError(f"--grid {path}: set must be a list of KEY=VALUE strings")
        variants = tuple(Variant(str(v["name"]), (*common, *v.get("set", ()))) for v in doc.get("variant", []))
        if not variants:
            raise RecflError(f"--grid {path}: no [[variant]] tables")
        if len({v.folder for v in variants}) != len(variants):
            raise RecflError(f"--grid {path}: two variants share a name")
        return cls(Path(doc["config"]) if "config" in doc else None, tuple(doc.get("seeds", (0, 1, 2))), variants)


def carve_validation(test_split: Path, out: Path, pool: PoolConfig | None = None) -> PreparedDataset:
    """A prepared data set from the training events of ``test_split`` alone, split the same way; with ``pool``, only
    the events of its device users are split (the held-out-users proxy), the others' all train."""
    source = PreparedDataset(test_split)
    m = source.manifest
    carved = SourceData(f"{m['source']} (training events only)", str(source.root), m["label_rule"], source.train, source.items)
    if pool is None:
        return prepare(carved, out, source.settings)
    holdout = assign_roles(source.train["user_id"].unique(), pool.share_fraction, pool.salt).device_users
    return prepare(carved, out, source.settings, {"holdout": holdout_roles(pool), "holdout_users": int(len(holdout))},
                   holdout)


def holdout_roles(pool: PoolConfig | None) -> dict | None:
    """What decides a carve's held-out users (recorded in its manifest): the device users of ``pool``'s roles."""
    return None if pool is None else {"users": "device", "share_fraction": pool.share_fraction, "salt": pool.salt}


def check_variants(grid: Grid) -> None:
    """Refuse a variant whose settings are invalid before anything runs (not after the variants before it)."""
    for variant in grid.variants:
        doc = load_config(grid.config, list(variant.sets))
        for name, cls in SECTIONS.items():
            config.section(cls, doc, name)


def split_data(grid: Grid, out: Path, split: str) -> Path:
    """The prepared data set the grid runs on: the run config's split, or validation carved from its training events
    (``val-devices``: only the device users', by the run config's ``[pool]`` roles)."""
    doc = load_config(grid.config)
    cfg, test = config.section(DataConfig, doc, "data"), out / "test-data"
    if not (test / "manifest.json").is_file():
        prepare_from_config(cfg, doc, test)
    else:  # the grid's earlier results stand on it: never replaced here
        try:
            changed = prepared_differences(PreparedDataset(test), cfg, doc)
        except RecflError as exc:
            raise RecflError(f"{exc} (here: delete {test} and run the grid again, or use another --out)") from None
        if changed:
            raise RecflError(f"{test} was prepared with other data settings than {grid.config} now has "
                             f"({'; '.join(changed)}); use another --out")
    if split == "test":
        return test
    pool = config.section(PoolConfig, doc, "pool") if split == "val-devices" else None
    for variant in grid.variants if pool is not None else ():
        if config.section(PoolConfig, load_config(grid.config, list(variant.sets)), "pool") != pool:
            raise RecflError(f"variant {variant.name!r} changes [pool], so its device users are not the ones "
                             "--split val-devices holds out; run it with --split val")
    val = out / f"{split}-data"
    if not (val / "manifest.json").is_file() or PreparedDataset(val).manifest.get("holdout") != holdout_roles(pool):
        carve_validation(test, val, pool)  # new, or carved under other [pool] roles than the config's now
    return val


def run_variant(grid: Grid, variant: Variant, data: Path, root: Path, first: Path | None) -> Path:
    """``recfl run --seeds`` of one variant in ``root/VARIANT``, starting from ``first``'s seed folders."""
    folder = root / variant.folder
    for seed in grid.seeds:
        mine, theirs = folder / f"seed-{seed}", (first / f"seed-{seed}") if first else None
        if theirs is not None and theirs.is_dir() and not mine.exists():
            partial = mine.with_name(f".{mine.name}.copying")  # renamed when whole: a kill mid-copy leaves no half folder
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(theirs, partial, copy_function=_link_device_files)  # unchanged stages are skipped
            partial.rename(mine)
    log.info("variant %r: %s", variant.name, ", ".join(variant.sets) or "defaults")
    run_seeds(folder, load_config(grid.config, list(variant.sets)), list(grid.seeds), data_dir=data)
    return folder


def _link_device_files(source: str, target: str) -> None:
    """Copy one file of a seed folder, but hard-link the devices' weights and row maps: they are most of a run's
    bytes (about 0.6 GB per variant on Amazon, 1.8 GB on Beauty as copies) and are only ever written whole, to new
    paths (a rerun arm starts a new folder and copies what it takes over), so a link is never written through."""
    if source.endswith(DEVICE_FILES):
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: a copy does the same
            pass
    shutil.copy2(source, target)


def compare(folder: Path, seeds: tuple[int, ...], control: str, metric: str, bootstrap: int) -> list[dict]:
    """Every arm of a variant against ``control``, pooled over its seeds: one row per arm."""
    runs = {f"seed-{s}": read_predictions(arm_predictions(folder / f"seed-{s}")) for s in seeds}
    result = evaluate_seeds(runs, control, AbConfig(metrics=(metric,), bootstrap=bootstrap))
    per_seed = {}
    for lift in result.seed_lifts:
        if lift.segment == "all" and lift.metric == metric:
            per_seed.setdefault(lift.treatment, []).append(lift.abs_lift)
    values = {v.arm: v.value for v in result.values if v.segment == "all" and v.metric == metric}
    users = {v.arm: v.users for v in result.values if v.segment == "all" and v.metric == metric}
    return [{"control": control, "arm": c.treatment, metric: values[c.treatment], "lift": c.lift.abs_lift,
             "ci_low": c.lift.abs_ci[0], "ci_high": c.lift.abs_ci[1], "per_seed": per_seed.get(c.treatment, []),
             "users": users[c.treatment]}
            for c in result.comparisons if c.segment == "all" and c.metric == metric]


def markdown(table: pd.DataFrame, metric: str, split: str, seeds: tuple[int, ...]) -> str:
    """The results table: per variant, arm and control, the pooled lift with its interval and each seed's lift."""
    lines = [f"{metric} on the {'test' if split == 'test' else 'validation'} split ({split}), mean over seeds "
             f"{', '.join(map(str, seeds))}; 95% two-level bootstrap interval over seeds and users.", "",
             f"| variant | arm | {metric} | vs | lift [95% CI] | per seed | users |", "|---|---|---|---|---|---|---|"]
    for row in table.to_dict("records"):  # (not itertuples: a metric such as hr@10 is no attribute name)
        seeds_ = " / ".join(f"{x:+.4f}" for x in row["per_seed"])
        lines.append(f"| {row['variant']} | {row['arm']} | {row[metric]:.4f} | {row['control']} | "
                     f"{row['lift']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] | {seeds_} | {row['users']} |")
    return "\n".join(lines) + "\n"


def read_results(path: Path) -> pd.DataFrame:
    """A ``results.csv`` this tool wrote, checked: the keys of a lift and a numeric lift in every row."""
    try:
        table = pd.read_csv(path, dtype={"variant": str, "control": str, "arm": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise RecflError(f"{path}: {exc}") from None
    missing = sorted({"variant", "control", "arm", "lift"} - set(table.columns))
    if missing:
        raise RecflError(f"{path}: not a results table (no {', '.join(missing)} column)")
    lift = pd.to_numeric(table["lift"], errors="coerce")
    if lift.isna().any():
        raise RecflError(f"{path}: row {int(lift.isna().to_numpy().argmax()) + 2} has no numeric lift")
    return table.assign(lift=lift)


def agreement(val: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How well validation lifts predict test lifts: the matched lifts, and per control their Pearson and Spearman
    correlation, the least-squares slope of test on validation and how often the signs agree.

    An arm a variant does not change (the federated models, ``local`` under a filter setting) has the same lifts in
    every variant; it is counted once, so repeats do not inflate the correlation. A control against the other
    (``cloud`` vs ``local``) mirrors a lift already counted and is left out."""
    keys = ["control", "arm", "variant"]
    pairs = val[keys + ["lift"]].merge(test[keys + ["lift"]], on=keys, suffixes=("_val", "_test"))
    mirror = [a in CONTROLS and CONTROLS.index(a) < CONTROLS.index(c) for a, c in zip(pairs["arm"], pairs["control"])]
    pairs = pairs[~np.array(mirror, bool)]
    pairs = pairs.drop_duplicates(["control", "arm", "lift_val", "lift_test"]).reset_index(drop=True)
    stats = []
    for control, group in pairs.groupby("control", sort=True):
        x, y = group["lift_val"], group["lift_test"]
        varied = len(group) >= 3 and x.std() > 0 and y.std() > 0
        stats.append({"control": control, "lifts": len(group),
                      "pearson": x.corr(y) if varied else float("nan"),
                      "spearman": x.corr(y, method="spearman") if varied else float("nan"),
                      "slope": x.cov(y) / x.var() if varied else float("nan"),  # least squares of test on validation
                      "sign_agrees": int((np.sign(x) == np.sign(y)).sum())})
    return pairs, pd.DataFrame(stats)


def agreement_markdown(pairs: pd.DataFrame, stats: pd.DataFrame, metric: str) -> str:
    """The comparison of both splits: one line per control, then every matched lift."""
    lines = [f"Validation vs test, {metric} lifts (each distinct pair of lifts once).", "",
             "| vs | lifts | Pearson r | Spearman | slope (test on validation) | sign agrees |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['control']} | {r['lifts']} | {r['pearson']:+.2f} | {r['spearman']:+.2f} | {r['slope']:+.2f} | "
              f"{r['sign_agrees']} of {r['lifts']} |" for r in stats.to_dict("records")]
    lines += ["", "| variant | arm | vs | validation | test |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['arm']} | {r['control']} | {r['lift_val']:+.4f} | {r['lift_test']:+.4f} |"
              for r in pairs.to_dict("records")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.coda_experiment", description=__doc__.splitlines()[0])
    parser.add_argument("--grid", required=True, type=Path, help="the grid file (see the module docstring)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--split", choices=(*VALIDATIONS, "test"), default="val-devices",
                        help="val-devices (default): the device users' latest training events are the validation "
                             "targets; val: every user's latest training events; test: the real split")
    parser.add_argument("--metric", default="gauc", help="the metric of the table (default gauc)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        run_grid(args)
    except RecflError as exc:
        print(f"coda_experiment: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine stops the grid (a full disk, say): one line; a rerun resumes
        print(f"coda_experiment: error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    return 0


def run_grid(args: argparse.Namespace) -> None:
    """Every variant of the grid on ``args.split``, its table, and each validation-vs-test comparison both splits allow."""
    grid = Grid.read(args.grid)
    check_variants(grid)
    with exclusive(args.out, "coda_experiment"):
        _run_grid(grid, args)


def _run_grid(grid: Grid, args: argparse.Namespace) -> None:
    data = split_data(grid, args.out, args.split)
    root, first, rows = args.out / args.split, None, []
    for variant in grid.variants:
        folder = run_variant(grid, variant, data, root, first)
        first = first or folder
        for control in CONTROLS:
            rows += [{"variant": variant.name, **row}
                     for row in compare(folder, grid.seeds, control, args.metric, args.bootstrap)]
    table = pd.DataFrame(rows)
    table.assign(per_seed=table["per_seed"].map(lambda xs: " ".join(f"{x:.6f}" for x in xs))).to_csv(
        root / "results.csv", index=False)
    text = markdown(table, args.metric, args.split, grid.seeds)
    (root / "results.md").write_text(text)
    print(text)
    for validation, report in VALIDATIONS.items():  # each validation that ran beside test: how well did it predict?
        if args.split not in (validation, "test"):
            continue
        other = args.out / ("test" if args.split == validation else validation) / "results.csv"
        if not other.is_file():
            continue
        try:
            theirs = read_results(other)
        except RecflError as exc:  # this split's table stands; only the comparison is skipped
            print(f"coda_experiment: no {validation}-vs-test comparison: {exc}", file=sys.stderr)
            continue
        val, test = (table, theirs) if args.split == validation else (theirs, table)
        text = agreement_markdown(*agreement(val, test), args.metric)
        (args.out / report).write_text(text)
        print(text)

if __name__ == "__main__":
    sys.exit(main())
