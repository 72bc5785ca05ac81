"""The pool store: idempotent appends, conflicts reported, crash leftovers settled, concurrent writers, and no
duplicate row in the raw files whichever writer is SIGKILLed where."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recfl.core.errors import EnvironmentFault, RecflError
from recfl.core.formats import SyntheticSpec, load
from recfl.core.store import STAGING, PoolStore


@pytest.fixture(scope="module")
def events():
    return load("synthetic", None, SyntheticSpec(users=60, items=200, seed=3)).events


def test_append_is_idempotent_by_event_id(tmp_path, events):
    with PoolStore(tmp_path / "pool") as pool:
        first = pool.append(events.iloc[:1000])
        again = pool.append(events.iloc[500:1500])
        assert (first.written, first.duplicates, first.conflicts) == (1000, 0, ())
        assert (again.written, again.duplicates, again.conflicts) == (500, 500, ())
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
        assert (result.written, result.duplicates, result.conflicts) == (10, 10, ())


def test_same_id_with_other_content_is_a_conflict_and_the_first_version_stays(tmp_path, events):
    """It was counted as a duplicate and dropped silently."""
    batch = events.iloc[:5].reset_index(drop=True)
    changed = batch.iloc[[1]].assign(label=1 - batch["label"].iat[1])
    with PoolStore(tmp_path / "p") as pool:
        pool.append(batch)
        result = pool.append(pd.concat([changed, batch.iloc[[1]], events.iloc[5:7]], ignore_index=True))
        assert (result.written, result.duplicates, result.conflicts) == (2, 1, (0,))
        # inside one batch: the first version wins, a later identical copy is a duplicate
        fresh = events.iloc[[9]].reset_index(drop=True)
        other = fresh.assign(item_id=fresh["item_id"] + 1, behavior="changed")
        result = pool.append(pd.concat([fresh, other, fresh, other], ignore_index=True))
        assert (result.written, result.duplicates, result.conflicts) == (1, 1, (1, 3))
        stored = pool.read().set_index("event_id")
    assert stored.loc[batch["event_id"].iat[1], "label"] == batch["label"].iat[1]
    assert stored.loc[fresh["event_id"].iat[0], "item_id"] == fresh["item_id"].iat[0]


def test_an_index_without_digests_is_upgraded_in_place(tmp_path, events):
    """Pools written before conflict detection keep working; their events compare by id only."""
    root = tmp_path / "old"
    with PoolStore(root) as pool:
        pool.append(events.iloc[:20])
    with sqlite3.connect(root / "index.sqlite") as db:  # what an older recfl left
        db.execute("ALTER TABLE events DROP COLUMN digest")
    with PoolStore(root) as pool:
        changed = events.iloc[:3].assign(label=9)
        result = pool.append(pd.concat([changed, events.iloc[20:25]]))
        assert (result.written, result.duplicates, result.conflicts) == (5, 3, ())
        assert pool.count() == 25


def test_partitions_by_day_and_settles_what_killed_writers_left(tmp_path, events):
    root = tmp_path / "p"
    with PoolStore(root) as pool:
        pool.append(events.iloc[:300])
        files = pool.files()
        days = {f.parent.name for f in files}
        assert len(days) > 1 and all(d.startswith("day=") for d in days)
    staging = root / "data" / STAGING
    # a writer killed after its commit, before publishing: the file is still in staging
    committed = files[0]
    os.rename(committed, staging / f"{committed.parent.name}.{committed.name}")
    # writers killed before their commit: a staged file and a half-written temporary one
    orphans = [staging / "day=2024-01-01.deadbeef.parquet", staging / "day=2024-01-01.deadbeef.tmp.parquet"]
    for orphan in orphans:
        orphan.write_bytes(b"half-written")
    with PoolStore(root) as pool:
        assert pool.files()[0].parent == staging and len(pool.read()) == 300  # readers find it where it is
        pool.append(events.iloc[300:310])  # the next writer publishes it and deletes the rest
        assert committed.exists() and not any(staging.iterdir())
        assert pool.count() == 310 and len(pool.read()) == 310


def test_not_a_pool(tmp_path):
    with pytest.raises(RecflError, match="not a cloud pool"):
        PoolStore(tmp_path / "nothing", create=False)


def _writer(root, frame, start=None, pause=None, kill_at=None, appended=None):
    """Append ``frame`` in chunks of 25: after ``start.wait()``; with ``pause=(done, go)``, set ``done`` after the
    first chunk and wait for ``go``; counting the chunks stored in ``appended`` (a shared integer), then waiting to
    be killed. ``kill_at=(function, "before"|"after", n)`` SIGKILLs this process around its
    n-th call of ``os.fsync`` (a file written) or ``os.rename`` (a file published)."""
    if kill_at is not None:
        name, when, call = kill_at
        original, calls = getattr(os, name), []

        def patched(*args, **kwargs):
            calls.append(1)
            if when == "before" and len(calls) == call:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if when == "after" and len(calls) == call:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        setattr(os, name, patched)
    with PoolStore(root) as pool:
        if start is not None:
            start.wait()
        for lo in range(0, len(frame), 25):
            pool.append(frame.iloc[lo : lo + 25])
            if appended is not None:
                appended.value += 1
            if pause is not None and lo == 0:
                pause[0].set()
                pause[1].wait()
        if appended is not None:  # to be killed: done too soon on a fast disk, it waits for the signal
            time.sleep(120)


def raw_event_ids(root) -> list[str]:
    """Every row of the raw data files, read as tools would: a glob of the day folders, and pyarrow's dataset
    discovery on ``data/`` (which skips ``_staging`` like any ``_``-prefixed path); each must be unique."""
    paths = sorted((root / "data").glob("day=*/*.parquet"))
    ids = [e for p in paths for e in pq.read_table(p, columns=["event_id"])["event_id"].to_pylist()]
    discovered = ds.dataset(root / "data", schema=pa.schema([("event_id", pa.string())]), format="parquet",
                            partitioning="hive").to_table()
    for read in (ids, discovered["event_id"].to_pylist()):
        assert len(read) == len(set(read)), f"{len(read) - len(set(read))} duplicate rows in the raw files"
    return ids


def run_writers(root, part, kill_at=None, kill_after=None):
    """Two writers of the same events in different orders; the second is SIGKILLed, at a point of the write
    protocol after the first one has written (and checked for leftovers), or by us while both write:
    ``kill_after=(chunks, seconds)`` kills it that long after it stored that many chunks (it is still writing
    unless the machine is fast, and then waits for the kill). The raw files are checked right after the kill, and once the
    first writer is done."""
    ctx = mp.get_context("spawn")
    ready, go, appended = ctx.Event(), ctx.Event(), ctx.Value("i", 0)
    if kill_at is not None:
        survivor = ctx.Process(target=_writer, args=(root, part.sample(frac=1, random_state=1), None, (ready, go)))
        victim = ctx.Process(target=_writer, args=(root, part.sample(frac=1, random_state=2), ready, None, kill_at))
    else:
        start = ctx.Barrier(2)
        survivor = ctx.Process(target=_writer, args=(root, part.sample(frac=1, random_state=1), start))
        victim = ctx.Process(target=_writer, args=(root, part.sample(frac=1, random_state=2), start, None, None,
                                                   appended))
    survivor.start()
    victim.start()
    try:
        if kill_after is not None:
            chunks, seconds = kill_after
            deadline = time.monotonic() + 120
            while appended.value < chunks and victim.is_alive() and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(seconds)
            victim.kill()
        victim.join(120)
        assert victim.exitcode == -signal.SIGKILL
        raw_event_ids(root)
        go.set()
        survivor.join(120)
        assert survivor.exitcode == 0
    finally:
        for process in (survivor, victim):
            process.kill()
            process.join()
    assert sorted(raw_event_ids(root)) == sorted(part["event_id"])
    with PoolStore(root) as pool:
        assert pool.count() == len(part) and pool.read()["event_id"].is_unique


@pytest.mark.parametrize("kill_at", [("fsync", "after", 2), ("rename", "before", 2), ("rename", "after", 2)],
                         ids=["written-not-committed", "committed-not-published", "published"])
def test_no_raw_file_ever_holds_a_duplicate_when_a_writer_is_killed(tmp_path, events, kill_at):
    """A writer SIGKILLed right after renaming its Parquet file (before its commit) left rows another writer
    stored again: the index stayed right, but the raw files held duplicates."""
    run_writers(tmp_path / "p", events.iloc[:300], kill_at=kill_at)


def test_no_raw_file_ever_holds_a_duplicate_when_writers_are_killed_at_random(tmp_path, events):
    rng = random.Random(5)
    for attempt in range(3):
        run_writers(tmp_path / f"p{attempt}", events.iloc[:300], kill_after=(rng.randint(1, 8), rng.uniform(0, 0.005)))


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


def _opener(roots, start, failures):
    """Open each fresh pool in ``roots`` at the same moment as the other openers."""
    for root in roots:
        start.wait(60)
        try:
            PoolStore(root).close()
        except EnvironmentFault as exc:
            failures.put(str(exc))


def test_processes_opening_a_new_pool_at_once_all_get_it(tmp_path):
    """Two processes creating the index at the same moment: one got 'database is locked' (SQLite fails a switch to
    WAL at once, without its busy wait), which stopped a writer under load (3 of 240 openers, measured)."""
    ctx = mp.get_context("spawn")
    start, failures = ctx.Barrier(4), ctx.Queue()
    roots = [tmp_path / f"p{k}" for k in range(40)]
    procs = [ctx.Process(target=_opener, args=(roots, start, failures)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert failures.empty(), failures.get()


FULL_DISK = textwrap.dedent("""
    import os, sys
    import pandas as pd
    from recfl.core.errors import EnvironmentFault
    from recfl.core.formats import SyntheticSpec, load
    from recfl.core.store import PoolStore

    root = sys.argv[1]
    events = load("synthetic", None, SyntheticSpec(users=60, items=200, seed=3)).events
    with PoolStore(root) as pool:
        pool.append(events.iloc[:50])
        filler = os.path.join(root, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk, then give back a little room
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            os.close(fd)
        os.truncate(filler, os.path.getsize(filler) - int(sys.argv[2]))
        try:
            pool.append(events.iloc[50:53])
        except EnvironmentFault as exc:
            print(exc)
        os.unlink(filler)
        after = pool.append(events.iloc[50:60])
        print(pool.count(), after.written, sorted(os.listdir(os.path.join(root, "data", "_staging"))))
""")


@pytest.mark.parametrize("room", [4096, 8192, 16384])
def test_a_full_disk_is_reported_as_itself_and_leaves_the_store_whole(tmp_path, room):
    """Disk full at the SQLite commit gave `cannot rollback - no transaction is active`, hiding the real error."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small private tmpfs")
    root = tmp_path / "pool"
    root.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    mount = f"mount -t tmpfs -o size=1m tmpfs {root} && exec {sys.executable} {script} {root} {room}"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount],
                          capture_output=True, text=True, timeout=120)
    if done.returncode and "mount" in done.stderr and "Traceback" not in done.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    error, summary = done.stdout.strip().splitlines()
    assert error.startswith(f"cannot write the pool at {root}: ")
    assert "disk is full" in error or "No space left on device" in error
    assert "rollback" not in error
    assert summary == "60 10 []"  # the failed append stored nothing and left nothing behind
