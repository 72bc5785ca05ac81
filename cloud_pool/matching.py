"""Coarse matching: for each device user, samples of the most similar pool users within a budget.

Similarity is the cosine of quantized profiles (:mod:`cloud_pool.profiles`),
computed by blocks of device users against all pool users (one matrix
product per block, so memory is bounded by ``block_size x pool users``).
The top ``top_m`` pool users of each device user are found without sorting
whole rows: a threshold from a strided sample of the row keeps a few times
``top_m`` columns, which are then ordered exactly by (similarity desc, pool
user id asc); rows where the sample misleads fall back to an exact partition.
Samples are then taken from the most similar pool user first, each pool
user's most recent samples first (ties by event id), until the device
user's budget (``budget_multiplier`` x its local training events, at least
``min_budget``) is spent. Only sharing users' events are candidates (a device
user's streamed events stay in the store, unshared), a user's own samples
never are, and a pool holding a test event of the data set is refused.

The candidates table and its files are described in :mod:`recfl.core.candidates`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from cloud_pool.profiles import ProfileSpec, profiles
from recfl.core import interrupts
from recfl.core.atomic import atomic_path
from recfl.core.candidates import (
    candidate_schema,
    shard_path,
    to_frame,
)
from recfl.core.config import check_limits
from recfl.core.dataset import PreparedDataset
from recfl.core.errors import RecflError
from recfl.core.pool import check_pool, load_split, open_store, pool_config, shared_events
from recfl.core.schema import unit_hash

log = logging.getLogger(__name__)

SHARD_SALT = "recfl-shard"
SAMPLE_COLUMNS = 2048  # strided sample of a score row used to guess its top-m threshold


@dataclass(frozen=True)
class MatchConfig:
    """The ``[matching]`` config section: profile shape, how many pool users, how many samples."""

    top_m: int = 50  # most similar pool users considered per device user
    budget_multiplier: float = 10.0  # candidates per device user <= this x its local training events
    min_budget: int = 100  # ... but at least this many (users with few local events)
    per_pool_user: int = 0  # most recent samples taken from one pool user (0 = all of them)
    min_similarity: float = 0.0  # pool users at or below this cosine are never matched
    block_size: int = 256  # device users per matrix product (memory ~ block_size x pool users x 5 bytes)
    category_dims: int = 256  # profile dimensions: the pool's most frequent categories
    item_dims: int = 512  # ... plus the pool's most frequent items (0 = categories only)
    item_weight: float = 1.0  # weight of the item part relative to the category part
    positive_weight: float = 1.0  # weight of a positive event relative to a negative one in a profile

    def __post_init__(self):
        check_limits(self, "matching", top_m=">= 1", block_size=">= 1", min_budget=">= 0", budget_multiplier=">= 0",
                     per_pool_user=">= 0", min_similarity="[0, 1)", category_dims=">= 0", item_dims=">= 0",
                     item_weight=">= 0", positive_weight="> 0")

    def profile_spec(self, pool_item_ids: np.ndarray, items: pd.DataFrame) -> ProfileSpec:
        """Dimensions from the pool's shared events (their ``item_id`` column); ``items`` is the item catalog."""
        return ProfileSpec.from_events(pool_item_ids, items, self.category_dims, self.item_dims, self.positive_weight,
                                       self.item_weight)


@dataclass(frozen=True, eq=False)
class PoolIndex:
    """The pool's samples sorted by (user, newest first, event id), with per-user offsets and profiles."""

    samples: pa.Table
    users: np.ndarray  # sorted pool user ids
    offsets: np.ndarray  # samples of users[k] are rows offsets[k] .. offsets[k + 1]
    profiles: np.ndarray  # float32 [users, dims], integer-valued
    inv_norm: np.ndarray  # float32 1 / |profile| (0 for an empty profile)

    @classmethod
    def build(cls, table: pa.Table, spec: ProfileSpec) -> "PoolIndex":
        """The index of ``table``, the pool's shared events."""
        order = pc.sort_indices(table.select(["user_id", "timestamp", "event_id"]),
                                sort_keys=[("user_id", "ascending"), ("timestamp", "descending"), ("event_id", "ascending")])
        columns = {}
        for name in table.column_names:  # reorder column by column, so the unsorted copy shrinks as we go
            columns[name] = table.column(name).take(order)
            table = table.drop_columns([name])
        table = pa.table(columns)
        user_id = table.column("user_id").to_numpy()
        users, vectors = profiles(user_id, table.column("item_id").to_numpy(), table.column("label").to_numpy(), spec)
        offsets = np.searchsorted(user_id, users, side="left")
        return cls(table, users, np.append(offsets, len(user_id)), *_matrix(vectors))


