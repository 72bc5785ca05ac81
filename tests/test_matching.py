"""Coarse matching: exact against a brute-force reference, budgets, shards, never own or test samples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cloud_pool.matching import (
    MatchConfig,
    Matcher,
    match_candidates,
    parse_shard,
    shard_of,
    top_columns,
    write_candidates,
)
from cloud_pool.profiles import profile, profiles
from recfl.core.candidates import read_candidates
from recfl.core.errors import RecflError
from recfl.core.pool import open_store

CONFIG = MatchConfig(top_m=8, budget_multiplier=3.0, min_budget=20, block_size=16)


@pytest.fixture(scope="module")
def candidates(small_pool):
    return match_candidates(small_pool.pool_dir, small_pool.data, CONFIG)


def brute_force(small_pool, config):
    """Reference: full similarity matrix, Python sort per user, pandas for the budget."""
    data, pool_dir = small_pool.data, small_pool.pool_dir
    spec = Matcher(pool_dir, data, config).spec
    with open_store(pool_dir) as store:
        pool = store.read()
    pool_users, pool_q = profiles(pool["user_id"].to_numpy(), pool["item_id"].to_numpy(), pool["label"].to_numpy(), spec)
    train = data.train[data.train["user_id"].isin(small_pool.split.device_users)]
    users, dev_q = profiles(train["user_id"].to_numpy(), train["item_id"].to_numpy(), train["label"].to_numpy(), spec)
    dot = (dev_q.astype(np.int64) @ pool_q.astype(np.int64).T).astype(np.float32)
    inv = lambda q: np.float32(1) / np.sqrt((q.astype(np.int64) ** 2).sum(1)).astype(np.float32)  # noqa: E731
    cos = dot * inv(pool_q)[None, :] * inv(dev_q)[:, None]
    ordered = pool.sort_values(["user_id", "timestamp", "event_id"], ascending=[True, False, True])
    by_user = {u: g for u, g in ordered.groupby("user_id", sort=False)}
    local = train["user_id"].value_counts()
    parts = []
    for i, user in enumerate(users):
        ranked = sorted((j for j in range(len(pool_users)) if cos[i, j] > config.min_similarity), key=lambda j: (-cos[i, j], j))
        budget = max(config.min_budget, int(np.ceil(config.budget_multiplier * local[user])))
        for j in ranked[: config.top_m]:
            if budget <= 0:
                break
            rows = by_user[pool_users[j]].iloc[:budget]
            parts.append(rows.assign(target_user_id=user, similarity=np.float32(cos[i, j])))
            budget -= len(rows)
    return pd.concat(parts, ignore_index=True)


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b[list(a.columns)].reset_index(drop=True), check_dtype=False)


def test_equals_brute_force_reference(small_pool, candidates):
    same(candidates, brute_force(small_pool, CONFIG))


def test_never_own_or_test_samples_and_only_pool_samples(small_pool, candidates):
    data = small_pool.data
    assert len(candidates) > 0
    assert not (candidates["user_id"] == candidates["target_user_id"]).any()
    assert not candidates["event_id"].isin(data.test["event_id"]).any()
    assert candidates["user_id"].isin(small_pool.split.sharing_users).all()
    assert candidates["target_user_id"].isin(small_pool.split.device_users).all()
    # structurally: every candidate is a stored pool sample, and the pool has no test event
    with open_store(small_pool.pool_dir) as store:
        pool_ids = set(store.read(["event_id"])["event_id"])
    assert set(candidates["event_id"]) <= pool_ids and not pool_ids & set(data.test["event_id"])


def test_a_test_event_streamed_into_the_pool_stops_matching(small_pool, tmp_path):
    """The pool store also takes events from Kafka; one evaluation event there must not reach candidates."""
    import shutil

    from recfl.core.store import PoolStore

    pool = tmp_path / "pool"
    shutil.copytree(small_pool.pool_dir, pool)
    leaked = small_pool.data.test[small_pool.data.test["user_id"].isin(small_pool.split.sharing_users)].head(1)
    with PoolStore(pool / "store") as store:
        assert store.append(leaked).written == 1
    with pytest.raises(RecflError, match=rf"holds 1 test event\(s\) of .* \(e.g. {leaked['event_id'].iat[0]}\)"):
        match_candidates(pool, small_pool.data, MatchConfig())


def test_budget_and_top_m_are_respected(small_pool, candidates):
    local = small_pool.data.train["user_id"].value_counts()
    per_user = candidates.groupby("target_user_id")
    budget = np.maximum(CONFIG.min_budget, np.ceil(CONFIG.budget_multiplier * local[per_user.size().index].to_numpy()))
    assert (per_user.size().to_numpy() <= budget).all()
    assert (per_user.size().to_numpy() == budget).mean() > 0.5  # most users fill their budget
    assert (per_user["user_id"].nunique() <= CONFIG.top_m).all()
    assert (candidates.groupby("target_user_id")["similarity"].is_monotonic_decreasing).all()


def test_per_pool_user_cap_and_min_similarity(small_pool):
    config = MatchConfig(top_m=8, budget_multiplier=3.0, min_budget=20, per_pool_user=5, min_similarity=0.5)
    got = match_candidates(small_pool.pool_dir, small_pool.data, config)
    assert got.groupby(["target_user_id", "user_id"]).size().max() <= 5
    assert (got["similarity"] > 0.5).all()


def test_block_size_and_reruns_do_not_change_results(small_pool, candidates):
    for block in (1, 7, 10_000):
        same(candidates, match_candidates(small_pool.pool_dir, small_pool.data, MatchConfig(**{**CONFIG.__dict__, "block_size": block})))


def test_shards_union_equals_unsharded(small_pool, candidates, tmp_path):
    for i in range(3):
        write_candidates(small_pool.pool_dir, small_pool.data, tmp_path, CONFIG, shard=(i, 3), progress=False)
    same(candidates, read_candidates(tmp_path))
    some = candidates["target_user_id"].unique()[:4]
    same(candidates[candidates["target_user_id"].isin(some)], read_candidates(tmp_path, users=some))
    (tmp_path / "shard-0001-of-0003.parquet").unlink()
    with pytest.raises(RecflError, match=r"shard\(s\) \[1\] of 3 missing"):
        read_candidates(tmp_path)


def test_shard_assignment_is_deterministic_and_balanced():
    users = np.arange(10_000)
    shard = shard_of(users, 4)
    assert np.array_equal(shard, shard_of(users[::-1], 4)[::-1])
    assert np.bincount(shard).min() > 2300
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1-2"):
        with pytest.raises(RecflError, match="--shard"):
            parse_shard(bad)


def test_users_subset_matches_the_same_rows(small_pool, candidates):
    some = small_pool.split.device_users[::5]
    same(candidates[candidates["target_user_id"].isin(some)],
         match_candidates(small_pool.pool_dir, small_pool.data, CONFIG, users=some))
    matcher = Matcher(small_pool.pool_dir, small_pool.data, CONFIG)  # one pool load, many user sets
    for part in (small_pool.split.device_users[1::5], small_pool.split.device_users[2::5]):
        same(candidates[candidates["target_user_id"].isin(part)], matcher.candidates(part))
    with pytest.raises(RecflError, match="no training events"):
        match_candidates(small_pool.pool_dir, small_pool.data, CONFIG, users=np.array([-5]))


def test_device_profile_of_one_user_equals_the_batch_row(small_pool):
    spec = Matcher(small_pool.pool_dir, small_pool.data, CONFIG).spec
    train = small_pool.data.train
    users, batch = profiles(train["user_id"].to_numpy(), train["item_id"].to_numpy(), train["label"].to_numpy(), spec)
    for k in (0, 5, len(users) - 1):
        mine = train[train["user_id"] == users[k]]
        vector = profile(mine, spec)
        assert vector.dtype == np.uint8 and vector.shape == (spec.dims,) and np.array_equal(vector, batch[k])
    chunked = profiles(train["user_id"].to_numpy(), train["item_id"].to_numpy(), train["label"].to_numpy(), spec, chunk=7)[1]
    assert np.array_equal(chunked, batch)
    assert batch.max() == spec.levels and spec.dims * spec.levels**2 < 2**24  # dot products exact in float32


def test_items_only_profiles_match_data_without_categories(small_pool):
    config = MatchConfig(top_m=8, budget_multiplier=3.0, min_budget=20, category_dims=0, item_dims=300)
    got = match_candidates(small_pool.pool_dir, small_pool.data, config)
    assert got["target_user_id"].nunique() > 0.9 * len(small_pool.split.device_users)
    with pytest.raises(RecflError, match="category_dims \+ item_dims > 0"):
        match_candidates(small_pool.pool_dir, small_pool.data, MatchConfig(category_dims=0, item_dims=0))


@pytest.mark.parametrize("width", [5, 300, 9000])
def test_top_columns_is_exact_with_ties(width):
    rng = np.random.default_rng(width)
    scores = rng.integers(0, 6, size=(40, width)).astype(np.float32) / 5  # many ties
    scores[3] = 0.0  # nothing above the floor
    scores[4, : width // 2] = np.float32(0.7)  # a mass of ties at the top
    scores[5, ::3] = -np.inf
    row, col = top_columns(scores, 10, 0.0)
    for r in range(len(scores)):
        expected = sorted((c for c in range(width) if scores[r, c] > 0), key=lambda c: (-scores[r, c], c))[:10]
        assert col[row == r].tolist() == expected
