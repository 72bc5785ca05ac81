"""Per-user, time-based train/test split: each user's earliest events train, latest test."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recfl.core.errors import RecflError

SPLIT_RULE = (
    "per user, events ordered by (timestamp, event_id); the last round(test_fraction * n) events "
    "(at least 1) are test, the rest train; users with fewer than 2 events are train only"
)


def split_by_time(events: pd.DataFrame, test_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train, test); no user's test event is earlier than any of their train events."""
    if not 0.0 < test_fraction < 1.0:
        raise RecflError(f"test fraction must be in (0, 1), got {test_fraction}")
    ordered = events.sort_values(["user_id", "timestamp", "event_id"], kind="stable").reset_index(drop=True)
    size = ordered.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    rank = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    n_test = np.where(size >= 2, np.clip(np.rint(test_fraction * size), 1, size - 1), 0)
    is_test = rank >= size - n_test
    return ordered.loc[~is_test].reset_index(drop=True), ordered.loc[is_test].reset_index(drop=True)
