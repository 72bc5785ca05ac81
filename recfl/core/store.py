"""The cloud pool store: canonical events as day-partitioned Parquet, append-only.

Writes are durable and idempotent by ``event_id``: an SQLite index (WAL,
``synchronous=FULL``) records every stored event id and the file holding it.
An append takes the index's write lock, drops ids already stored, writes the
new rows to Parquet (temporary file, fsync, rename) and commits their ids in
the same transaction. A crash before the commit leaves at most an
unreferenced file, which the next writer deletes; a crash after it loses
nothing, and a replay of the same events is skipped as duplicates. Several
processes may append to one pool at once.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfl.core.atomic import atomic_path
from recfl.core.errors import RecflError
from recfl.core.schema import EVENT_COLUMNS, conform

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (file TEXT PRIMARY KEY, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, file TEXT NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class AppendResult:
    """What one append did: rows written, and rows skipped because already stored."""

    written: int
    duplicates: int


class PoolStore:
    """A pool directory: ``index.sqlite`` plus ``data/day=YYYY-MM-DD/*.parquet``."""

    def __init__(self, root: str | Path, create: bool = True):
        self.root = Path(root)
        if not create and not (self.root / "index.sqlite").is_file():
            raise RecflError(f"{self.root}: not a cloud pool (no index.sqlite)")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._orphans_checked = False

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "PoolStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, events: pd.DataFrame) -> AppendResult:
        """Store the events not stored yet; returns counts. Durable when it returns."""
        if events.empty:
            return AppendResult(0, 0)
        batch = conform(events)
        unique = batch.drop_duplicates("event_id")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if not self._orphans_checked:  # once per opening: a long stream must not rescan every file per batch
                self._remove_orphans()
                self._orphans_checked = True
            db.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (event_id TEXT PRIMARY KEY)")
            db.execute("DELETE FROM incoming")
            db.executemany("INSERT INTO incoming VALUES (?)", ((e,) for e in unique["event_id"]))
            stored = {r[0] for r in db.execute("SELECT event_id FROM incoming JOIN events USING (event_id)")}
            fresh = unique[~unique["event_id"].isin(stored)]
            for day, rows in fresh.groupby(pd.to_datetime(fresh["timestamp"], unit="s").dt.strftime("%Y-%m-%d")):
                name = self._write_file(day, rows)
                db.execute("INSERT INTO files VALUES (?, ?)", (name, len(rows)))
                db.executemany("INSERT INTO events VALUES (?, ?)", ((e, name) for e in rows["event_id"]))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return AppendResult(len(fresh), len(batch) - len(fresh))

    def _write_file(self, day: str, rows: pd.DataFrame) -> str:
        folder = self.root / "data" / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"day={day}/{uuid.uuid4().hex}.parquet"
        with atomic_path(self.root / "data" / name, durable=True) as tmp:
            pq.write_table(pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False), tmp)
        return name

    def _remove_orphans(self) -> None:
        """Delete data files no committed append references (left by a crash); needs the write lock."""
        known = {r[0] for r in self._db.execute("SELECT file FROM files")}
        for path in (self.root / "data").glob("day=*/*"):
            name = path.relative_to(self.root / "data").as_posix()
            if name not in known:
                path.unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """Committed data files, in commit order."""
        return [self.root / "data" / r[0] for r in self._db.execute("SELECT file FROM files ORDER BY rowid")]

    def count(self) -> int:
        """Number of stored events."""
        return int(self._db.execute("SELECT COALESCE(SUM(rows), 0) FROM files").fetchone()[0])

    def read(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All stored events (canonical columns, or the ``columns`` asked for)."""
        if not self.files():
            return conform(pd.DataFrame({c: [] for c in EVENT_COLUMNS}))[columns or list(EVENT_COLUMNS)]
        return self.read_table(columns).to_pandas()

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """All stored events as one Arrow table (no Python objects: cheap for millions of rows)."""
        columns = columns or list(EVENT_COLUMNS)
        files = self.files()
        if not files:
            return pa.Table.from_pandas(self.read(columns), preserve_index=False)
        return pa.concat_tables([pq.read_table(f, columns=columns, partitioning=None) for f in files])
