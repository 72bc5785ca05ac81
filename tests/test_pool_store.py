"""The pool store: idempotent appends, crash leftovers cleaned, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp

import pandas as pd
import pytest

from recfl.core.errors import RecflError
from recfl.core.formats import SyntheticSpec, load
from recfl.core.store import PoolStore


@pytest.fixture(scope="module")
def events():
    return load("synthetic", None, SyntheticSpec(users=60, items=200, seed=3)).events


def test_append_is_idempotent_by_event_id(tmp_path, events):
    with PoolStore(tmp_path / "pool") as pool:
        first = pool.append(events.iloc[:1000])
        again = pool.append(events.iloc[500:1500])
        assert (first.written, first.duplicates) == (1000, 0)
        assert (again.written, again.duplicates) == (500, 500)
        stored = pool.read()
    assert pool_count(tmp_path / "pool") == 1500
    assert stored["event_id"].is_unique and set(stored["event_id"]) == set(events["event_id"].iloc[:1500])
    pd.testing.assert_frame_equal(
        stored.sort_values("event_id").reset_index(drop=True),
        events.iloc[:1500].sort_values("event_id").reset_index(drop=True),
    )


def pool_count(root):
    with PoolStore(root, create=False) as pool:
        return pool.count()


def test_duplicates_inside_one_batch_are_stored_once(tmp_path, events):
    with PoolStore(tmp_path / "p") as pool:
        result = pool.append(pd.concat([events.iloc[:10], events.iloc[:10]]))
        assert (result.written, result.duplicates) == (10, 10)


def test_partitions_by_day_and_removes_crash_leftovers(tmp_path, events):
    with PoolStore(tmp_path / "p") as pool:
        pool.append(events.iloc[:300])
        days = {f.parent.name for f in pool.files()}
        assert len(days) > 1 and all(d.startswith("day=") for d in days)
        orphan = next(iter(pool.files())).parent / "deadbeef.parquet"
    orphan.write_bytes(b"half-written")  # what a writer killed before its commit leaves behind
    (orphan.parent / "x.parquet.tmp").write_bytes(b"")
    with PoolStore(tmp_path / "p") as pool:  # the next writer to open the pool cleans up
        pool.append(events.iloc[300:310])
        assert not orphan.exists() and not (orphan.parent / "x.parquet.tmp").exists()
        assert pool.count() == 310 and len(pool.read()) == 310


def test_not_a_pool(tmp_path):
    with pytest.raises(RecflError, match="not a cloud pool"):
        PoolStore(tmp_path / "nothing", create=False)


def _writer(root, frame):
    with PoolStore(root) as pool:
        for lo in range(0, len(frame), 50):
            pool.append(frame.iloc[lo : lo + 50])


def test_concurrent_writers_store_each_event_once(tmp_path, events):
    part = events.iloc[:600]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path / "p", part.sample(frac=1, random_state=s))) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with PoolStore(tmp_path / "p") as pool:
        stored = pool.read()
    assert len(stored) == 600 and stored["event_id"].is_unique
