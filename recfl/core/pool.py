"""The cloud pool on disk: its layout, its users' roles and its event store (the handle every stage shares).

Layout of a pool directory::

    POOL/store/          the PoolStore (day-partitioned Parquet + event-id index): every event the pool received
    POOL/users.parquet   the users registered by ``recfl pool build`` (user_id, role): the data set's users
    POOL/pool.json       share fraction, salt, source data set, and the counts of the last build

A pool is made by ``recfl pool build`` (:mod:`cloud_pool.pool`; ``pool.json``
is written last, so an interrupted build is no pool) or by ``recfl stream
consume`` at a path that does not exist yet (:func:`ensure_pool`: a new,
empty pool, made under a lock of the folder, ``pool.json`` last). Both append
to the same store, and every command takes the same ``--pool POOLDIR``.

What a pool holds is derived from its store when it is read, never kept
beside it: its users are the registered users plus every user with an event
in the store; a user's role is the salted hash of the id
(:func:`assign_roles`), so a user streamed in gets the role a build would
give it; the events that may reach other users (:func:`shared_events`) are
those of the sharing users, and the pool's item and category frequencies
count those. One source of truth (the store, whose appends are atomic and
durable) leaves nothing to keep in step across crashes and costs the
consumer's write path nothing; readers pay a read of the ``user_id`` column,
small beside matching's read of the whole store.

:func:`check_pool` refuses, with one line, a folder that is not a pool and a
pool whose store was edited by hand (no index, data files the index does not
list or listed ones missing, fewer events than ``pool.json`` records, roles
that disagree with its salt).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recfl.core.atomic import fsync_path, write_json_atomic
from recfl.core.config import check_limits
from recfl.core.errors import EnvironmentFault, RecflError
from recfl.core.schema import unit_hash
from recfl.core.store import PoolStore
from recfl.core.tables import read_table

SHARING, DEVICE = "sharing", "device"


@dataclass(frozen=True)
class PoolConfig:
    """The ``[pool]`` config section: which users share their data with the cloud."""

    share_fraction: float = 0.5
    salt: str = "recfl-pool"

    def __post_init__(self):
        check_limits(self, "pool", share_fraction="[0, 1]")


@dataclass(frozen=True, eq=False)
class PoolSplit:
    """The users whose training events are in the pool, and the device users (sorted, int64)."""

    sharing_users: np.ndarray
    device_users: np.ndarray


def assign_roles(user_ids: np.ndarray, share_fraction: float, salt: str) -> PoolSplit:
    """Split the distinct ``user_ids`` into sharing (hash < fraction) and device users."""
    users = np.unique(np.asarray(user_ids, dtype=np.int64))
    sharing = shares(users, share_fraction, salt)
    return PoolSplit(users[sharing], users[~sharing])


def shares(user_ids: np.ndarray, share_fraction: float, salt: str) -> np.ndarray:
    """Whether each user shares: its salted hash falls below the share fraction (the only rule of roles)."""
    if not 0.0 <= share_fraction <= 1.0:
        raise RecflError(f"share fraction must be in [0, 1], got {share_fraction}")
    return unit_hash(np.asarray(user_ids, dtype=np.int64), salt) < share_fraction


def roles_frame(split: PoolSplit) -> pd.DataFrame:
    """``users.parquet``'s table: user_id, role, sorted by user."""
    return pd.DataFrame({
        "user_id": np.concatenate([split.sharing_users, split.device_users]).astype(np.int64),
        "role": [SHARING] * len(split.sharing_users) + [DEVICE] * len(split.device_users),
    }).sort_values("user_id", kind="stable").reset_index(drop=True)


def ensure_pool(pool_dir: str | Path, config: PoolConfig = PoolConfig()) -> dict:
    """The checked ``pool.json`` of the pool at ``pool_dir``; a path that does not exist yet (or an empty
    folder) becomes a new, empty pool with ``config``'s roles. An existing pool keeps its own settings."""
    pool_dir = Path(pool_dir)
    if not (pool_dir / "pool.json").is_file() and not pool_dir.is_file():
        try:
            pool_dir.mkdir(parents=True, exist_ok=True)
            with _locked(pool_dir):  # several consumers may start on the same new path at once
                if not (pool_dir / "pool.json").is_file() and _unborn(pool_dir):
                    _create(pool_dir, config)
        except OSError as exc:
            raise EnvironmentFault(f"cannot create the pool at {pool_dir}: {exc}") from None
    return check_pool(pool_dir)


@contextmanager
def _locked(folder: Path):
    """An exclusive flock on ``folder`` itself."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def _unborn(pool_dir: Path) -> bool:
    """Whether ``pool_dir`` holds nothing but what an interrupted :func:`_create` leaves (an empty store, the
    users file): anything else is someone's folder, never made into a pool."""
    if not {p.name for p in pool_dir.iterdir()} <= {"store", "users.parquet"}:
        return False
    if not (pool_dir / "store" / "index.sqlite").is_file():
        return True
    with PoolStore(pool_dir / "store", create=False) as store:
        return store.count() == 0


def _create(pool_dir: Path, config: PoolConfig) -> None:
    """An empty pool in ``pool_dir`` (``pool.json`` last, so an interrupted creation is no pool yet)."""
    PoolStore(pool_dir / "store").close()
    roles_frame(PoolSplit(np.zeros(0, np.int64), np.zeros(0, np.int64))).to_parquet(pool_dir / "users.parquet", index=False)
    write_json_atomic(pool_dir / "pool.json", manifest(config, pool_events=0))
    fsync_path(pool_dir)


