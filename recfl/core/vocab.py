"""Id vocabularies fit on training data only, with padding and out-of-vocabulary rows.

Index 0 is padding (empty history / category slots), 1 is the shared
out-of-vocabulary bucket (ids unseen in training, or rarer than
``min_count``), known ids take 2.. in order of decreasing training frequency.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.tables import read_table

PAD = 0
OOV = 1
RESERVED = 2


@dataclass(frozen=True)
class Vocabulary:
    """A fitted id -> row mapping; ``ids[k]`` is the raw id of row ``k + RESERVED``."""

    ids: np.ndarray
    counts: np.ndarray

    @property
    def size(self) -> int:
        """Rows an embedding table needs, padding and OOV included."""
        return len(self.ids) + RESERVED

    @classmethod
    def fit(cls, values: np.ndarray, min_count: int = 1) -> "Vocabulary":
        uniq, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
        keep = counts >= min_count
        uniq, counts = uniq[keep], counts[keep]
        order = np.lexsort((uniq, -counts))
        return cls(uniq[order], counts[order])

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """Row index of every value: known ids to 2.., anything else to OOV."""
        values = np.asarray(values, dtype=np.int64)
        if not len(self.ids):
            return np.full(values.shape, OOV, dtype=np.int32)
        sorter = self._sorter
        pos = np.searchsorted(self.ids, values, sorter=sorter).clip(max=len(self.ids) - 1)
        found = self.ids[sorter[pos]] == values
        return np.where(found, sorter[pos] + RESERVED, OOV).astype(np.int32)

    @cached_property
    def _sorter(self) -> np.ndarray:
        return np.argsort(self.ids, kind="stable")

    def save(self, path: Path) -> None:
        pd.DataFrame({"id": self.ids, "count": self.counts}).to_parquet(path, index=False)

    @classmethod
    def load(cls, path: Path, remedy: str = "the directory that holds it is incomplete; build it again") -> "Vocabulary":
        """The vocabulary saved at ``path``; a missing or damaged file is one error ending in ``remedy``."""
        table = read_table(path, remedy)
        return cls(table["id"].to_numpy(np.int64), table["count"].to_numpy(np.int64))
