"""Item sequences, the file type of sequential-recommendation benchmarks (SASRec, S3-Rec, ...).

One line per user, ``user item item ...``: integer ids separated by
whitespace, the user's interactions in time order (oldest first), no
timestamps, no ratings. Label rule: every interaction is a positive (label
1), so evaluation needs sampled negatives (``[data] negatives``) and training
needs them too (``[data] train_negatives``). The files carry no categories.

Time: the files keep only the order, so the loader derives an
order-preserving timestamp, ``2000-01-01T00:00:00Z + position in the line``
(seconds). It orders a user's events and nothing more: times of different
users are not comparable, and hour or weekday features carry no signal.

Strict like the other loaders: a non-integer or negative id, a line with a
user and no items, or a user on two lines stops with ``file:line: reason``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.errors import DataFormatError
from recfl.core.formats.base import SourceData, read_text, require_file
from recfl.core.schema import NO_CATEGORY, assign_event_ids, conform, items_from_events

LABEL_RULE = "label = 1 for every interaction (implicit feedback: sample negatives); no categories"
EPOCH = 946_684_800  # 2000-01-01T00:00:00Z
TIME_RULE = ("timestamp = 2000-01-01T00:00:00Z + the event's position in its user's line, in seconds: "
             "it orders a user's events, nothing more (the file has no times)")
_ID = re.compile(r"[0-9]{1,18}")  # below 2**63: an int64 id


def load(path: str | Path) -> SourceData:
    """Read ``user item item ...`` lines; see the module doc for the rules."""
    path = require_file(Path(path), "item sequences, one `user item item ...` line per user")
    users, items, positions, seen = [], [], [], {}
    for n, text in enumerate(read_text(path, "utf-8").split("\n"), start=1):
        fields = text.split()
        if not fields:
            continue
        bad = next((k for k, f in enumerate(fields) if not _ID.fullmatch(f)), None)
        if bad is not None:
            raise DataFormatError(path, f"{'item' if bad else 'user'} id {fields[bad]!r} is not a non-negative integer of at most 18 digits", n)
        if len(fields) < 2:
            raise DataFormatError(path, f"user {fields[0]} has no items (expected `user item item ...`)", n)
        user = int(fields[0])
        if user in seen:
            raise DataFormatError(path, f"user {user} already has a line (line {seen[user]}); one line per user", n)
        seen[user] = n
        users.append(np.full(len(fields) - 1, user, np.int64))
        items.append(np.array(fields[1:], dtype=np.int64))
        positions.append(np.arange(len(fields) - 1, dtype=np.int64))
    if not seen:
        raise DataFormatError(path, "file is empty")
    user_ids, item_ids = np.concatenate(users), np.concatenate(items)
    events = conform(assign_event_ids(pd.DataFrame({
        "user_id": user_ids,
        "item_id": item_ids,
        "category_id": np.full(len(user_ids), NO_CATEGORY, np.int64),
        "label": np.ones(len(user_ids), np.int8),
        "timestamp": EPOCH + np.concatenate(positions),
        "behavior": "interaction",
    }), "sequence"))
    return SourceData("sequence", str(path), LABEL_RULE, events, items_from_events(events), {}, TIME_RULE)
