"""The canonical event/sample table every stage reads and writes.

One row per behaviour event (an exposure with its outcome):

========== ======= ==========================================================
column     dtype   meaning
========== ======= ==========================================================
event_id   string  unique and stable across re-reads; writes are idempotent on it
user_id    int64   user id (string ids of a source are hashed, see stable_id)
item_id    int64   item id (same rule)
category_id int64  primary category of the item, -1 when the source has none
label      int8    1 = positive (click / high rating / cart-fav-buy), 0 = not
timestamp  int64   unix seconds
behavior   string  optional raw behaviour ("pv", "buy", "rating:4", ...)
========== ======= ==========================================================

Items may carry several categories (MovieLens genres); those live in the
item table (``item_id``, ``categories`` as a list of int64), the first one is
also the event's ``category_id``.

A prepared split (``train.parquet``, ``test.parquet``) adds one column,
``sampled`` (bool): True for a **sampled negative** (an item the user never
interacted with, drawn by :mod:`recfl.core.negatives`: label 0, the
timestamp of the positive it was drawn for, behavior null, event id
``sampled:`` + 16 hex digits of a hash of (user, item, timestamp)), False
for an event of the source.
Predictions files carry the same column after the six they require, so a
report can tell sampled from real negatives; readers that need only the six
(the A/B harness) ignore it. Streams and the cloud pool never hold sampled
events: they keep the canonical columns.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

EVENT_COLUMNS: dict[str, str] = {
    "event_id": "string",
    "user_id": "int64",
    "item_id": "int64",
    "category_id": "int64",
    "label": "int8",
    "timestamp": "int64",
    "behavior": "string",
}
REQUIRED_COLUMNS = ("event_id", "user_id", "item_id", "category_id", "label", "timestamp")
SAMPLED = "sampled"
# The events of a prepared split: the canonical columns plus the sampled-negative marker.
SPLIT_COLUMNS: dict[str, str] = {**EVENT_COLUMNS, SAMPLED: "bool"}
SAMPLED_ID_PREFIX = "sampled:"
# A predictions file (what a scorer writes and the A/B harness reads): one row per
# scored test event, ``score`` a click probability in [0, 1], ``arm`` the scorer's name;
# recfl's scorers add ``sampled`` (PREDICTION_MARKER), which readers may ignore.
PREDICTION_COLUMNS: dict[str, str] = {
    "user_id": "int64",
    "item_id": "int64",
    "label": "int8",
    "score": "float64",
    "timestamp": "int64",
    "arm": "string",
}
PREDICTION_MARKER: dict[str, str] = {SAMPLED: "bool"}
NO_CATEGORY = -1
# 1990-01-01 .. 2100-01-01: anything outside is a corrupt timestamp, not an event.
MIN_TIMESTAMP = 631_152_000
MAX_TIMESTAMP = 4_102_444_800


def stable_id(text: str) -> int:
    """Map a string id to a non-negative int64 that is the same in every run."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def stable_ids(values: list[str]) -> np.ndarray:
    """:func:`stable_id` of each string, as an int64 array."""
    return np.fromiter(map(stable_id, values), dtype=np.int64, count=len(values))


def unit_hash(user_ids: np.ndarray, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per user id from blake2b(salt:id): the same on every platform and run."""
    ids = np.asarray(user_ids, dtype=np.int64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    key = salt.encode() + b":"
    words = np.fromiter(
        (int.from_bytes(hashlib.blake2b(key + str(u).encode(), digest_size=8).digest(), "big") >> 11 for u in uniq.tolist()),
        dtype=np.int64, count=len(uniq),
    )
    return (words.astype(np.float64) / float(1 << 53))[inverse]


def predictions_table(events: pd.DataFrame, scores: np.ndarray, arm: str) -> pd.DataFrame:
    """The predictions file of ``arm``: ``events``' ids, label, timestamp and sampled marker with their ``scores``."""
    out = marked(events)[["user_id", "item_id", "label", "timestamp", SAMPLED]].reset_index(drop=True)
    out["score"] = np.asarray(scores, dtype=np.float64)
    out["arm"] = arm
    columns = {**PREDICTION_COLUMNS, **PREDICTION_MARKER}
    return out[list(columns)].astype(columns)


def assign_event_ids(events: pd.DataFrame, source: str) -> pd.DataFrame:
    """Set ``event_id`` from the event's content, so replays and overlapping files dedupe.

    The id hashes (source, user, item, category, behavior, timestamp); identical
    rows (a user viewing an item twice in one second) get ``#1``, ``#2`` suffixes
    in file order, so they stay distinct events.
    """
    keys = (
        source + "|" + events["user_id"].astype(str) + "|" + events["item_id"].astype(str) + "|"
        + events["category_id"].astype(str) + "|" + events["behavior"].astype(str) + "|" + events["timestamp"].astype(str)
    )
    digests = pd.Series([hashlib.blake2b(k.encode(), digest_size=8).hexdigest() for k in keys], index=events.index)
    rank = digests.groupby(digests).cumcount()
    ids = source + ":" + digests
    ids = ids.where(rank == 0, ids + "#" + rank.astype(str))
    return events.assign(event_id=ids.astype("string"))


def conform(events: pd.DataFrame) -> pd.DataFrame:
    """Return ``events`` with exactly the canonical columns and dtypes, in order."""
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"event table lacks columns {missing}")
    data = {
        c: events[c].to_numpy() if c in events.columns else np.full(len(events), None, dtype=object)
        for c in EVENT_COLUMNS
    }
    return pd.DataFrame(data).astype(EVENT_COLUMNS)


def marked(events: pd.DataFrame) -> pd.DataFrame:
    """``events`` with the ``sampled`` marker column (False where it is missing: events of a source)."""
    return events if SAMPLED in events.columns else events.assign(**{SAMPLED: False})


def item_table(items: pd.DataFrame) -> pd.DataFrame:
    """Item table with ``item_id`` (int64) and ``categories`` (list of int64), one row per item."""
    out = items[["item_id", "categories"]].drop_duplicates("item_id").reset_index(drop=True)
    out["item_id"] = out["item_id"].astype("int64")
    out["categories"] = [np.asarray(c, dtype=np.int64) for c in out["categories"]]
    return out


def items_from_events(events: pd.DataFrame) -> pd.DataFrame:
    """Item table for sources with one category per item: the first category seen."""
    first = events.drop_duplicates("item_id")[["item_id", "category_id"]]
    cats = [np.array([c], dtype=np.int64) if c != NO_CATEGORY else np.array([], dtype=np.int64) for c in first["category_id"]]
    return item_table(pd.DataFrame({"item_id": first["item_id"].to_numpy(), "categories": cats}))
