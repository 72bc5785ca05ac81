"""Submodels: the embedding rows one device's data touches, under a compact local index.

A device never needs whole tables: only the rows its examples read through
each table's batch fields (for the built-in models, the items it scores or
clicked, and their categories). :class:`Submodel` lists those global rows per
table; local row ``k`` of a table is global row ``rows[table][k]``. Rows 0
(PAD) and 1 (OOV) always come first, so PAD stays 0 in local coordinates and
masking works unchanged. The same mapping serves FedSubAvg clients (which
upload deltas for exactly these rows) and TFLite fine-tuning (fixed-capacity
tables).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from recfl.core.errors import RecflError
from recfl.core.features import Examples
from recfl.core.models import ModelParams, ModelSpec
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


@dataclass(frozen=True, eq=False)
class Submodel:
    """Global rows of each table held by one device, sorted, plus which batch fields read which table."""

    rows: dict[str, np.ndarray]
    fields: dict[str, str]  # batch field -> table

    @classmethod
    def covering(cls, spec: ModelSpec, *parts: Examples) -> "Submodel":
        """The rows every example in ``parts`` touches through each table's fields."""
        fields = {f: t.name for t in spec.definition.tables for f in t.fields}
        rows = {t.name: _rows(np.concatenate([getattr(p, f).ravel() for p in parts for f in t.fields]))
                for t in spec.definition.tables}
        return cls(rows, fields)

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(rows) for name, rows in self.rows.items()}

    def localize(self, examples: Examples) -> Examples:
        """The same examples with global rows replaced by local ones (all must be covered)."""
        return replace(examples, **{f: _local(self.rows[t], getattr(examples, f), t) for f, t in self.fields.items()})

    def extract(self, params: ModelParams, capacity: Mapping[str, int] | None = None) -> ModelParams:
        """The device's weights: its rows of each table (zero-padded to ``capacity`` rows per table), all dense
        and private weights."""
        tables = {}
        for name, table in params.tables.items():
            local = table[self.rows[name]]
            tables[name] = _pad(local, capacity[name], name) if capacity is not None else local
        return ModelParams(tables, {k: v.copy() for k, v in params.dense.items()},
                           {k: v.copy() for k, v in params.private.items()})

    def payload_bytes(self, params: ModelParams) -> int:
        """Bytes a device downloads for this submodel: its rows, their ids, the dense layers (private weights
        start at zero on the device and are never sent)."""
        rows = sum(len(self.rows[n]) * (t.shape[1] * t.itemsize + 4) for n, t in params.tables.items())
        return int(rows + sum(x.nbytes for x in params.dense.values()))


def _pad(table: np.ndarray, capacity: int, name: str) -> np.ndarray:
    if len(table) > capacity:
        raise RecflError(f"submodel needs {len(table)} {name} rows but the device capacity is {capacity}")
    out = np.zeros((capacity, table.shape[1]), dtype=table.dtype)
    out[: len(table)] = table
    return out
