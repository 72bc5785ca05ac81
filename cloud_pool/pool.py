"""Build the cloud pool from a prepared data set: which users share, and their training events.

A user shares data when a salted hash of their id falls below the share
fraction (:func:`recfl.core.pool.assign_roles`), so a user's role is the same
on every platform and run and does not depend on which other users exist.
Only the sharing users' *training* events enter the pool; device users'
events and every test event stay out.

The directory layout, the read side and what streaming adds live in
:mod:`recfl.core.pool`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.atomic import write_json_atomic
from recfl.core.dataset import PreparedDataset
from recfl.core.errors import RecflError
from recfl.core.pool import PoolConfig, PoolSplit, assign_roles, check_pool, manifest, roles_frame
from recfl.core.store import PoolStore
from recfl.core.tables import read_table

log = logging.getLogger(__name__)

APPEND_CHUNK = 500_000  # events per store append: bounds the memory of one transaction


def pool_events(data: PreparedDataset, split: PoolSplit) -> pd.DataFrame:
    """The events that may enter the pool: training events of sharing users, nothing else."""
    train = data.train
    return train[train["user_id"].isin(split.sharing_users)]


def build_pool(data: PreparedDataset, pool_dir: str | Path, share_fraction: float = 0.5,
               salt: str = "recfl-pool") -> PoolSplit:
    """Assign roles to ``data``'s users and append the sharing users' training events to ``pool_dir``.

    Rerunning with the same settings is a no-op on the store (appends are
    idempotent by event id); other settings on an existing pool are refused.
    Users already registered (by an earlier build) stay registered.
    """
    pool_dir = Path(pool_dir)
    if (pool_dir / "pool.json").is_file():  # a built or streamed pool: checked, and its roles kept
        old = check_pool(pool_dir)
        if (old["share_fraction"], old["salt"]) != (share_fraction, salt):
            raise RecflError(f"{pool_dir}: pool already built with share fraction {old['share_fraction']} and salt "
                             f"{old['salt']!r}; use a new directory")
    users = np.union1d(data.train["user_id"].to_numpy(np.int64), data.test["user_id"].to_numpy(np.int64))
    if (pool_dir / "users.parquet").is_file():  # a pool that streaming or another data set started keeps its users
        users = np.union1d(users, read_table(pool_dir / "users.parquet", "build the pool again")["user_id"].to_numpy(np.int64))
    split = assign_roles(users, share_fraction, salt)
    events = pool_events(data, split)
    written = duplicates = 0
    with PoolStore(pool_dir / "store") as store:
        for lo in range(0, len(events), APPEND_CHUNK):
            result = store.append(events.iloc[lo : lo + APPEND_CHUNK])
            written, duplicates = written + result.written, duplicates + result.duplicates
        stored = store.count()
    roles_frame(split).to_parquet(pool_dir / "users.parquet", index=False)
    summary = manifest(PoolConfig(share_fraction, salt), stored, str(data.root), data.manifest.get("created_utc"),
                       sharing_users=int(len(split.sharing_users)), device_users=int(len(split.device_users)),
                       written=int(written), duplicates=int(duplicates))
    write_json_atomic(pool_dir / "pool.json", summary)
    log.info("pool %s: %d sharing users, %d device users, %d events", pool_dir, summary["sharing_users"],
             summary["device_users"], stored)
    return split


__all__ = ["PoolConfig", "assign_roles", "build_pool", "pool_events"]  # the first two re-exported from recfl.core.pool
