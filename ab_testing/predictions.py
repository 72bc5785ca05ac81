"""Predictions files: read, check, and the guards that stop an A/B comparison from lying.

A predictions file (Parquet or CSV) holds one row per scored test event with
the columns of :data:`recfl.core.schema.PREDICTION_COLUMNS`. One file may hold one
or several arms; an arm may not be split across files. Every problem is a
one-line :class:`RecflError` naming the file or arm, the count and an example
row -- nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.errors import RecflError
from recfl.core.schema import PREDICTION_COLUMNS

EVENT_KEY = ["user_id", "item_id", "timestamp"]


@dataclass(frozen=True)
class Predictions:
    """All arms' scored events (canonical dtypes) and where each arm came from."""

    frame: pd.DataFrame
    sources: dict[str, str]

    @property
    def arms(self) -> tuple[str, ...]:
        """Arm names in the order they were given."""
        return tuple(self.sources)

    def of(self, arm: str) -> pd.DataFrame:
        return self.frame[self.frame["arm"] == arm]


def read_predictions(paths: list[str | Path]) -> Predictions:
    """Read and check the files; the same arm in two files is an error."""
    frames, sources = [], {}
    for path in map(Path, paths):
        frame = conform(_read(path), str(path))
        for arm in pd.unique(frame["arm"]):
            if arm in sources:
                raise RecflError(f"{path}: arm {arm!r} is also in {sources[arm]}; give each arm's predictions once")
            sources[arm] = str(path)
        frames.append(frame)
    if not frames:
        raise RecflError("no predictions files given")
    return Predictions(pd.concat(frames, ignore_index=True), sources)


def from_frame(frame: pd.DataFrame, source: str = "<frame>") -> Predictions:
    """A checked :class:`Predictions` from an in-memory table (e.g. a simulation)."""
    frame = conform(frame, source)
    return Predictions(frame, {arm: source for arm in pd.unique(frame["arm"])})


