"""Know before you train: which users each metric of a run's A/B report can count, and the stop before training.

The groups are every user, the device users (outside the pool under the
``[pool]`` settings, :func:`cloud_pool.pool.assign_roles`) and the
*evaluated* device users: the first ``[run] device_users`` device users with
test events, the ones ``recfl run`` personalizes and compares.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ab_testing.evaluate import AbConfig
from cloud_pool.pool import PoolConfig, assign_roles
from recfl.core.errors import RecflError
from recfl.core.evaluable import FIXES, coverage, need


def user_groups(train: pd.DataFrame, test: pd.DataFrame, pool: PoolConfig, device_users: int) -> dict[str, np.ndarray]:
    """``all``, ``device`` and ``evaluated`` user ids (sorted), as ``recfl run`` assigns them."""
    users = np.union1d(train["user_id"].to_numpy(np.int64), test["user_id"].to_numpy(np.int64))
    device = assign_roles(users, pool.share_fraction, pool.salt).device_users
    evaluated = np.intersect1d(np.unique(test["user_id"].to_numpy(np.int64)), device)
    return {"all": users, "device": device, "evaluated": evaluated[: device_users or None]}


def evaluable(train: pd.DataFrame, test: pd.DataFrame, ab: AbConfig, pool: PoolConfig, device_users: int) -> dict:
    """Per group, its users, those with test events and per metric (primary first) those who count; and each metric's need."""
    metrics = ab.with_primary.metrics
    return {"primary": ab.primary, "needs": {m: need(m) for m in metrics},
            **coverage(test, metrics, user_groups(train, test, pool, device_users))}


def require_evaluable(report: dict, minimum: int) -> None:
    """Stop (one line) when fewer than ``minimum`` evaluated device users count for the primary metric.

    A small run (fewer than ``2 * minimum`` evaluated users) needs half of them; ``minimum = 0`` never stops.
    """
    primary, evaluated = report["primary"], report["evaluated"]
    if minimum == 0:
        return
    if evaluated["users"] == 0:
        raise RecflError(f"no device user has test events ({report['device']['users']} device users): nothing to "
                         "evaluate; use more users, a larger pool.share_fraction complement or data.test_fraction")
    threshold = min(minimum, math.ceil(evaluated["users"] / 2))
    if evaluated[primary] < threshold:
        needs = report["needs"][primary]
        raise RecflError(
            f"only {evaluated[primary]} of the {evaluated['users']} evaluated device users can count for the primary "
            f"metric {primary} (a user needs {needs} among its test events; {report['all'][primary]} of all "
            f"{report['all']['users']} users do), fewer than {threshold} (run.min_evaluable_users = {minimum}); "
            f"nothing trained ({evaluated['with_positive']} of them have a test positive). Fix: {FIXES[needs]}; "
            "or choose another ab.primary")
