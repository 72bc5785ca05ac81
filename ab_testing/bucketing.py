"""User bucketing for the bucketed design: a salted hash of the user id, as an online experiment assigns users.

``bucket = floor(unit_hash(salt, user) * buckets)`` with :func:`recfl.core.schema.unit_hash`
(blake2b, never Python's per-process ``hash()``), so a user lands in the same
bucket on every run and platform, and a new salt reshuffles everyone (a fresh
experiment is not correlated with the last one). The buckets are split into
contiguous, as equal as possible ranges, one per arm, control first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ab_testing.predictions import Predictions
from ab_testing.stats import SrmCheck, srm_check
from recfl.core.errors import RecflError
from recfl.core.schema import unit_hash


def buckets_of(user_ids: np.ndarray, salt: str, buckets: int) -> np.ndarray:
    """Bucket ``0 .. buckets - 1`` of each user id."""
    return np.minimum((unit_hash(user_ids, salt) * buckets).astype(np.int64), buckets - 1)


def allocation(arms: tuple[str, ...], buckets: int) -> dict[str, tuple[int, int]]:
    """Each arm's bucket range ``[first, last + 1)``: contiguous, sizes differing by at most one."""
    if buckets < len(arms):
        raise RecflError(f"--buckets {buckets} is fewer than the {len(arms)} arms; every arm needs a bucket")
    edges = [i * buckets // len(arms) for i in range(len(arms) + 1)]
    return {arm: (edges[i], edges[i + 1]) for i, arm in enumerate(arms)}


@dataclass(frozen=True)
class Assignment:
    """Who is in which arm: the users each arm is evaluated on, and the SRM check of those counts."""

    frames: dict[str, pd.DataFrame]  # each arm's rows of the users assigned to it
    ranges: dict[str, tuple[int, int]]
    assigned: dict[str, int]  # users hashed into the arm (among all users seen in any file)
    missing: dict[str, int]  # of those, users the arm has no predictions for
    srm: SrmCheck


def assign(pred: Predictions, arms: tuple[str, ...], salt: str, buckets: int, srm_alpha: float) -> Assignment:
    """Hash every user seen in any file into an arm; keep each arm's rows of its own users.

    The users an arm is evaluated on are the assigned users it has predictions
    for; if an arm lacks some of its users (a crash, a filter, a logging bug)
    its count falls below its share and the chi-square SRM check flags it.
    """
    ranges = allocation(arms, buckets)
    users = np.unique(pred.frame["user_id"].to_numpy())
    bucket = buckets_of(users, salt, buckets)
    frames, assigned, missing, observed = {}, {}, {}, {}
    for arm in arms:
        first, stop = ranges[arm]
        mine = users[(bucket >= first) & (bucket < stop)]
        rows = pred.of(arm)
        rows = rows[rows["user_id"].isin(mine)]
        present = rows["user_id"].nunique()
        frames[arm] = rows
        assigned[arm], missing[arm], observed[arm] = int(len(mine)), int(len(mine) - present), int(present)
    shares = {arm: (stop - first) / buckets for arm, (first, stop) in ranges.items()}
    return Assignment(frames, ranges, assigned, missing, srm_check(observed, shares, srm_alpha))