def _read(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise RecflError(f"{path}: is a folder; give its predictions files (.parquet or .csv), e.g. {path / '*.parquet'}")
    if not path.is_file():
        raise RecflError(f"{path}: predictions file not found")
    if path.stat().st_size == 0:
        raise RecflError(f"{path}: empty file (0 bytes); a predictions file has one row per scored test event")
    try:
        if path.suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise RecflError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    raise RecflError(f"{path}: expected a .parquet or .csv predictions file")


def conform(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The predictions columns with canonical dtypes, or the first problem found as an error."""
    if frame.empty:
        raise RecflError(f"{source}{_arms(frame)}: no rows (column names only); a predictions file has one row per scored "
                         "test event")
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise RecflError(f"{source}{_arms(frame)}: missing column(s) {', '.join(missing)}; a predictions file has "
                         f"{', '.join(PREDICTION_COLUMNS)}")
    for column in ("user_id", "item_id", "timestamp"):
        if not pd.api.types.is_integer_dtype(frame[column]) or frame[column].isna().any():
            empty = frame[column].isna()
            raise RecflError(f"{source}{_arms(frame, empty if empty.any() else None)}: column {column} must hold integers "
                             f"(found {frame[column].dtype}{f', {int(empty.sum())} empty' if empty.any() else ''})")
    if not pd.api.types.is_numeric_dtype(frame["score"]) or pd.api.types.is_bool_dtype(frame["score"]):
        raise RecflError(f"{source}{_arms(frame)}: column score must be numeric (found {frame['score'].dtype})")
    arm = frame["arm"]
    unnamed = arm.isna() | (arm.astype(str).str.strip() == "")
    if unnamed.any():
        raise RecflError(f"{source}: {int(unnamed.sum())} rows without an arm name")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    bad = ~labels.isin([0, 1])
    if bad.any():
        raise RecflError(f"{source}{_arms(frame, bad)}: {int(bad.sum())} labels are not 0 or 1 "
                         f"(e.g. {frame['label'][bad].iloc[0]!r} at {_where(frame, bad)})")
    out = frame[list(PREDICTION_COLUMNS)].assign(label=labels, arm=arm.astype(str))
    return out.astype(PREDICTION_COLUMNS).reset_index(drop=True)


def _arms(frame: pd.DataFrame, rows: pd.Series | None = None) -> str:
    """`` (arm 'a')``: the arm(s) of the offending ``rows`` (every row if None), for an error about a file."""
    if "arm" not in frame.columns:
        return ""
    names = pd.unique(frame["arm"][rows if rows is not None else slice(None)].dropna().astype(str))
    shown = ", ".join(map(repr, names[:3])) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f" ({'arms' if len(names) > 1 else 'arm'} {shown})" if len(names) else ""


def _where(frame: pd.DataFrame, mask) -> str:
    row = frame[np.asarray(mask)].iloc[0]
    return f"user {row['user_id']}, item {row['item_id']}, timestamp {row['timestamp']}"


def check_scores(pred: Predictions, need_probabilities: bool) -> None:
    """NaN/inf scores are errors; so are scores outside [0, 1] when a metric reads them as probabilities."""
    for arm in pred.arms:
        frame = pred.of(arm)
        score = frame["score"].to_numpy()
        bad = ~np.isfinite(score)
        if bad.any():
            raise RecflError(f"arm {arm!r} ({pred.sources[arm]}): {int(bad.sum())} scores are NaN or infinite "
                             f"(e.g. {_where(frame, bad)})")
        outside = (score < 0) | (score > 1)
        if need_probabilities and outside.any():
            raise RecflError(f"arm {arm!r} ({pred.sources[arm]}): {int(outside.sum())} scores outside [0, 1] "
                             f"(e.g. {score[outside][0]:g} at {_where(frame, outside)}); logloss needs "
                             "probabilities: calibrate the scores or leave logloss out of --metrics")


def check_duplicates(pred: Predictions) -> None:
    """Two rows of one arm for the same (user, item, timestamp) are an error: which one is the event?"""
    for arm in pred.arms:
        frame = pred.of(arm)
        dup = frame.duplicated(EVENT_KEY, keep=False).to_numpy()
        if dup.any():
            raise RecflError(f"arm {arm!r} ({pred.sources[arm]}): {int(dup.sum())} rows share a (user_id, item_id, "
                             f"timestamp) with another row (e.g. {_where(frame, dup)}); give each event once")


def check_paired(pred: Predictions, control: str) -> None:
    """The paired design needs every arm to score exactly the control's events, with the same labels."""
    check_same_events((control, pred.of(control)), {arm: pred.of(arm) for arm in pred.arms if arm != control},
                      "paired design", "control {}", "arm {}", "score the same test events, or use --design bucketed")


def check_same_events(base: tuple[str, pd.DataFrame], others: dict[str, pd.DataFrame], context: str, base_name: str,
                      other_name: str, remedy: str) -> None:
    """Every frame of ``others`` scores exactly the events of ``base`` (key, frame) with the same labels, or one error
    naming the first that does not (``base_name`` and ``other_name`` format a key, e.g. ``"arm {}"``)."""
    base_key, base = base
    base_name = base_name.format(repr(base_key))
    base = base[EVENT_KEY + ["label"]].sort_values(EVENT_KEY, kind="stable").reset_index(drop=True)
    for key, frame in others.items():
        name = other_name.format(repr(key))
        other = frame[EVENT_KEY + ["label"]].sort_values(EVENT_KEY, kind="stable").reset_index(drop=True)
        if len(other) == len(base) and (other[EVENT_KEY].to_numpy() == base[EVENT_KEY].to_numpy()).all():
            differs = (other["label"] != base["label"]).to_numpy()
            if differs.any():
                raise RecflError(f"{context}: {int(differs.sum())} events have a different label in {name} "
                                 f"than in {base_name} (e.g. {_where(other, differs)})")
            continue
        both = base.merge(other, on=EVENT_KEY, how="outer", indicator=True)
        only_other, only_base = both[both["_merge"] == "right_only"], both[both["_merge"] == "left_only"]
        raise RecflError(
            f"{context}: {name} and {base_name} do not score the same events: "
            f"{len(only_other)} events of {only_other['user_id'].nunique()} users only in {key!r}, "
            f"{len(only_base)} events of {only_base['user_id'].nunique()} users only in {base_key!r} ({remedy})"
        )