def _matrix(quantized: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float32 profiles and inverse norms (squared norms are integers below 2**24: exact in float32)."""
    vectors = quantized.astype(np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", vectors, vectors).astype(np.float64))
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0).astype(np.float32)
    return vectors, inv


def shard_of(user_ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard (0 .. shards-1) of each user: a salted hash, so it never depends on the other users."""
    return np.minimum((unit_hash(user_ids, SHARD_SALT) * shards).astype(np.int64), shards - 1)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise RecflError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(match[1]), int(match[2])


def top_columns(scores: np.ndarray, m: int, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the up to ``m`` columns with the highest score above ``min_score``, ordered by
    (score desc, column asc); returned flat as (row, column), grouped by row. ``scores`` is float32."""
    rows, width = scores.shape
    if rows == 0 or width == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    floor = np.nextafter(np.float32(min_score), np.float32(np.inf))
    stride = max(1, width // SAMPLE_COLUMNS)
    sample = scores[:, ::stride]
    keep = min(sample.shape[1], math.ceil(4 * m * sample.shape[1] / width))
    threshold = np.maximum(np.partition(sample, sample.shape[1] - keep, axis=1)[:, sample.shape[1] - keep], floor)
    counts = np.count_nonzero(scores >= threshold[:, None], axis=1)
    redo = np.flatnonzero(((counts < m) & (threshold > floor)) | (counts > max(64 * m, 4096)))
    if len(redo):  # the sample misled: the exact m-th largest score of those rows
        kth = max(width - m, 0)
        threshold[redo] = np.maximum(np.partition(scores[redo], kth, axis=1)[:, kth], floor)
    row, col = np.nonzero(scores >= threshold[:, None])
    order = np.lexsort((col, -scores[row, col], row))
    row, col = row[order], col[order]
    start = np.searchsorted(row, row, side="left")
    first = np.arange(len(row)) - start < m
    return row[first], col[first]


def _segment_cumsum(values: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``values`` within runs of equal ``row`` (row sorted), exclusive."""
    total = np.cumsum(values) - values
    start = np.searchsorted(row, row, side="left")
    return total - total[start]


def rank_pool_users(pool: PoolIndex, users: np.ndarray, vectors: np.ndarray, inv_norm: np.ndarray,
                    config: MatchConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``config.top_m`` pool users of one block of device users, as flat (row in block,
    pool user index, cosine) ordered by row, then rank; the step whose cost grows with users x pool."""
    scores = vectors @ pool.profiles.T  # exact integer dot products ...
    scores *= pool.inv_norm[None, :]  # ... then cosines, elementwise: the same whatever the block
    scores *= inv_norm[:, None]
    own = np.searchsorted(pool.users, users).clip(max=max(len(pool.users) - 1, 0))
    is_own = pool.users[own] == users if len(pool.users) else np.zeros(len(users), bool)
    scores[np.flatnonzero(is_own), own[is_own]] = -np.inf  # never a user's own samples
    scores[inv_norm == 0] = -np.inf  # an empty profile matches nothing
    row, col = top_columns(scores, config.top_m, config.min_similarity)
    return row, col, scores[row, col]


def take_samples(pool: PoolIndex, users: np.ndarray, row: np.ndarray, col: np.ndarray, similarity: np.ndarray,
                 budget: np.ndarray, config: MatchConfig) -> pa.Table:
    """Candidates from ranked pool users: most similar first, each one's newest samples first, within budget."""
    available = np.diff(pool.offsets)[col]
    if config.per_pool_user:
        available = np.minimum(available, config.per_pool_user)
    take = np.clip(budget[row] - _segment_cumsum(available, row), 0, available)
    row, col, similarity, take = row[take > 0], col[take > 0], similarity[take > 0], take[take > 0]
    first = np.cumsum(take) - take
    index = np.repeat(pool.offsets[col] - first, take) + np.arange(take.sum())
    out = pool.samples.take(pa.array(index, pa.int64()))
    return (out.append_column("target_user_id", pa.array(np.repeat(users[row], take), pa.int64()))
               .append_column("similarity", pa.array(np.repeat(similarity.astype(np.float32), take), pa.float32())))


@dataclass(frozen=True, eq=False)
class DeviceProfiles:
    """The device users to match (sorted), their quantized profiles and candidate budgets."""

    users: np.ndarray
    vectors: np.ndarray  # float32 [users, dims]
    inv_norm: np.ndarray
    budget: np.ndarray  # int64 candidates allowed per user


def device_profiles(train: pa.Table, users: np.ndarray, config: MatchConfig, spec: ProfileSpec) -> DeviceProfiles:
    """Profiles and budgets of ``users`` (sorted, distinct) from the training events in ``train``
    (columns ``user_id``, ``item_id``, ``label``); a user without events gets an empty profile.

    In deployment each device computes its vector with :func:`cloud_pool.profiles.profile` and uploads
    it; the simulation computes them all at once (the same function, vectorised).
    """
    train_user = train.column("user_id").to_numpy()
    mine = np.isin(train_user, users)
    ids, quantized = profiles(train_user[mine], train.column("item_id").to_numpy()[mine],
                              train.column("label").to_numpy()[mine], spec)
    vectors = np.zeros((len(users), spec.dims), dtype=np.uint8)
    local = np.zeros(len(users), dtype=np.int64)
    at = np.searchsorted(users, ids)
    vectors[at] = quantized
    local[at] = np.bincount(np.searchsorted(ids, train_user[mine]), minlength=len(ids))
    budget = np.maximum(config.min_budget, np.ceil(config.budget_multiplier * local)).astype(np.int64)
    return DeviceProfiles(users, *_matrix(vectors), budget)


class Matcher:
    """The pool loaded once (samples sorted, profiles) to match any number of device-user sets against it."""

    def __init__(self, pool_dir: str | Path, data: PreparedDataset, config: MatchConfig = MatchConfig()):
        summary = check_pool(pool_dir)
        self.pool_dir, self.data, self.config = Path(pool_dir), data, config
        with open_store(pool_dir) as store:
            table = store.read_table()
        self._refuse_test_events(table.column("event_id"))
        table = shared_events(table, pool_config(summary))
        self.spec = config.profile_spec(table.column("item_id").to_numpy(), data.items)
        self.pool = PoolIndex.build(table, self.spec)
        self.train = pq.read_table(Path(data.root) / "train.parquet", columns=["user_id", "item_id", "label"])

    def _refuse_test_events(self, event_ids: pa.ChunkedArray) -> None:
        """Any writer may feed the store (e.g. the Kafka consumer), so it may hold an evaluation event, of any
        user: never match on such a pool."""
        test_ids = pq.read_table(Path(self.data.root) / "test.parquet", columns=["event_id"]).column("event_id")
        leaked = pc.is_in(event_ids, value_set=test_ids)
        count = pc.sum(leaked).as_py() or 0
        if count:
            example = event_ids.filter(leaked)[0].as_py()
            raise RecflError(f"{self.pool_dir}: the pool holds {count} test event(s) of {self.data.root} (e.g. {example}); "
                             "matching on it would leak evaluation data into the candidates")

    def device_users(self, users: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)) -> np.ndarray:
        """The pool's device users (or ``users``, which must have training events) that fall in ``shard``, sorted."""
        index, count = shard
        if not 0 <= index < count:
            raise RecflError(f"shard {index}/{count}: expected 0 <= i < n")
        if users is None:
            wanted = load_split(self.pool_dir).device_users
        else:
            wanted = np.unique(np.asarray(users, dtype=np.int64))
            unknown = np.setdiff1d(wanted, self.train.column("user_id").to_numpy())
            if len(unknown):
                raise RecflError(f"{len(unknown)} user(s) have no training events in {self.data.root} (e.g. {unknown[0]})")
        return wanted[shard_of(wanted, count) == index]

    def profiles(self, users: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)) -> DeviceProfiles:
        return device_profiles(self.train, self.device_users(users, shard), self.config, self.spec)

    def blocks(self, users: np.ndarray | None = None, shard: tuple[int, int] = (0, 1),
               progress: bool = False) -> Iterator[pa.Table]:
        """The candidates of ``shard``'s device users, one Arrow table per block of ``config.block_size`` users."""
        device, pool, size = self.profiles(users, shard), self.pool, self.config.block_size
        log.info("matching %d device users against %d pool users (%d samples, %d dims)", len(device.users),
                 len(pool.users), pool.samples.num_rows, self.spec.dims)
        for lo in tqdm(range(0, len(device.users), size), desc="matching", unit="block", disable=not progress, leave=False):
            interrupts.check()
            part = slice(lo, lo + size)
            ranked = rank_pool_users(pool, device.users[part], device.vectors[part], device.inv_norm[part], self.config)
            yield take_samples(pool, device.users[part], *ranked, device.budget[part], self.config)

    def candidates(self, users: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)) -> pd.DataFrame:
        """The candidates table of ``shard``'s device users (or ``users``), in memory."""
        tables = list(self.blocks(users, shard))
        return to_frame(pa.concat_tables(tables) if tables else candidate_schema().empty_table())


