"""The prepared data set directory that every stage reads.

Layout (``manifest.json`` is written last, so its presence means complete)::

    DIR/train.parquet, DIR/test.parquet   events in the split layout (recfl.core.schema.SPLIT_COLUMNS)
    DIR/items.parquet                     item_id, categories (list<int64>)
    DIR/vocab/items.parquet               fitted on train only
    DIR/vocab/categories.parquet          fitted on train only
    DIR/manifest.json                     source, counts, split and negative-sampling rules, seed, ...

Preparing: users with fewer than ``min_user_events`` events are dropped, each
user's events are split by time (:mod:`recfl.core.split`), vocabularies are
fit on train, and with ``negatives = N`` every test positive gets N sampled
negatives (:mod:`recfl.core.negatives`, stream ``"test"``), stored in
``test.parquet`` with ``sampled = True`` so that every arm scores exactly the
same events. Training negatives are not stored: the manifest records how many
per positive the trainers draw (``train_negatives``) and
:attr:`PreparedDataset.negative_sampler` draws them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recfl import __version__
from recfl.core import config
from recfl.core.atomic import write_json_atomic
from recfl.core.config import check_limits
from recfl.core.errors import RecflError
from recfl.core.formats import SourceData, SyntheticSpec, load
from recfl.core.negatives import SAMPLINGS, TEST_STREAM, NegativeSampler
from recfl.core.schema import SAMPLED, SPLIT_COLUMNS, marked
from recfl.core.split import LEAVE_ONE_OUT, SPLIT_RULES, SPLITS, split_events
from recfl.core.tables import read_table
from recfl.core.vocab import Vocabulary

SCHEMA_VERSION = 2  # 2: train/test carry the ``sampled`` marker; the manifest records split and negatives
NEGATIVE_RULE = (
    "per test positive, `test_per_positive` items the user has no event with (in train or test), drawn "
    "{sampling} from the items with a training vocabulary row, distinct per (user, timestamp), seeded by "
    "(seed, stream, user); stored in test.parquet with sampled = true. Trainers draw `train_per_positive` "
    "per training positive the same way, per epoch / round / device (PreparedDataset.negative_sampler)"
)


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` config section: which source to prepare, how to split it and which negatives to sample."""

    format: str = "synthetic"
    path: str | None = None
    split: str = "time_fraction"  # time_fraction | leave_one_out
    test_fraction: float = 0.2  # time_fraction: share of each user's latest events held out
    min_count: int = 1
    min_user_events: int = 1  # users with fewer events are dropped before the split
    negatives: int = 0  # sampled negatives per test positive, stored in test.parquet
    negative_sampling: str = "uniform"  # uniform | popularity (training events per item)
    train_negatives: int = 0  # sampled negatives per training positive the trainers draw
    seed: int = 0

    def __post_init__(self):
        check_limits(self, "data", test_fraction="(0, 1)", min_count=">= 1", min_user_events=">= 1",
                     negatives=">= 0", train_negatives=">= 0")
        for key, allowed in (("split", SPLITS), ("negative_sampling", SAMPLINGS)):
            if getattr(self, key) not in allowed:
                raise RecflError(f"config: data.{key} = {getattr(self, key)!r} must be one of {', '.join(allowed)}")
        if self.split == LEAVE_ONE_OUT and self.negatives == 0:
            raise RecflError("config: data.split = 'leave_one_out' needs data.negatives >= 1: the test positive is "
                             "ranked against sampled negatives (the published protocol uses 99)")


def describe_events(events: pd.DataFrame) -> dict:
    """Counts a person checks first: rows, users, items, positives, time range (and sampled negatives)."""
    stats = {
        "rows": int(len(events)),
        "users": int(events["user_id"].nunique()),
        "items": int(events["item_id"].nunique()),
        "positives": int(events["label"].sum()),
        "min_timestamp": int(events["timestamp"].min()) if len(events) else None,
        "max_timestamp": int(events["timestamp"].max()) if len(events) else None,
    }
    if SAMPLED in events.columns:
        stats["sampled"] = int(events[SAMPLED].sum())
    return stats


