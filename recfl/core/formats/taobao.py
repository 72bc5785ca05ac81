"""Taobao UserBehavior CSV (Tianchi): ``user_id,item_id,category_id,behavior,timestamp``, no header.

Label rule: ``label = 1`` for ``cart``, ``fav`` and ``buy`` (positive actions),
0 for ``pv`` (a page view, the closest thing to an exposure in this log).
Rows dated before 1990 or after 2100 (the public slice has a timestamp of 15)
are dropped and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.errors import DataFormatError
from recfl.core.formats.base import (
    SourceData,
    drop_impossible_timestamps,
    integral,
    read_delimited,
    require_file,
)
from recfl.core.schema import assign_event_ids, conform, items_from_events

LABEL_RULE = "label = behavior in {cart, fav, buy}; pv = 0"
BEHAVIORS = ("pv", "cart", "fav", "buy")
POSITIVE_BEHAVIORS = ("cart", "fav", "buy")


def load(path: str | Path) -> SourceData:
    """Read the CSV strictly; an unknown behaviour is a format error naming its line."""
    path = require_file(Path(path), "Taobao UserBehavior CSV")
    names = ["user_id", "item_id", "category_id", "behavior", "timestamp"]
    table = read_delimited(path, ",", names, ["user_id", "item_id", "category_id", "timestamp"])
    behavior = table["behavior"].str.strip()
    unknown = np.flatnonzero(~behavior.isin(BEHAVIORS).to_numpy())
    if unknown.size:
        k = unknown[0]
        raise DataFormatError(path, f"unknown behavior {behavior.iat[k]!r} (expected one of {', '.join(BEHAVIORS)})", int(table["line"].iat[k]))
    events = conform(assign_event_ids(pd.DataFrame({
        "user_id": integral(table, "user_id", path),
        "item_id": integral(table, "item_id", path),
        "category_id": integral(table, "category_id", path),
        "label": behavior.isin(POSITIVE_BEHAVIORS).to_numpy().astype(np.int8),
        "timestamp": integral(table, "timestamp", path),
        "behavior": behavior.to_numpy(),
    }), "taobao"))
    dropped: dict[str, int] = {}
    events = drop_impossible_timestamps(events, dropped)
    return SourceData("taobao", str(path), LABEL_RULE, events, items_from_events(events), dropped)