def iter_candidates(pool_dir: str | Path, data: PreparedDataset, config: MatchConfig = MatchConfig(),
                    users: np.ndarray | None = None, shard: tuple[int, int] = (0, 1),
                    progress: bool = False) -> Iterator[pa.Table]:
    """:meth:`Matcher.blocks` of a freshly loaded pool."""
    return Matcher(pool_dir, data, config).blocks(users, shard, progress)


def match_candidates(pool_dir: str | Path, data: PreparedDataset, config: MatchConfig = MatchConfig(),
                     users: np.ndarray | None = None, shard: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """The candidates table of the device users (or ``users``) in ``shard``, in memory.

    Each call loads the pool; to match many user sets, make one :class:`Matcher` and call its ``candidates``.
    """
    return Matcher(pool_dir, data, config).candidates(users, shard)


def write_candidates(pool_dir: str | Path, data: PreparedDataset, out_dir: str | Path, config: MatchConfig = MatchConfig(),
                     users: np.ndarray | None = None, shard: tuple[int, int] = (0, 1), progress: bool = True) -> dict:
    """Stream ``shard``'s candidates to ``out_dir/shard-iiii-of-nnnn.parquet`` (one row group per block)."""
    started = time.perf_counter()
    path = shard_path(out_dir, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = candidate_schema().with_metadata({"recfl.matching": json.dumps(asdict(config), sort_keys=True)})
    rows = targets = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for block in iter_candidates(pool_dir, data, config, users, shard, progress):
            writer.write_table(block.select(schema.names).cast(schema))
            rows += block.num_rows
            targets += len(pc.unique(block.column("target_user_id")))
    return {"path": str(path), "shard": f"{shard[0]}/{shard[1]}", "candidates": rows, "users_with_candidates": targets,
            "seconds": round(time.perf_counter() - started, 2)}


__all__ = ["DeviceProfiles", "MatchConfig", "Matcher", "PoolIndex", "device_profiles", "iter_candidates",
           "match_candidates", "parse_shard", "rank_pool_users", "shard_of", "take_samples", "top_columns",
           "write_candidates"]