def describe(data: SourceData) -> dict:
    """One JSON-able summary of a loaded source."""
    stats = describe_events(data.events)
    stats.update(
        format=data.source,
        path=data.path,
        categories=int(data.events.loc[data.events["category_id"] >= 0, "category_id"].nunique()),
        label_rule=data.label_rule,
        time_rule=data.time_rule,
        dropped=data.dropped,
    )
    return stats


@dataclass
class PreparedSplit:
    """A prepared data set in memory: what :func:`prepare` writes (and ``recfl data describe`` counts)."""

    train: pd.DataFrame
    test: pd.DataFrame
    items: pd.DataFrame
    item_vocab: Vocabulary
    category_vocab: Vocabulary
    sampler: NegativeSampler
    manifest: dict


def split_source(data: SourceData, cfg: DataConfig = DataConfig(), holdout: np.ndarray | None = None) -> PreparedSplit:
    """Drop users below ``min_user_events``, split (only ``holdout``'s users, if given: :func:`split_events`), fit
    vocabularies on train, sample the test negatives."""
    if len(data.events) == 0:
        raise RecflError(f"{data.path}: no events to prepare")
    dropped = dict(data.dropped)
    events = data.events
    if cfg.min_user_events > 1:
        keep = events.groupby("user_id")["user_id"].transform("size").to_numpy() >= cfg.min_user_events
        if not keep.all():
            dropped["users_below_min_user_events"] = int((~keep).sum())
            events = events.loc[keep]
        if not len(events):
            raise RecflError(f"{data.path}: no user has data.min_user_events = {cfg.min_user_events} events")
    split = split_events(events, cfg.split, cfg.test_fraction, holdout)
    if split.dropped:
        dropped["after_test_positive"] = split.dropped
    train, test = marked(split.train), marked(split.test)
    item_vocab = Vocabulary.fit(train["item_id"].to_numpy(), cfg.min_count)

    def sampler_of(test: pd.DataFrame) -> NegativeSampler:
        return NegativeSampler(pd.concat([train, test])[["user_id", "item_id"]], item_vocab, data.items,
                               cfg.negative_sampling, cfg.seed)

    sampler = sampler_of(test)
    negatives = sampler.sample(test[test["label"] == 1], cfg.negatives, TEST_STREAM, "data.negatives")
    if len(negatives):  # each positive's timestamp: the real events first, then the sampled ones
        test = pd.concat([test, negatives], ignore_index=True)
        order = np.lexsort((test[SAMPLED].to_numpy(), test["timestamp"].to_numpy(), test["user_id"].to_numpy()))
        test = test.iloc[order].reset_index(drop=True)
        sampler = sampler_of(test)  # the trainers' rule: never a test item, sampled ones included
    items = data.items[data.items["item_id"].isin(pd.concat([train["item_id"], test["item_id"]]).unique())]
    train_items = items[items["item_id"].isin(train["item_id"].unique())]
    cats = np.concatenate([np.asarray(c, dtype=np.int64) for c in train_items["categories"]] or [np.array([], np.int64)])
    cat_vocab = Vocabulary.fit(cats, 1)
    manifest = {
        "source": data.source,
        "path": data.path,
        "label_rule": data.label_rule,
        "time_rule": data.time_rule,
        "split": cfg.split,
        "split_rule": SPLIT_RULES[cfg.split],
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "min_count": cfg.min_count,
        "min_user_events": cfg.min_user_events,
        "negatives": {
            "test_per_positive": cfg.negatives,
            "train_per_positive": cfg.train_negatives,
            "sampling": cfg.negative_sampling,
            "seed": cfg.seed,
            "universe_items": sampler.size,
            "rule": NEGATIVE_RULE.format(sampling="uniformly" if cfg.negative_sampling == "uniform"
                                         else "in proportion to their training events"),
        },
        "dropped": dropped,
        "train": describe_events(train),
        "test": describe_events(test),
        "vocab": {"items": item_vocab.size, "categories": cat_vocab.size},
    }
    return PreparedSplit(train, test, items.reset_index(drop=True), item_vocab, cat_vocab, sampler, manifest)


