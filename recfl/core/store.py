"""The cloud pool store: canonical events as day-partitioned Parquet, append-only, each event readable once.

Layout: ``index.sqlite`` (WAL, ``synchronous=FULL``), ``data/day=YYYY-MM-DD/<uuid>.parquet``
(the data), ``data/_staging/`` (files not yet published), ``index.lock``. The
index lists every data file and, for every stored ``event_id``, its file and a
64-bit digest of its content. Writes are durable and idempotent by
``event_id``; several processes may append at once, one at a time (a flock on
``index.lock``, then the index's write lock).

Write protocol (one append; a writer holds ``BEGIN IMMEDIATE`` from 1 to 4):

1. settle what dead writers left: a staging file the index lists is published
   (step 5), any other staging file is deleted (its writer died before step 4);
2. drop rows whose id is stored or repeated earlier in the batch: with the
   same digest a *duplicate*, with another one a *conflict* (reported, never
   stored: the first version of an event wins);
3. write each day's fresh rows to ``data/_staging/day=D.<uuid>.parquet``,
   fsync the files and the staging folder;
4. record the files and their ids in the index and commit;
5. publish: rename each file to ``data/day=D/<uuid>.parquet``.

Hence a file under a ``day=`` folder is always listed in the index, and the
index lists each id once: whoever reads the day folders (a glob of
``data/day=*/*.parquet``, or ``pyarrow.dataset`` on ``data/``, which skips
``_``-prefixed paths) can never see a row twice, whichever process is killed
where. A writer killed between 4 and 5 leaves a committed file in staging: the
store's own readers find it there, and the next append publishes it, so a raw
reader sees it from then on. Events indexed before digests existed (older
pools) count as duplicates of any new version.

The digest mixes the columns with splitmix64 in numpy: hashing each row in
Python (hashlib) would cost more than the rest of the write.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import logging
import os
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recfl.core.atomic import fsync_path
from recfl.core.errors import EnvironmentFault, RecflError
from recfl.core.schema import EVENT_COLUMNS, conform

log = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (file TEXT PRIMARY KEY, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, file TEXT NOT NULL, digest INTEGER) WITHOUT ROWID;
"""
_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "int8": pa.int8()}
ARROW_SCHEMA = pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in EVENT_COLUMNS.items()])
STAGING = "_staging"
_DIGEST_COLUMNS = ("user_id", "item_id", "category_id", "label", "timestamp")


@dataclass(frozen=True)
class AppendResult:
    """What one append did: rows written, rows skipped as already stored (same content), and the
    positions (in the appended batch) of rows whose id is stored with other content."""

    written: int
    duplicates: int
    conflicts: tuple[int, ...] = ()


