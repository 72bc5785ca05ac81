"""What a model is to recfl: sparse tables, shared dense weights, device-private weights and a pure forward.

A model is a :class:`ModelDef`, made by a factory from the ``[model]``
section (:class:`ModelConfig`). recfl needs nothing else from it:

- ``tables``: embedding tables, each indexed by one vocabulary (``items`` or
  ``categories``) and read by named batch fields (``item``, ``cats``,
  ``hist``). A device or a federated client holds only the rows its fields
  touch (its submodel); FedSubAvg aggregates them row by row.
- ``dense``: weights every client trains and uploads (weighted FedAvg).
- ``private``: weights that never leave a device (e.g. a user vector, as in
  Federated Reconstruction). They start at zero on every device and in every
  federated round, and the cloud never trains them.
- ``forward(w, batch)``: the CTR logits ``[B]`` from :class:`Weights` and a
  batch of fields, written in TensorFlow ops. Written with the ops of
  :mod:`recfl.core.models.layers` (and other ops whose gradients TFLite has
  as builtins), the device program needs only the TFLite runtime.

``[model] name`` picks a built-in model (``mean``, ``attention``) or a
factory ``package.module:function`` taking a :class:`ModelConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from recfl.core.config import check_limits
from recfl.core.errors import RecflError
from recfl.core.features import FIELDS

VOCABULARIES = ("items", "categories")
GROUPS = ("tables", "dense", "private")


@dataclass(frozen=True)
class Table:
    """A sparse embedding table: one row per entry of ``vocabulary``, read through the batch ``fields``."""

    name: str
    vocabulary: str
    fields: tuple[str, ...]
    dim: int


@dataclass(frozen=True)
class Weights:
    """The weights a forward pass reads, by name (tensors, variables or arrays)."""

    tables: Mapping[str, Any]
    dense: Mapping[str, Any]
    private: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class ModelDef:
    """A model: its tables, dense and private weight shapes, and ``forward(Weights, batch) -> logits [B]``."""

    name: str
    tables: tuple[Table, ...]
    dense: tuple[tuple[str, tuple[int, ...]], ...]
    forward: Callable[[Weights, Mapping[str, Any]], Any]
    private: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self):
        names = [t.name for t in self.tables] + [n for n, _ in self.dense] + [n for n, _ in self.private]
        if len(set(names)) != len(names):
            raise RecflError(f"model {self.name!r}: weight names must be unique, got {names}")
        for table in self.tables:
            if table.vocabulary not in VOCABULARIES:
                raise RecflError(f"model {self.name!r}: table {table.name!r} indexes unknown vocabulary "
                                 f"{table.vocabulary!r}; choose from {', '.join(VOCABULARIES)}")
            unknown = sorted(set(table.fields) - set(FIELDS))
            if unknown or not table.fields:
                raise RecflError(f"model {self.name!r}: table {table.name!r} reads unknown field(s) {unknown or '[]'}; "
                                 f"batch fields are {', '.join(FIELDS)}")


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` config section: which model, and the knobs of the built-in ones."""

    name: str = "mean"  # mean | attention | package.module:factory
    embed_dim: int = 16
    hidden: tuple[int, ...] = (64, 32)
    history: int = 20  # clicked items kept as the user's history feature
    max_categories: int = 4
    attention_hidden: int = 16  # attention: width of the scoring MLP
    user_vector: bool = True  # a device-private user vector u (logit += u . item embedding), zero in the cloud
    init_seed: int = 0

    def __post_init__(self):
        check_limits(self, "model", embed_dim=">= 1", hidden=">= 1", history=">= 1", max_categories=">= 1",
                     attention_hidden=">= 1")
