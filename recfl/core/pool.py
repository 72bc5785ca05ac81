"""The cloud pool on disk: its layout, its users' roles and its event store (the handle every stage shares).

Layout of a pool directory (``pool.json`` is written last, so its presence
means complete)::

    POOL/store/                 the PoolStore (day-partitioned Parquet + event-id index)
    POOL/users.parquet          user_id, role ("sharing" | "device")
    POOL/vocab/items.parquet    pool item frequencies (id, count), most frequent first
    POOL/vocab/categories.parquet  pool category frequencies (id, count; every category of an event's item)
    POOL/pool.json              share fraction, salt, counts, source data set

Building a pool is the cloud stage's job (:mod:`cloud_pool.pool`); reading
one (roles, events) is what streaming, matching and the devices share.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.errors import RecflError
from recfl.core.store import PoolStore

SHARING, DEVICE = "sharing", "device"


@dataclass(frozen=True, eq=False)
class PoolSplit:
    """The users whose training events are in the pool, and the device users (sorted, int64)."""

    sharing_users: np.ndarray
    device_users: np.ndarray


def pool_summary(pool_dir: str | Path) -> dict:
    """The ``pool.json`` of a complete pool directory."""
    path = Path(pool_dir) / "pool.json"
    if not path.is_file():
        raise RecflError(f"{pool_dir}: not a built cloud pool (no pool.json); run `recfl pool build`")
    return json.loads(path.read_text())


def load_split(pool_dir: str | Path) -> PoolSplit:
    """The sharing and device users of a built pool."""
    pool_summary(pool_dir)
    roles = pd.read_parquet(Path(pool_dir) / "users.parquet")
    ids, role = roles["user_id"].to_numpy(np.int64), roles["role"].to_numpy()
    return PoolSplit(np.sort(ids[role == SHARING]), np.sort(ids[role == DEVICE]))


def open_store(pool_dir: str | Path) -> PoolStore:
    """The PoolStore of a built pool (read side)."""
    pool_summary(pool_dir)
    return PoolStore(Path(pool_dir) / "store", create=False)


__all__ = ["DEVICE", "SHARING", "PoolSplit", "load_split", "open_store", "pool_summary"]
