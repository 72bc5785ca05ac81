"""Build the cloud pool from a prepared data set: which users share, and their training events.

A user shares data when a salted hash of their id falls below the share
fraction, so a user's role is the same on every platform and run and does
not depend on which other users exist. Only the sharing users' *training*
events enter the pool; device users' events and every test event stay out.

The directory layout and the read side live in :mod:`recfl.core.pool`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cloud_pool.profiles import category_frequencies
from recfl.core.atomic import write_json_atomic
from recfl.core.config import check_limits
from recfl.core.dataset import PreparedDataset
from recfl.core.errors import RecflError
from recfl.core.pool import DEVICE, SHARING, PoolSplit
from recfl.core.schema import unit_hash
from recfl.core.store import PoolStore
from recfl.core.vocab import Vocabulary

log = logging.getLogger(__name__)

APPEND_CHUNK = 500_000  # events per store append: bounds the memory of one transaction


@dataclass(frozen=True)
class PoolConfig:
    """The ``[pool]`` config section: which users share their data with the cloud."""

    share_fraction: float = 0.5
    salt: str = "recfl-pool"

    def __post_init__(self):
        check_limits(self, "pool", share_fraction="[0, 1]")


def assign_roles(user_ids: np.ndarray, share_fraction: float, salt: str) -> PoolSplit:
    """Split the distinct ``user_ids`` into sharing (hash < fraction) and device users."""
    if not 0.0 <= share_fraction <= 1.0:
        raise RecflError(f"share fraction must be in [0, 1], got {share_fraction}")
    users = np.unique(np.asarray(user_ids, dtype=np.int64))
    shares = unit_hash(users, salt) < share_fraction
    return PoolSplit(users[shares], users[~shares])


def pool_events(data: PreparedDataset, split: PoolSplit) -> pd.DataFrame:
    """The events that may enter the pool: training events of sharing users, nothing else."""
    train = data.train
    return train[train["user_id"].isin(split.sharing_users)]


def build_pool(data: PreparedDataset, pool_dir: str | Path, share_fraction: float = 0.5,
               salt: str = "recfl-pool") -> PoolSplit:
    """Assign roles to ``data``'s users and append the sharing users' training events to ``pool_dir``.

    Rerunning with the same settings is a no-op on the store (appends are
    idempotent by event id); other settings on an existing pool are refused.
    """
    pool_dir = Path(pool_dir)
    manifest = pool_dir / "pool.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if (old["share_fraction"], old["salt"]) != (share_fraction, salt):
            raise RecflError(f"{pool_dir}: pool already built with share fraction {old['share_fraction']} and salt "
                             f"{old['salt']!r}; use a new directory")
    users = np.union1d(data.train["user_id"].to_numpy(np.int64), data.test["user_id"].to_numpy(np.int64))
    split = assign_roles(users, share_fraction, salt)
    events = pool_events(data, split)
    written = duplicates = 0
    with PoolStore(pool_dir / "store") as store:
        for lo in range(0, len(events), APPEND_CHUNK):
            result = store.append(events.iloc[lo : lo + APPEND_CHUNK])
            written, duplicates = written + result.written, duplicates + result.duplicates
        stored = store.count()
    roles = pd.DataFrame({
        "user_id": np.concatenate([split.sharing_users, split.device_users]),
        "role": [SHARING] * len(split.sharing_users) + [DEVICE] * len(split.device_users),
    }).sort_values("user_id", kind="stable")
    roles.to_parquet(pool_dir / "users.parquet", index=False)
    (pool_dir / "vocab").mkdir(exist_ok=True)
    Vocabulary.fit(events["item_id"].to_numpy()).save(pool_dir / "vocab" / "items.parquet")
    category_frequencies(events["item_id"].to_numpy(), data.items).save(pool_dir / "vocab" / "categories.parquet")
    summary = {
        "share_fraction": share_fraction,
        "salt": salt,
        "data": str(data.root),
        "data_created_utc": data.manifest.get("created_utc"),
        "sharing_users": int(len(split.sharing_users)),
        "device_users": int(len(split.device_users)),
        "pool_events": int(stored),
        "written": int(written),
        "duplicates": int(duplicates),
    }
    write_json_atomic(manifest, summary)
    log.info("pool %s: %d sharing users, %d device users, %d events", pool_dir, summary["sharing_users"],
             summary["device_users"], stored)
    return split


__all__ = ["PoolConfig", "assign_roles", "build_pool", "pool_events"]
