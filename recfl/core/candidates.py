"""Candidates files: what coarse matching writes for the devices, and how they are read back.

A candidates directory holds ``shard-iiii-of-nnnn.parquet`` files, one per
matching shard. Each row is a pool sample: the canonical event columns
(``user_id`` is the pool user who owns it) plus ``target_user_id`` (the
device user it was matched for) and ``similarity`` (float32), ordered by
target user, then rank.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfl.core.errors import RecflError
from recfl.core.schema import EVENT_COLUMNS

CANDIDATE_COLUMNS: dict[str, str] = {**EVENT_COLUMNS, "target_user_id": "int64", "similarity": "float32"}
_SHARD_FILE = re.compile(r"shard-(\d{4})-of-(\d{4})\.parquet")


def candidate_schema() -> pa.Schema:
    return pa.schema([(name, pa.from_numpy_dtype(np.dtype(dtype)) if dtype != "string" else pa.string())
                      for name, dtype in CANDIDATE_COLUMNS.items()])


def to_frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow candidates table as a DataFrame with the documented dtypes."""
    return table.select(list(CANDIDATE_COLUMNS)).to_pandas().astype(CANDIDATE_COLUMNS)


def shard_path(out_dir: str | Path, shard: tuple[int, int]) -> Path:
    return Path(out_dir) / f"shard-{shard[0]:04d}-of-{shard[1]:04d}.parquet"


def read_candidates(out_dir: str | Path, users: np.ndarray | None = None) -> pd.DataFrame:
    """All shards of a candidates directory (or only the rows of ``users``); refuses an incomplete set."""
    out_dir = Path(out_dir)
    found = {}
    for path in out_dir.glob("shard-*-of-*.parquet"):
        match = _SHARD_FILE.fullmatch(path.name)
        if match:
            found[(int(match[1]), int(match[2]))] = path
    counts = {n for _, n in found}
    if len(counts) != 1:
        raise RecflError(f"{out_dir}: " + ("no candidate shards" if not counts else f"shards of different splits {sorted(counts)}"))
    (count,) = counts
    missing = [i for i in range(count) if (i, count) not in found]
    if missing:
        raise RecflError(f"{out_dir}: candidate shard(s) {missing} of {count} missing; run `recfl pool match --shard i/{count}`")
    filters = None if users is None else [("target_user_id", "in", [int(u) for u in np.unique(users)])]
    tables = [pq.read_table(found[(i, count)], filters=filters) for i in range(count)]
    table = pa.concat_tables(tables).sort_by([("target_user_id", "ascending")]) if count > 1 else tables[0]
    return to_frame(table)


__all__ = ["CANDIDATE_COLUMNS", "candidate_schema", "read_candidates", "shard_path", "to_frame"]
