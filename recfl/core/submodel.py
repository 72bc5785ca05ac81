"""Submodels: the embedding rows one device's data touches, under a compact local index.

A device never needs the full tables: only the rows of the items (targets
and history) and categories in its examples. :class:`Submodel` lists those
global rows; local row ``k`` is global row ``item_rows[k]``. Rows 0 (PAD) and
1 (OOV) always come first, so PAD stays 0 in local coordinates and masking
works unchanged. The same mapping serves FedSubAvg clients (which upload
deltas for exactly these rows) and TFLite fine-tuning (fixed-capacity tables).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recfl.core.errors import RecflError
from recfl.core.features import Examples
from recfl.core.model import ModelParams
from recfl.core.vocab import RESERVED


def _rows(values: np.ndarray) -> np.ndarray:
    ids = np.unique(np.asarray(values, dtype=np.int64).ravel())
    return np.concatenate([np.arange(RESERVED), ids[ids >= RESERVED]]).astype(np.int32)


def _local(rows: np.ndarray, values: np.ndarray, name: str) -> np.ndarray:
    """Positions of ``values`` in the sorted ``rows``; every value must be there."""
    pos = np.searchsorted(rows, values).astype(np.int32)
    if values.size and not np.array_equal(rows[pos.clip(max=len(rows) - 1)], values):
        raise ValueError(f"examples touch {name} rows outside the submodel")
    return pos


@dataclass(frozen=True)
class Submodel:
    """Global rows of the item and category tables held by one device, sorted."""

    item_rows: np.ndarray
    cat_rows: np.ndarray

    @classmethod
    def covering(cls, *parts: Examples) -> "Submodel":
        """The rows every example in ``parts`` touches (targets, history, categories)."""
        items = np.concatenate([np.concatenate([p.item.ravel(), p.hist.ravel()]) for p in parts])
        cats = np.concatenate([p.cats.ravel() for p in parts])
        return cls(_rows(items), _rows(cats))

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.item_rows), len(self.cat_rows)

    def localize(self, examples: Examples) -> Examples:
        """The same examples with global rows replaced by local ones (all must be covered)."""
        return Examples(
            item=_local(self.item_rows, examples.item, "item"),
            cats=_local(self.cat_rows, examples.cats, "category"),
            hist=_local(self.item_rows, examples.hist, "item"),
            label=examples.label,
            user_id=examples.user_id,
            timestamp=examples.timestamp,
        )

    def extract(self, params: ModelParams, capacity: tuple[int, int] | None = None) -> ModelParams:
        """The device's weights: its rows of each table (zero-padded to ``capacity``), all dense layers."""
        items, cats = params.item_emb[self.item_rows], params.cat_emb[self.cat_rows]
        if capacity is not None:
            items, cats = _pad(items, capacity[0], "item"), _pad(cats, capacity[1], "category")
        return ModelParams(items, cats, [d.copy() for d in params.dense])

    def payload_bytes(self, params: ModelParams) -> int:
        """Bytes a device downloads for this submodel: its rows, their ids, the dense layers."""
        d = params.item_emb.shape[1] * params.item_emb.itemsize
        return int((len(self.item_rows) + len(self.cat_rows)) * (d + 4) + sum(x.nbytes for x in params.dense))


def _pad(table: np.ndarray, capacity: int, name: str) -> np.ndarray:
    if len(table) > capacity:
        raise RecflError(f"submodel needs {len(table)} {name} rows but the device capacity is {capacity}")
    out = np.zeros((capacity, table.shape[1]), dtype=table.dtype)
    out[: len(table)] = table
    return out