def manifest(config: PoolConfig, pool_events: int, data: str | None = None, data_created_utc: str | None = None,
             **counts: int) -> dict:
    """The ``pool.json`` of a pool: its role settings, its source data set (None for a streamed-only pool)
    and ``pool_events``, the events stored when it was written (the store never holds fewer)."""
    return {"share_fraction": config.share_fraction, "salt": config.salt, "data": data,
            "data_created_utc": data_created_utc, "pool_events": int(pool_events), **counts}


def check_pool(pool_dir: str | Path) -> dict:
    """The ``pool.json`` of the pool at ``pool_dir``, once it is known to be a whole, unedited pool."""
    pool_dir = Path(pool_dir)
    path = pool_dir / "pool.json"
    if not path.is_file():
        if (pool_dir / "index.sqlite").is_file():
            raise RecflError(f"{pool_dir}: a bare event store, not a pool (no pool.json); give a new path to "
                             "`recfl stream consume --pool`, or build one with `recfl pool build`")
        what = "no such folder" if not pool_dir.exists() else "a file" if pool_dir.is_file() else "no pool.json"
        raise RecflError(f"{pool_dir}: not a cloud pool ({what}); build one with `recfl pool build` or stream into "
                         "a new path with `recfl stream consume --pool`")
    try:
        summary = json.loads(path.read_text())
        config = pool_config(summary)
        recorded = int(summary["pool_events"])
    except (ValueError, TypeError, KeyError, RecflError) as exc:
        raise RecflError(f"{path}: not a pool manifest ({type(exc).__name__}: {exc}); build the pool again") from None
    edited = f"{pool_dir}: the pool's store was edited by hand"
    if not (pool_dir / "store" / "index.sqlite").is_file():
        raise RecflError(f"{edited} (store/index.sqlite is missing)")
    with PoolStore(pool_dir / "store", create=False) as store:
        problem = store.unindexed()
        stored = store.count()
    if problem:
        raise RecflError(f"{edited} ({problem})")
    if stored < recorded:
        raise RecflError(f"{edited} (it holds {stored} events, pool.json records {recorded})")
    registered = _registered(pool_dir)
    by_hash = shares(registered["user_id"].to_numpy(np.int64), config.share_fraction, config.salt)
    if not registered["role"].eq(np.where(by_hash, SHARING, DEVICE)).all():
        raise RecflError(f"{pool_dir}/users.parquet: roles disagree with pool.json's share fraction and salt; "
                         "build the pool again")
    return summary


def _registered(pool_dir: Path) -> pd.DataFrame:
    return read_table(pool_dir / "users.parquet", "build the pool again")


def pool_config(summary: dict) -> PoolConfig:
    """The role settings of a checked ``pool.json``."""
    return PoolConfig(float(summary["share_fraction"]), str(summary["salt"]))


def load_split(pool_dir: str | Path) -> PoolSplit:
    """The sharing and device users of a pool: its registered users and every user with a stored event."""
    return _content(pool_dir)[1]


def pool_summary(pool_dir: str | Path) -> dict:
    """``pool.json`` with the pool's live counts: ``pool_events`` (stored), ``shared_events`` (of sharing
    users), ``sharing_users`` and ``device_users``."""
    summary, split, events = _content(pool_dir)
    return {**summary, "pool_events": events.num_rows, "shared_events": shared_events(events, pool_config(summary)).num_rows,
            "sharing_users": int(len(split.sharing_users)), "device_users": int(len(split.device_users))}


def _content(pool_dir: str | Path) -> tuple[dict, PoolSplit, pa.Table]:
    """A checked pool's ``pool.json``, its users' roles, and the ``user_id`` column of its events."""
    summary = check_pool(pool_dir)
    with PoolStore(Path(pool_dir) / "store", create=False) as store:
        events = store.read_table(["user_id"])
    config = pool_config(summary)
    users = np.union1d(_registered(Path(pool_dir))["user_id"].to_numpy(np.int64), events.column("user_id").to_numpy())
    return summary, assign_roles(users, config.share_fraction, config.salt), events


def shared_events(events: pa.Table, config: PoolConfig) -> pa.Table:
    """The rows of ``events`` (a table with ``user_id``) whose user shares: the only ones handed to others.
    A device user's own events may be in the store (streamed in); they stay that user's."""
    return events.filter(pa.array(shares(events.column("user_id").to_numpy(), config.share_fraction, config.salt)))


def pool_version(pool_dir: str | Path) -> str:
    """The version of a checked pool's content (:meth:`PoolStore.version`): it changes when events are stored."""
    with open_store(pool_dir) as store:
        return store.version()


def open_store(pool_dir: str | Path) -> PoolStore:
    """The PoolStore of a checked pool."""
    check_pool(pool_dir)
    return PoolStore(Path(pool_dir) / "store", create=False)


__all__ = ["DEVICE", "SHARING", "PoolConfig", "PoolSplit", "assign_roles", "check_pool", "ensure_pool", "load_split",
           "manifest", "open_store", "pool_config", "pool_summary", "pool_version", "roles_frame", "shared_events", "shares"]
