"""User segments by activity: cold, warm and hot users by their number of training events.

Personalization helps a user with a long history differently from a new one, so
every lift is also broken down by segment. The activity comes from an optional
users file: a table with ``user_id`` and ``train_events``, an events table with
one row per training event (``user_id``, ``item_id``, ...; e.g. a prepared
``DIR/train.parquet``) or a prepared data set directory. Users absent from it
have no training events and are counted as such (and reported).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.dataset import PreparedDataset
from recfl.core.errors import RecflError


def read_activity(path: str | Path) -> pd.Series:
    """Training events per user (index ``user_id``) from a users file or a prepared data set."""
    path = Path(path)
    if path.is_dir():
        return PreparedDataset(path).train["user_id"].value_counts().rename("train_events")
    if not path.is_file():
        raise RecflError(f"{path}: users file not found")
    try:
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise RecflError(f"{path}: cannot read the users file ({str(exc).splitlines()[0]})") from None
    if "user_id" not in table.columns or not pd.api.types.is_integer_dtype(table["user_id"]):
        raise RecflError(f"{path}: a users file needs an integer user_id column")
    if "train_events" in table.columns:
        if table["user_id"].duplicated().any():
            raise RecflError(f"{path}: user_id repeats; give one train_events count per user")
        counts = pd.to_numeric(table["train_events"], errors="coerce")
        if counts.isna().any() or (counts < 0).any():
            raise RecflError(f"{path}: train_events must be non-negative numbers")
        return pd.Series(counts.to_numpy(np.int64), index=table["user_id"].to_numpy(), name="train_events")
    if "item_id" in table.columns:
        return table["user_id"].value_counts().rename("train_events")
    raise RecflError(f"{path}: a users file has user_id and train_events, or is an events table "
                     "(user_id, item_id, ...) with one row per training event")


SEGMENTS = ("cold", "warm", "hot")


@dataclass(frozen=True)
class Segmenter:
    """cold: < ``low`` training events, warm: < ``high``, hot: the rest; no activity: one segment, ``all``."""

    activity: pd.Series | None = None
    low: int = 0
    high: int = 0
    how: str = ""

    @classmethod
    def fit(cls, user_ids: np.ndarray, activity: pd.Series | None, bounds: tuple[int, ...] = ()) -> "Segmenter":
        """Bounds as given, or the tertiles of the evaluated users' counts (a third of the users each)."""
        if activity is None:
            return cls()
        if bounds:
            if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1]:
                raise RecflError(f"segment bounds {list(bounds)}: expected two increasing training-event counts [warm, hot]")
            return cls(activity, int(bounds[0]), int(bounds[1]), "given bounds")
        counts = cls(activity).counts(np.unique(user_ids))
        low, high = (int(np.quantile(counts, q, method="higher")) if len(counts) else 0 for q in (1 / 3, 2 / 3))
        return cls(activity, low, high, "tertiles of the evaluated users")

    def counts(self, user_ids: np.ndarray) -> np.ndarray:
        """Training events of each user (0 for users absent from the users file)."""
        return pd.Series(user_ids).map(self.activity).fillna(0).to_numpy(np.int64)

    def unknown(self, user_ids: np.ndarray) -> int:
        """How many of ``user_ids`` the users file does not list."""
        return 0 if self.activity is None else int((~pd.Series(user_ids).isin(self.activity.index)).sum())

    @property
    def rule(self) -> str:
        if self.activity is None:
            return "no users file: no segments"
        return f"training events per user ({self.how}): cold < {self.low} <= warm < {self.high} <= hot"

    def masks(self, user_ids: np.ndarray) -> dict[str, np.ndarray]:
        """``all`` and every segment as boolean masks over ``user_ids`` (empty segments included)."""
        out = {"all": np.ones(len(user_ids), bool)}
        if self.activity is not None:
            n = self.counts(user_ids)
            out.update(cold=n < self.low, warm=(n >= self.low) & (n < self.high), hot=n >= self.high)
        return out
