"""A concrete model (its configuration and table sizes) and its weights as NumPy arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from recfl.core.errors import RecflError
from recfl.core.features import FeatureSpec
from recfl.core.models.definition import GROUPS, ModelConfig, ModelDef, Weights
from recfl.core.models.registry import resolve


@dataclass(frozen=True)
class ModelSpec:
    """A concrete model: its configuration plus the number of rows of each table."""

    config: ModelConfig
    rows: tuple[tuple[str, int], ...]

    @classmethod
    def build(cls, config: ModelConfig, vocabulary_sizes: Mapping[str, int]) -> "ModelSpec":
        """Rows of each table from the sizes of the vocabularies it indexes."""
        return cls(config, tuple((t.name, int(vocabulary_sizes[t.vocabulary])) for t in resolve(config).tables))

    @property
    def definition(self) -> ModelDef:
        return resolve(self.config)

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec(history=self.config.history, max_categories=self.config.max_categories)

    def table_rows(self, name: str) -> int:
        return dict(self.rows)[name]

    def with_capacity(self, capacity: Mapping[str, int]) -> "ModelSpec":
        """The same model over tables of a fixed size per vocabulary (a device program)."""
        return replace(self, rows=tuple((t.name, int(capacity[t.vocabulary])) for t in self.definition.tables))

    def with_rows(self, rows: Mapping[str, int]) -> "ModelSpec":
        return replace(self, rows=tuple((name, int(rows[name])) for name, _ in self.rows))

    def shapes(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """``(group, name, shape)`` of every weight in the flat order of :meth:`ModelParams.arrays`."""
        d = self.definition
        return ([("tables", t.name, (self.table_rows(t.name), t.dim)) for t in d.tables]
                + [("dense", n, tuple(s)) for n, s in d.dense] + [("private", n, tuple(s)) for n, s in d.private])

    def to_json(self) -> dict:
        return {"config": {**asdict(self.config), "hidden": list(self.config.hidden)}, "rows": dict(self.rows)}

    @classmethod
    def from_json(cls, doc: dict) -> "ModelSpec":
        config = ModelConfig(**{**doc["config"], "hidden": tuple(doc["config"]["hidden"])})
        return cls(config, tuple((k, int(v)) for k, v in doc["rows"].items()))


@dataclass
class ModelParams:
    """All weights as float32 NumPy arrays, by group and name."""

    tables: dict[str, np.ndarray]
    dense: dict[str, np.ndarray]
    private: dict[str, np.ndarray] = field(default_factory=dict)

    def arrays(self) -> list[np.ndarray]:
        """Flat list in a fixed order: tables, dense, private (each in the definition's order)."""
        return [*self.tables.values(), *self.dense.values(), *self.private.values()]

    @classmethod
    def from_arrays(cls, spec: ModelSpec, arrays) -> "ModelParams":
        groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in GROUPS}
        shapes = spec.shapes()
        if len(arrays) != len(shapes):
            raise RecflError(f"model {spec.config.name!r} has {len(shapes)} weights, got {len(arrays)}")
        for (group, name, _), array in zip(shapes, arrays):
            groups[group][name] = np.asarray(array, dtype=np.float32)
        return cls(**groups)

    def weights(self) -> Weights:
        return Weights(self.tables, self.dense, self.private)

    def copy(self) -> "ModelParams":
        return ModelParams({k: v.copy() for k, v in self.tables.items()}, {k: v.copy() for k, v in self.dense.items()},
                           {k: v.copy() for k, v in self.private.items()})

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays()))


def init_params(spec: ModelSpec, seed: int = 0) -> ModelParams:
    """Seeded initial weights: N(0, 0.05) tables, Glorot-uniform matrices, zero vectors and private weights."""
    rng = np.random.default_rng(seed)
    out = ModelParams({}, {}, {})
    for group, name, shape in spec.shapes():
        if group == "tables":
            value = 0.05 * rng.standard_normal(shape)
        elif group == "dense" and len(shape) == 2:
            limit = np.sqrt(6.0 / (shape[0] + shape[1]))
            value = rng.uniform(-limit, limit, size=shape)
        else:
            value = np.zeros(shape)
        getattr(out, group)[name] = value.astype(np.float32)
    return out


def weights_of(spec: ModelSpec, flat: Sequence) -> Weights:
    """Name a flat weight list (the order of :meth:`ModelSpec.shapes`)."""
    groups: dict[str, dict] = {g: {} for g in GROUPS}
    for (group, name, _), value in zip(spec.shapes(), flat):
        groups[group][name] = value
    return Weights(groups["tables"], groups["dense"], groups["private"])
