"""Amazon review data (McAuley et al.), "5-core" JSON lines, plain or ``.gz``.

Label rule: ``label = 1`` when ``overall`` >= 4, else 0. The files carry no
category, so ``category_id`` is -1 and items have no categories. String ids
(``reviewerID``, ``asin``) are mapped to int64 with :func:`recfl.core.schema.stable_ids`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.errors import DataFormatError
from recfl.core.formats.base import (
    SourceData,
    drop_impossible_timestamps,
    read_text,
    require_file,
)
from recfl.core.schema import (
    NO_CATEGORY,
    assign_event_ids,
    conform,
    items_from_events,
    stable_ids,
)

LABEL_RULE = "label = overall >= 4; no categories"
_FIELDS = {"reviewerID": str, "asin": str, "overall": (int, float), "unixReviewTime": int}


def load(path: str | Path) -> SourceData:
    """Read one review per line; every line must be a JSON object with the four fields used."""
    path = require_file(Path(path), "Amazon 5-core reviews, JSON lines")
    users, items, ratings, stamps, lines = [], [], [], [], []
    for n, text in enumerate(read_text(path, "utf-8").split("\n"), start=1):
        if not text.strip():
            continue
        try:
            review = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"not a JSON object ({exc.msg})", n) from None
        if not isinstance(review, dict):
            raise DataFormatError(path, "not a JSON object", n)
        for key, kind in _FIELDS.items():
            value = review.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DataFormatError(path, f"field {key!r} missing or not {_kind_name(kind)}: {value!r}", n)
        users.append(review["reviewerID"])
        items.append(review["asin"])
        ratings.append(float(review["overall"]))
        stamps.append(review["unixReviewTime"])
        lines.append(n)
    if not lines:
        raise DataFormatError(path, "file is empty")
    rating = np.asarray(ratings)
    events = conform(assign_event_ids(pd.DataFrame({
        "user_id": stable_ids(users),
        "item_id": stable_ids(items),
        "category_id": np.full(len(lines), NO_CATEGORY, dtype=np.int64),
        "label": (rating >= 4).astype(np.int8),
        "timestamp": np.asarray(stamps, dtype=np.int64),
        "behavior": [f"rating:{r:g}" for r in rating],
    }), "amazon"))
    dropped: dict[str, int] = {}
    events = drop_impossible_timestamps(events, dropped)
    return SourceData("amazon-5core", str(path), LABEL_RULE, events, items_from_events(events), dropped)


def _kind_name(kind) -> str:
    return "a string" if kind is str else "an integer" if kind is int else "a number"