class PoolStore:
    """A pool directory: ``index.sqlite`` plus ``data/day=YYYY-MM-DD/*.parquet``."""

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        self._lock: int | None = None
        if not create and not (self.root / "index.sqlite").is_file():
            raise RecflError(f"{self.root}: not a cloud pool (no index.sqlite)")
        try:
            (self.root / "data" / STAGING).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
            with self._turn():  # switching to WAL or creating tables while another process writes fails at once
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(_SCHEMA)
                self._add_digests()
        except (OSError, sqlite3.OperationalError) as exc:
            raise EnvironmentFault(f"cannot open the pool at {self.root}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # not a SQLite file, or a damaged one
            raise RecflError(f"{self.root}/index.sqlite: not a pool index ({exc})") from None

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            os.close(self._lock)

    def __enter__(self) -> "PoolStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, events: pd.DataFrame) -> AppendResult:
        """Store the events not stored yet; returns counts. Durable when it returns."""
        if events.empty:
            return AppendResult(0, 0)
        return self.append_table(pa.Table.from_pandas(conform(events), schema=ARROW_SCHEMA, preserve_index=False))

    def append_table(self, table: pa.Table) -> AppendResult:
        """:meth:`append` for an Arrow table with the canonical columns (the stream consumer's batches).

        Raises :class:`EnvironmentFault` when the disk or the index refuses the
        write (nothing is then stored); other errors come from the rows.
        """
        if not table.num_rows:
            return AppendResult(0, 0)
        table = table.select(list(ARROW_SCHEMA.names)).cast(ARROW_SCHEMA)
        if pc.any(pc.match_substring(table["event_id"], "\0")).as_py():  # SQLite's JSON functions end a string there
            raise ValueError("an event_id holds a NUL character")
        with self._turn():
            return self._append(table)

    @contextmanager
    def _turn(self):
        """This process's turn to write: a blocking flock on ``index.lock``, whose waiters the kernel wakes as it
        is released (SQLite's own busy wait polls with sleeps, and a busy writer can starve the others)."""
        try:
            if self._lock is None:
                self._lock = os.open(self.root / "index.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        except OSError as exc:
            raise EnvironmentFault(f"cannot lock the pool at {self.root}: {exc}") from None
        try:
            yield
        finally:
            fcntl.flock(self._lock, fcntl.LOCK_UN)

    def _append(self, table: pa.Table) -> AppendResult:
        db, files = self._db, []
        try:
            db.execute("BEGIN IMMEDIATE")
            self._settle()
            digests = _digests(table)
            keep, duplicates, conflicts = self._fresh(table, digests)
            fresh, digests = table.filter(pa.array(keep)), digests[keep]
            days = fresh["timestamp"].to_numpy() // 86_400
            for day in np.unique(days):
                rows = np.flatnonzero(days == day)
                name = f"day={datetime.date.fromordinal(_EPOCH_ORDINAL + int(day)).isoformat()}/{uuid.uuid4().hex}.parquet"
                files.append((name, rows))
                pq.write_table(fresh.take(rows), self._staging(name))
            for name, _ in files:
                fsync_path(self._staging(name))
            fsync_path(self.root / "data" / STAGING)
            for name, rows in files:
                ids = fresh["event_id"].take(rows).to_numpy(zero_copy_only=False).tolist()
                db.execute("INSERT INTO files VALUES (?, ?)", (name, len(rows)))
                db.execute("INSERT INTO events SELECT value->>0, ?, value->>1 FROM json_each(?) ORDER BY 1",
                           (name, msgspec.json.encode(list(zip(ids, digests[rows].tolist())))))
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:  # SQLite rolls back by itself on some failures (a full disk at commit)
                db.execute("ROLLBACK")
            for name, _ in files:
                self._staging(name).unlink(missing_ok=True)
            if _environmental(exc):
                raise EnvironmentFault(f"cannot write the pool at {self.root}: {exc}") from None
            raise
        try:
            for name, _ in files:
                self._publish(name)
        except OSError as exc:  # stored all the same: readers find the file in staging, the next append publishes it
            log.warning("cannot publish a pool file yet (%s); the next append will", exc)
        return AppendResult(int(keep.sum()), duplicates, conflicts)

    def _fresh(self, table: pa.Table, digests: np.ndarray) -> tuple[np.ndarray, int, tuple[int, ...]]:
        """Which rows to store (the first occurrence of an id not stored yet), how many rows are duplicates,
        and the positions of conflicts: rows whose id is stored, or earlier in the batch, with other content."""
        codes = table["event_id"].combine_chunks().dictionary_encode().indices.to_numpy()
        keep = codes > np.concatenate(([-1], np.maximum.accumulate(codes)[:-1]))  # codes count up from 0 in order
        first_rows = np.flatnonzero(keep)
        reference = digests[first_rows]  # by code: the version that wins, the first one unless one is stored
        unknown = np.zeros(len(first_rows), dtype=bool)  # stored before digests existed
        ids = table["event_id"].filter(pa.array(keep)).to_numpy(zero_copy_only=False).tolist()
        stored = self._db.execute("SELECT event_id, digest FROM events WHERE event_id IN (SELECT value FROM json_each(?))",
                                  (msgspec.json.encode(ids),)).fetchall()
        if stored:
            code_of = {event_id: code for code, event_id in enumerate(ids)}
            for event_id, digest in stored:
                code = code_of[event_id]
                keep[first_rows[code]] = False
                if digest is None:
                    unknown[code] = True
                else:
                    reference[code] = digest
        conflicts = np.flatnonzero(~keep & (digests != reference[codes]) & ~unknown[codes])
        return keep, int((~keep).sum()) - len(conflicts), tuple(conflicts.tolist())

    def _publish(self, name: str) -> None:
        """Move a committed file from staging into its day folder (done once: a missing staging file is published)."""
        target = self.root / "data" / name
        target.parent.mkdir(exist_ok=True)
        try:
            os.rename(self._staging(name), target)
        except FileNotFoundError:
            if not target.exists():
                raise

    def _settle(self) -> None:
        """Publish committed files a killed writer left in staging and delete the rest; needs the write lock."""
        for path in (self.root / "data" / STAGING).iterdir():
            name = path.name.replace(".", "/", 1)  # a day has no dot
            if self._db.execute("SELECT 1 FROM files WHERE file = ?", (name,)).fetchone():
                self._publish(name)
            else:
                path.unlink(missing_ok=True)

    def _add_digests(self) -> None:
        """Index files written before conflict detection have no digest column: add it (empty)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "digest" not in columns:
            self._db.execute("BEGIN IMMEDIATE")
            if "digest" not in {row[1] for row in self._db.execute("PRAGMA table_info(events)")}:
                self._db.execute("ALTER TABLE events ADD COLUMN digest INTEGER")
            self._db.execute("COMMIT")

    def files(self) -> list[Path]:
        """Committed data files, in commit order (in staging for a file not published yet)."""
        return [self._locate(r[0]) for r in self._db.execute("SELECT file FROM files ORDER BY rowid")]

    def version(self) -> str:
        """A digest of the committed files (names and rows): every append that stores a row changes it, and
        nothing else does (a rerun of the same events stores none). Read from the index alone."""
        rows = self._db.execute("SELECT file, rows FROM files ORDER BY rowid").fetchall()
        return hashlib.sha256(msgspec.json.encode(rows)).hexdigest()[:16]

    def unindexed(self) -> str | None:
        """What a hand edit left, if anything: a file in a day folder the index does not list, or a listed file
        that is gone. (The folders are listed before the index is read: a file is published only once indexed.)"""
        present = {f"{p.parent.name}/{p.name}" for p in (self.root / "data").glob("day=*/*")}
        listed = {r[0] for r in self._db.execute("SELECT file FROM files")}
        extra = sorted(present - listed)
        if extra:
            return f"{len(extra)} data file(s) not in its index, e.g. data/{extra[0]}"
        missing = sorted(name for name in listed - present if not self._locate(name).exists())
        if missing:
            return f"{len(missing)} data file(s) listed in its index are missing, e.g. data/{missing[0]}"
        return None

    def _staging(self, name: str) -> Path:
        """Where ``day=D/<uuid>.parquet`` waits before it is published: ``data/_staging/day=D.<uuid>.parquet``."""
        return self.root / "data" / STAGING / name.replace("/", ".", 1)

    def _locate(self, name: str) -> Path:
        published, staged = self.root / "data" / name, self._staging(name)
        return staged if not published.exists() and staged.exists() else published

    def count(self) -> int:
        """Number of stored events."""
        return int(self._db.execute("SELECT COALESCE(SUM(rows), 0) FROM files").fetchone()[0])

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All stored events (canonical columns, or the ``columns`` asked for)."""
        columns = columns or list(EVENT_COLUMNS)
        return self.read_table(columns).to_pandas().astype({c: EVENT_COLUMNS[c] for c in columns})

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """All stored events as one Arrow table (no Python objects: cheap for millions of rows)."""
        schema = pa.schema([ARROW_SCHEMA.field(c) for c in columns or ARROW_SCHEMA.names])
        names = [r[0] for r in self._db.execute("SELECT file FROM files ORDER BY rowid")]
        return pa.concat_tables([schema.empty_table(), *(self._read_file(name, schema) for name in names)])

    def _read_file(self, name: str, schema: pa.Schema) -> pa.Table:
        """One committed file, wherever it is (a writer may publish it while we look: then look again)."""
        for _ in range(3):
            try:
                table = pq.read_table(self._locate(name), columns=schema.names, partitioning=None)
            except FileNotFoundError:
                continue
            return table.cast(schema)
        raise RecflError(f"{self.root}: data file {name} listed in the index is missing")


_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _digests(table: pa.Table) -> np.ndarray:
    """A 64-bit digest of each row's content (every column but the id), as int64."""
    with np.errstate(over="ignore"):
        h = np.full(table.num_rows, 0x9E3779B97F4A7C15, dtype=np.uint64)
        for name in _DIGEST_COLUMNS:
            h = _mix(h ^ table[name].to_numpy().astype(np.int64).view(np.uint64))
        behavior = table["behavior"].combine_chunks().dictionary_encode()
        words = np.array([int.from_bytes(hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest(), "little")
                          for v in behavior.dictionary.to_pylist()] + [0], dtype=np.uint64)  # the last one: null
        codes = behavior.indices.fill_null(len(words) - 1).to_numpy()
        return _mix(h ^ words[codes]).view(np.int64)


def _mix(x):
    """splitmix64's finalizer: every input bit affects every output bit."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def _environmental(exc: BaseException) -> bool:
    """A fault of the disk or the index (full, read-only, unreadable), not of the rows being written."""
    return isinstance(exc, (OSError, MemoryError)) or type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError)
