"""Building the cloud pool: who shares, what enters the pool (train events of sharing users only)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from cloud_pool.pool import assign_roles, build_pool
from cloud_pool.profiles import pool_frequencies
from recfl.core.errors import RecflError
from recfl.core.pool import load_split, open_store, pool_summary
from recfl.core.schema import unit_hash


def test_roles_come_from_a_salted_blake2b_hash_not_pythons_hash():
    ids = np.array([0, 1, 42, 10**15, 7], dtype=np.int64)
    expected = [(int.from_bytes(hashlib.blake2b(f"s:{u}".encode(), digest_size=8).digest(), "big") >> 11) / 2**53 for u in ids]
    assert unit_hash(ids, "s").tolist() == expected
    users = np.arange(20_000)
    split = assign_roles(users, 0.3, "s")
    assert abs(len(split.sharing_users) / len(users) - 0.3) < 0.02
    assert np.array_equal(np.sort(np.concatenate([split.sharing_users, split.device_users])), users)
    # a user's role does not depend on the other users, and another salt picks other users
    assert np.array_equal(assign_roles(users[::2], 0.3, "s").sharing_users, split.sharing_users[split.sharing_users % 2 == 0])
    assert not np.array_equal(assign_roles(users, 0.3, "t").sharing_users, split.sharing_users)
    with pytest.raises(RecflError, match="share fraction"):
        assign_roles(users, 1.5, "s")


def test_pool_holds_exactly_the_sharing_users_training_events(small_pool):
    data, split = small_pool.data, small_pool.split
    with open_store(small_pool.pool_dir) as store:
        stored = store.read()
    expected = data.train[data.train["user_id"].isin(split.sharing_users)]
    assert set(stored["event_id"]) == set(expected["event_id"]) and len(stored) == len(expected)
    assert not stored["event_id"].isin(data.test["event_id"]).any()
    assert not stored["user_id"].isin(split.device_users).any()
    assert len(split.sharing_users) and len(split.device_users)
    assert np.intersect1d(split.sharing_users, split.device_users).size == 0
    everyone = np.union1d(data.train["user_id"], data.test["user_id"])
    assert np.array_equal(np.union1d(split.sharing_users, split.device_users), everyone)
    loaded = load_split(small_pool.pool_dir)
    assert np.array_equal(loaded.sharing_users, split.sharing_users) and np.array_equal(loaded.device_users, split.device_users)
    assert loaded.sharing_users.dtype == np.int64
    summary = json.loads((small_pool.pool_dir / "pool.json").read_text())
    assert summary["pool_events"] == len(expected) and summary["sharing_users"] == len(split.sharing_users)
    assert pool_summary(small_pool.pool_dir) == {**summary, "shared_events": len(expected)}
    _categories, items = pool_frequencies(stored["item_id"].to_numpy(), data.items)
    assert dict(zip(items.ids, items.counts)) == expected["item_id"].value_counts().to_dict()


def test_rebuild_is_idempotent_and_other_settings_are_refused(small_pool, tmp_path):
    data = small_pool.data
    first = build_pool(data, tmp_path / "p", 0.4, "x")
    again = build_pool(data, tmp_path / "p", 0.4, "x")
    assert np.array_equal(first.sharing_users, again.sharing_users)
    summary = json.loads((tmp_path / "p" / "pool.json").read_text())
    assert summary["written"] == 0 and summary["duplicates"] == summary["pool_events"] > 0
    with pytest.raises(RecflError, match="already built"):
        build_pool(data, tmp_path / "p", 0.5, "x")


def test_load_split_of_a_missing_pool(tmp_path):
    with pytest.raises(RecflError, match="not a cloud pool"):
        load_split(tmp_path)


def test_pool_roles_file(small_pool):
    roles = pd.read_parquet(small_pool.pool_dir / "users.parquet")
    assert set(roles["role"]) == {"sharing", "device"} and roles["user_id"].is_unique
