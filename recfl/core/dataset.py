"""The prepared data set directory that every stage reads.

Layout (``manifest.json`` is written last, so its presence means complete)::

    DIR/train.parquet, DIR/test.parquet   canonical events (recfl.core.schema)
    DIR/items.parquet                     item_id, categories (list<int64>)
    DIR/vocab/items.parquet               fitted on train only
    DIR/vocab/categories.parquet          fitted on train only
    DIR/manifest.json                     source, counts, split rule, seed, ...
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recfl import __version__
from recfl.core import config
from recfl.core.atomic import write_json_atomic
from recfl.core.config import check_limits
from recfl.core.errors import RecflError
from recfl.core.formats import SourceData, SyntheticSpec, load
from recfl.core.split import SPLIT_RULE, split_by_time
from recfl.core.vocab import Vocabulary

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` config section: which source to prepare and how to split it."""

    format: str = "synthetic"
    path: str | None = None
    test_fraction: float = 0.2
    min_count: int = 1
    seed: int = 0

    def __post_init__(self):
        check_limits(self, "data", test_fraction="(0, 1)", min_count=">= 1")


def describe_events(events: pd.DataFrame) -> dict:
    """Counts a person checks first: rows, users, items, positives, time range."""
    return {
        "rows": int(len(events)),
        "users": int(events["user_id"].nunique()),
        "items": int(events["item_id"].nunique()),
        "positives": int(events["label"].sum()),
        "min_timestamp": int(events["timestamp"].min()) if len(events) else None,
        "max_timestamp": int(events["timestamp"].max()) if len(events) else None,
    }


def describe(data: SourceData) -> dict:
    """One JSON-able summary of a loaded source."""
    stats = describe_events(data.events)
    stats.update(
        format=data.source,
        path=data.path,
        categories=int(data.events.loc[data.events["category_id"] >= 0, "category_id"].nunique()),
        label_rule=data.label_rule,
        dropped=data.dropped,
    )
    return stats


def prepare(data: SourceData, out: Path, test_fraction: float = 0.2, seed: int = 0, min_count: int = 1,
            extra: dict | None = None) -> "PreparedDataset":
    """Split ``data`` by time per user, fit vocabularies on train, and write the directory."""
    if len(data.events) == 0:
        raise RecflError(f"{data.path}: no events to prepare")
    out = Path(out)
    (out / "vocab").mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    train, test = split_by_time(data.events, test_fraction)
    item_vocab = Vocabulary.fit(train["item_id"].to_numpy(), min_count)
    items = data.items[data.items["item_id"].isin(pd.concat([train["item_id"], test["item_id"]]).unique())]
    train_items = items[items["item_id"].isin(train["item_id"].unique())]
    cats = np.concatenate([np.asarray(c, dtype=np.int64) for c in train_items["categories"]] or [np.array([], np.int64)])
    cat_vocab = Vocabulary.fit(cats, 1)
    train.to_parquet(out / "train.parquet", index=False)
    test.to_parquet(out / "test.parquet", index=False)
    items.reset_index(drop=True).to_parquet(out / "items.parquet", index=False)
    item_vocab.save(out / "vocab" / "items.parquet")
    cat_vocab.save(out / "vocab" / "categories.parquet")
    manifest = {
        "recfl_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "source": data.source,
        "path": data.path,
        "label_rule": data.label_rule,
        "split_rule": SPLIT_RULE,
        "test_fraction": test_fraction,
        "seed": seed,
        "min_count": min_count,
        "dropped": data.dropped,
        "train": describe_events(train),
        "test": describe_events(test),
        "vocab": {"items": item_vocab.size, "categories": cat_vocab.size},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    write_json_atomic(out / "manifest.json", manifest)
    return PreparedDataset(out)


def prepare_from_config(cfg: DataConfig, doc: dict, out: Path) -> "PreparedDataset":
    """Load the configured source (``[synthetic]`` sizes for the generator, seeded by ``data.seed``) and prepare it."""
    spec = config.section(SyntheticSpec, doc, "synthetic", seed=cfg.seed)
    extra = {"synthetic": config.as_table(spec)} if cfg.format == "synthetic" else {}
    return prepare(load(cfg.format, cfg.path, spec), Path(out), cfg.test_fraction, cfg.seed, cfg.min_count, extra)


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet table of a prepared directory; a missing or damaged file is one clear error."""
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise RecflError(f"{path}: missing from the prepared data set; prepare it again") from None
    except (pa.ArrowException, OSError) as exc:
        raise RecflError(f"{path}: not a readable Parquet file ({exc}); prepare the data set again") from None


@dataclass(frozen=True)
class PreparedDataset:
    """Read access to a prepared directory; tables load lazily and once."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))
        if not (self.root / "manifest.json").is_file():
            raise RecflError(f"{self.root}: not a prepared data set (no manifest.json); run `recfl data prepare` or `recfl data synth`")

    @cached_property
    def manifest(self) -> dict:
        path = self.root / "manifest.json"
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecflError(f"{path}: damaged manifest ({exc}); prepare the data set again") from None

    @cached_property
    def train(self) -> pd.DataFrame:
        return read_table(self.root / "train.parquet")

    @cached_property
    def test(self) -> pd.DataFrame:
        return read_table(self.root / "test.parquet")

    @cached_property
    def items(self) -> pd.DataFrame:
        return read_table(self.root / "items.parquet")

    @cached_property
    def item_vocab(self) -> Vocabulary:
        return Vocabulary.load(self.root / "vocab" / "items.parquet")

    @cached_property
    def category_vocab(self) -> Vocabulary:
        return Vocabulary.load(self.root / "vocab" / "categories.parquet")


__all__ = ["PreparedDataset", "describe", "describe_events", "prepare"]
