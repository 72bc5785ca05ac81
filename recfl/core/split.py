"""Per-user train/test splits by time: each user's earlier events train, later ones test.

Two rules (``[data] split``), both ordering a user's events by (timestamp,
event_id), so no test event ever precedes a train event of the same user:

- ``time_fraction``: the latest ``round(test_fraction * n)`` events (at least
  one) are test, the rest train; users with fewer than 2 events are train only.
- ``leave_one_out``: the user's latest positive is the test event (the
  protocol of NCF, FedNCF, FedMF and PFedRec, which rank it against sampled
  negatives). Events after it (later negatives of explicit data such as
  MovieLens) can be neither train (they would follow a test event) nor test
  (the test list is the positive and its sampled negatives), so they are
  dropped and counted. Users without a positive, or whose latest positive is
  their first event (nothing to learn from), are train only.

:func:`split_events` applies either rule to any event table, so a validation
split is carved from the training events the same way as test from all;
``holdout`` restricts the split to some users (the others' events all train),
for a validation of held-out users beside the rest's full histories.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfl.core.errors import RecflError

TIME_FRACTION, LEAVE_ONE_OUT = "time_fraction", "leave_one_out"
SPLITS = (TIME_FRACTION, LEAVE_ONE_OUT)
SPLIT_RULES = {
    TIME_FRACTION: (
        "per user, events ordered by (timestamp, event_id); the last round(test_fraction * n) events "
        "(at least 1) are test, the rest train; users with fewer than 2 events are train only"
    ),
    LEAVE_ONE_OUT: (
        "per user, events ordered by (timestamp, event_id); the latest positive is the test event, the events "
        "before it train, the events after it dropped; users without a positive, or whose latest positive is "
        "their first event, are train only"
    ),
}


@dataclass(frozen=True)
class Split:
    """The two sides of a split, each ordered by (user_id, timestamp, event_id), and what fell out."""

    train: pd.DataFrame
    test: pd.DataFrame
    dropped: int = 0  # leave_one_out: events after a user's test positive


def split_events(events: pd.DataFrame, rule: str, test_fraction: float = 0.2,
                 holdout: np.ndarray | None = None) -> Split:
    """Split ``events`` per user under ``rule`` (one of :data:`SPLITS`); with ``holdout``, only those users' events
    are split and every other user's events are train."""
    if holdout is not None:
        held = events["user_id"].isin(holdout).to_numpy()
        inner = split_events(events.loc[held], rule, test_fraction)
        train, _, _ = _ordered(pd.concat([inner.train, events.loc[~held]], ignore_index=True))
        return Split(train, inner.test, inner.dropped)
    if rule == TIME_FRACTION:
        return Split(*split_by_time(events, test_fraction))
    if rule == LEAVE_ONE_OUT:
        return leave_one_out(events)
    raise RecflError(f"unknown split {rule!r}; choose one of {', '.join(SPLITS)}")


def _ordered(events: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Events sorted per user by time, each event's rank within its user and its user's event count."""
    ordered = events.sort_values(["user_id", "timestamp", "event_id"], kind="stable").reset_index(drop=True)
    groups = ordered.groupby("user_id", sort=False)
    return ordered, groups.cumcount().to_numpy(), groups["user_id"].transform("size").to_numpy()


def split_by_time(events: pd.DataFrame, test_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train, test) under ``time_fraction``; no user's test event is earlier than any of their train events."""
    if not 0.0 < test_fraction < 1.0:
        raise RecflError(f"test fraction must be in (0, 1), got {test_fraction}")
    ordered, rank, size = _ordered(events)
    n_test = np.where(size >= 2, np.clip(np.rint(test_fraction * size), 1, size - 1), 0)
    is_test = rank >= size - n_test
    return ordered.loc[~is_test].reset_index(drop=True), ordered.loc[is_test].reset_index(drop=True)


def leave_one_out(events: pd.DataFrame) -> Split:
    """Each user's latest positive is test, earlier events train, later events dropped (see the module doc)."""
    ordered, rank, _ = _ordered(events)
    positive = ordered["label"].to_numpy() == 1
    latest = pd.Series(np.where(positive, rank, -1)).groupby(ordered["user_id"].to_numpy()).transform("max").to_numpy()
    has_test = latest >= 1
    is_test = has_test & (rank == latest)
    after = has_test & (rank > latest)
    train = ordered.loc[~is_test & ~after].reset_index(drop=True)
    return Split(train, ordered.loc[is_test].reset_index(drop=True), int(after.sum()))
