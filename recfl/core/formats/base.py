"""What every loader returns, and the strict text reader they share.

Loaders refuse malformed files with one :class:`DataFormatError` naming the
file and line; rows that are well-formed but impossible (a timestamp of 15)
are dropped and counted in ``SourceData.dropped`` so nothing vanishes silently.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.errors import DataFormatError, RecflError
from recfl.core.schema import MAX_TIMESTAMP, MIN_TIMESTAMP


@dataclass
class SourceData:
    """A loaded data set in the canonical layout (see :mod:`recfl.core.schema`)."""

    source: str
    path: str
    label_rule: str
    events: pd.DataFrame
    items: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)
    time_rule: str = "timestamp = the source's event time (unix seconds)"


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a readable file, else a clear error saying what was expected."""
    if not path.exists():
        raise RecflError(f"{path}: no such file (expected {what})")
    if not path.is_file():
        raise RecflError(f"{path}: not a file (expected {what})")
    return path


def read_text(path: Path, encoding: str) -> str:
    """Whole file as text (``.gz`` transparently); a decoding error names its line."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataFormatError(path, f"not a readable gzip file ({exc})") from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(path, f"not valid {encoding} text (byte {exc.start})", line) from None


def read_delimited(path: Path, sep: str, names: list[str], numeric: list[str], encoding: str = "utf-8") -> pd.DataFrame:
    """Parse a header-less delimited file strictly (see :func:`parse_delimited`)."""
    return parse_delimited(read_text(path, encoding), path, sep, names, numeric)


def parse_delimited(
    text: str, path: Path, sep: str, names: list[str], numeric: list[str], shown_sep: str | None = None
) -> pd.DataFrame:
    """Parse header-less delimited ``text`` read from ``path`` strictly.

    Every non-blank line must have exactly ``len(names)`` fields and the
    ``numeric`` columns must parse as numbers; otherwise the error names the
    first offending line. Numeric columns come back as float64 (NaN never
    occurs), the rest as strings; the ``line`` column holds 1-based line numbers.
    """
    lines = text.split("\n")
    line_no = np.array([i + 1 for i, text in enumerate(lines) if text.strip()], dtype=np.int64)
    rows = [lines[i - 1].rstrip("\r") for i in line_no]
    if not rows:
        raise DataFormatError(path, "file is empty")
    counts = np.fromiter((r.count(sep) + 1 for r in rows), dtype=np.int64, count=len(rows))
    bad = np.flatnonzero(counts != len(names))
    if bad.size:
        k = bad[0]
        raise DataFormatError(
            path, f"expected {len(names)} fields ({', '.join(names)}) separated by {(shown_sep or sep)!r}, got {counts[k]}", int(line_no[k])
        )
    table = pd.read_csv(
        io.StringIO("\n".join(rows)), sep=sep, header=None, names=names, dtype=str,
        keep_default_na=False, quoting=3, engine="c",
    )
    for column in numeric:
        values = pd.to_numeric(table[column], errors="coerce")
        nan = np.flatnonzero(values.isna().to_numpy())
        if nan.size:
            k = nan[0]
            raise DataFormatError(path, f"field {column!r} is not a number: {table[column].iat[k]!r}", int(line_no[k]))
        table[column] = values.astype(np.float64)
    table["line"] = line_no
    return table


def integral(table: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """The column as int64, refusing fractional values with the offending line."""
    values = table[column].to_numpy()
    frac = np.flatnonzero(values != np.floor(values))
    if frac.size:
        k = frac[0]
        raise DataFormatError(path, f"field {column!r} must be an integer, got {values[k]!r}", int(table["line"].iat[k]))
    return values.astype(np.int64)


def drop_impossible_timestamps(events: pd.DataFrame, dropped: dict[str, int]) -> pd.DataFrame:
    """Remove events dated before 1990 or after 2100, counting them in ``dropped``."""
    ok = events["timestamp"].between(MIN_TIMESTAMP, MAX_TIMESTAMP)
    if not ok.all():
        dropped["timestamp_out_of_range"] = int((~ok).sum())
    return events.loc[ok].reset_index(drop=True)