def check_training_rule(prepared: PreparedSplit, cfg: DataConfig) -> None:
    """The trainers can follow the manifest: negatives to learn from, and room for ``train_negatives`` of them."""
    train = prepared.train
    if cfg.train_negatives == 0 and len(train) and (train["label"] == 1).all():
        raise RecflError("every training event is a positive, so a model cannot learn to rank: set "
                         "data.train_negatives >= 1 (sampled negatives per training positive; NCF uses 4)")
    prepared.sampler.check_capacity(train[train["label"] == 1], cfg.train_negatives, "data.train_negatives")


def prepare(data: SourceData, out: Path, cfg: DataConfig = DataConfig(), extra: dict | None = None,
            holdout: np.ndarray | None = None) -> "PreparedDataset":
    """Split ``data`` under ``cfg`` (see :func:`split_source`) and write the prepared directory ``out``."""
    prepared = split_source(data, cfg, holdout)
    check_training_rule(prepared, cfg)
    out = Path(out)
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    prepared.train.to_parquet(out / "train.parquet", index=False)
    prepared.test.to_parquet(out / "test.parquet", index=False)
    prepared.items.to_parquet(out / "items.parquet", index=False)
    prepared.item_vocab.save(out / "vocab" / "items.parquet")
    prepared.category_vocab.save(out / "vocab" / "categories.parquet")
    manifest = {
        "recfl_version": __version__,
        "schema_version": SCHEMA_VERSION,
        **prepared.manifest,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    write_json_atomic(out / "manifest.json", manifest)
    return PreparedDataset(out)


def load_from_config(cfg: DataConfig, doc: dict) -> tuple[SourceData, dict]:
    """The configured source (``[synthetic]`` sizes for the generator, seeded by ``data.seed``) and its manifest extras."""
    return load(cfg.format, cfg.path, _synthetic_spec(cfg, doc)), manifest_extras(cfg, doc)


def _synthetic_spec(cfg: DataConfig, doc: dict) -> SyntheticSpec:
    return config.section(SyntheticSpec, doc, "synthetic", seed=cfg.seed)


def manifest_extras(cfg: DataConfig, doc: dict) -> dict:
    """What a prepared set's manifest records beyond ``[data]``: the generator's sizes for synthetic data."""
    return {"synthetic": config.as_table(_synthetic_spec(cfg, doc))} if cfg.format == "synthetic" else {}


def prepared_differences(prepared: "PreparedDataset", cfg: DataConfig, doc: dict) -> list[str]:
    """How ``prepared`` differs from what ``cfg`` (and ``doc``'s ``[synthetic]``) would prepare, one
    ``key: had -> wants`` per setting; empty when it is the same split of the same source."""
    had = prepared.settings
    moot = {"path"}  # compared as places below; a synthetic set's "path" is its sizes, compared with the extras
    if had.split == cfg.split == LEAVE_ONE_OUT:
        moot.add("test_fraction")  # leave-one-out does not read it
    out = [f"data.{f.name}: {getattr(had, f.name)!r} -> {getattr(cfg, f.name)!r}" for f in fields(DataConfig)
           if f.name not in moot and getattr(had, f.name) != getattr(cfg, f.name)]
    if cfg.format != "synthetic" and not _same_place(had.path, cfg.path):
        out.append(f"data.path: {had.path!r} -> {cfg.path!r}")
    return out + [f"{key}: {prepared.manifest.get(key)!r} -> {value!r}"
                  for key, value in manifest_extras(cfg, doc).items() if prepared.manifest.get(key) != value]


def _same_place(recorded: str | None, configured: str | None) -> bool:
    """Whether a configured source path names what a prepared set recorded: a loader records the path it read,
    normalised, and a folder format (MovieLens) the folder of a file it was given."""
    if recorded is None or configured is None:
        return recorded == configured
    was, now = Path(recorded).resolve(), Path(configured).resolve()
    return was == now or (now.is_file() and now.parent == was)


def prepare_from_config(cfg: DataConfig, doc: dict, out: Path) -> "PreparedDataset":
    """Load the configured source and prepare it."""
    source, extra = load_from_config(cfg, doc)
    return prepare(source, Path(out), cfg, extra)


PREPARED_FILES = ("train.parquet", "test.parquet", "items.parquet", "vocab/items.parquet", "vocab/categories.parquet")


@dataclass(frozen=True)
class PreparedDataset:
    """Read access to a prepared directory; tables load lazily and once."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))
        if not (self.root / "manifest.json").is_file():
            raise RecflError(f"{self.root}: not a prepared data set (no manifest.json); run `recfl data prepare` or `recfl data synth`")
        missing = [name for name in PREPARED_FILES if not (self.root / name).is_file()]
        if missing:
            raise RecflError(f"{self.root}: incomplete prepared data set ({', '.join(missing)} missing); prepare it again")

    @cached_property
    def manifest(self) -> dict:
        path = self.root / "manifest.json"
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecflError(f"{path}: damaged manifest ({exc}); prepare the data set again") from None

    @cached_property
    def train(self) -> pd.DataFrame:
        return marked(read_table(self.root / "train.parquet"))

    @cached_property
    def test(self) -> pd.DataFrame:
        return marked(read_table(self.root / "test.parquet"))

    @cached_property
    def items(self) -> pd.DataFrame:
        return read_table(self.root / "items.parquet")

    @cached_property
    def item_vocab(self) -> Vocabulary:
        return Vocabulary.load(self.root / "vocab" / "items.parquet", "prepare the data set again")

    @cached_property
    def category_vocab(self) -> Vocabulary:
        return Vocabulary.load(self.root / "vocab" / "categories.parquet", "prepare the data set again")

    @property
    def negatives(self) -> dict:
        """The manifest's negative-sampling rule (none for sets prepared before schema version 2)."""
        return self.manifest.get("negatives", {"test_per_positive": 0, "train_per_positive": 0, "sampling": "uniform",
                                               "seed": self.manifest.get("seed", 0)})

    @property
    def settings(self) -> DataConfig:
        """The ``[data]`` settings this set was prepared with; ``prepare(source, out, settings)`` splits any
        other events the same way (e.g. a validation split carved from this set's training events)."""
        try:
            m, rule = self.manifest, self.negatives
            return DataConfig(format=m["source"], path=m["path"], split=m.get("split", "time_fraction"),
                              test_fraction=m["test_fraction"], min_count=m["min_count"],
                              min_user_events=m.get("min_user_events", 1), negatives=rule["test_per_positive"],
                              negative_sampling=rule["sampling"], train_negatives=rule["train_per_positive"],
                              seed=m["seed"])
        except (KeyError, TypeError, AttributeError, ValueError, RecflError) as exc:  # edited or from elsewhere
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RecflError(f"{self.root / 'manifest.json'}: damaged manifest ({detail}); prepare the data set again") from None

    @property
    def train_negatives(self) -> int:
        """Sampled negatives per training positive that every trainer draws (``[data] train_negatives``)."""
        return int(self.negatives["train_per_positive"])

    @cached_property
    def negative_sampler(self) -> NegativeSampler:
        """The sampler of this set's rule: never an item the user has an event with in train or test.

        A trainer draws ``negative_sampler.sample(positives, train_negatives, stream)`` with a
        stream per pass, e.g. ``("cloud", epoch)``, ``("federated", round)``, ``("device", 0)``.
        """
        events = pd.concat([self.train[["user_id", "item_id"]], self.test[["user_id", "item_id"]]])
        rule = self.negatives
        return NegativeSampler(events, self.item_vocab, self.items, rule["sampling"], rule["seed"])

    def with_training_negatives(self, events: pd.DataFrame, stream) -> pd.DataFrame:
        """``events`` plus ``train_negatives`` sampled negatives per positive among them (drawn for the user of
        each positive, on ``stream``; columns beyond the split layout, such as a candidate's target user, are
        copied from the positive); ``events`` unchanged when the set's rule draws none."""
        positives = events[events["label"] == 1].sort_values(["user_id", "timestamp"], kind="stable")
        n = self.train_negatives
        if n == 0 or not len(positives):
            return events
        negatives = self.negative_sampler.sample(positives, n, stream, "data.train_negatives")[list(SPLIT_COLUMNS)]
        context = [c for c in events.columns if c not in SPLIT_COLUMNS]  # blocks of n follow the sorted positives
        negatives = negatives.assign(**{c: np.repeat(positives[c].to_numpy(), n) for c in context})
        return pd.concat([marked(events), negatives], ignore_index=True)


__all__ = ["DataConfig", "PreparedDataset", "PreparedSplit", "describe", "describe_events", "prepare", "split_source"]
