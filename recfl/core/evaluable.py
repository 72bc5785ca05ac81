"""Which users a metric can count, known from the test labels before anything trains.

A user counts for an AUC-like metric (``auc``, ``gauc``, ``logloss``) only
with both classes among their test events (a one-class user's ranking is
undefined, and their logloss rewards a constant score at that class), for
``hr@K``/``ndcg@K`` only with a positive, for ``ctr@K``/``uctr@K`` with any
test event. Counting this first lets a run stop before training when its
primary metric would count almost nobody, instead of reporting NaN after
the whole pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from recfl.core.errors import RecflError

BOTH, POSITIVE, EVENT = "both classes", "a positive", "a test event"
NEEDS = {"auc": BOTH, "gauc": BOTH, "logloss": BOTH, "hr": POSITIVE, "ndcg": POSITIVE, "ctr": EVENT, "uctr": EVENT}
FIXES = {
    BOTH: "sample negatives for every test positive (data.negatives = 99), use data.split = \"leave_one_out\" "
          "(with negatives), or keep only users with enough events (data.min_user_events)",
    POSITIVE: "use data.split = \"leave_one_out\" (every user with a positive gets one in test), a larger "
              "data.test_fraction, or keep only users with enough events (data.min_user_events)",
    EVENT: "keep only users with enough events (data.min_user_events) or evaluate more device users (run.device_users = 0)",
}


def need(metric: str) -> str:
    """What a user needs in test to count for ``metric`` (a name like ``gauc`` or ``ndcg@10``)."""
    kind = metric.strip().lower().split("@")[0]
    if kind not in NEEDS:
        raise RecflError(f"unknown metric {metric!r}; known: {', '.join(NEEDS)}")
    return NEEDS[kind]


def user_classes(test: pd.DataFrame) -> pd.DataFrame:
    """Per user with test events (index ``user_id``, sorted): ``events`` and ``positives``."""
    return test.groupby("user_id", sort=True)["label"].agg(events="size", positives="sum")


def counted(classes: pd.DataFrame, metrics: Iterable[str], users: np.ndarray | None = None) -> dict[str, int]:
    """Per metric, how many of ``users`` (all with test events when None) count, from :func:`user_classes`."""
    table = classes if users is None else classes.reindex(np.asarray(users, np.int64)).dropna()
    tests = {BOTH: (table["positives"] > 0) & (table["positives"] < table["events"]),
             POSITIVE: table["positives"] > 0, EVENT: table["events"] > 0}
    return {m: int(tests[need(m)].sum()) for m in metrics}


def coverage(test: pd.DataFrame, metrics: Iterable[str], groups: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per group of users (e.g. all, device, evaluated): its size, its users with test events and with a test
    positive (who would count for an AUC-like metric with sampled negatives), and per metric who counts."""
    metrics = list(dict.fromkeys(metrics))
    classes = user_classes(test)
    return {name: {"users": int(len(users)), "with_test": int(classes.index.isin(users).sum()),
                   "with_positive": int((classes["positives"].reindex(users).fillna(0) > 0).sum()),
                   **counted(classes, metrics, users)} for name, users in groups.items()}


__all__ = ["BOTH", "EVENT", "FIXES", "NEEDS", "POSITIVE", "counted", "coverage", "need", "user_classes"]
