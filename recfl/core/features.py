"""Turn canonical events into model inputs: item row, category rows, click-history rows.

The history of an event is the user's last ``history`` *positive* items
strictly before it (ordered by timestamp, then event id), taken from a
separate ``history_events`` table. Encoding test events with the training
events as history freezes the history at the split point, so no test label
ever feeds a feature.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from recfl.core.schema import SAMPLED
from recfl.core.vocab import PAD, Vocabulary

FIELDS = ("item", "cats", "hist")  # the batch fields a model reads (see Examples)


@dataclass(frozen=True)
class FeatureSpec:
    """Fixed widths of the list features."""

    history: int = 20
    max_categories: int = 4


@dataclass
class Examples:
    """Model inputs row-aligned with the encoded events (columns of equal length)."""

    item: np.ndarray  # int32 [N]      item row
    cats: np.ndarray  # int32 [N, C]   category rows, PAD-filled
    hist: np.ndarray  # int32 [N, H]   clicked item rows, oldest first, PAD-filled on the left
    label: np.ndarray  # float32 [N]
    user_id: np.ndarray  # int64 [N]   raw user id (for grouping and metrics, not a model input)
    timestamp: np.ndarray  # int64 [N]
    weight: np.ndarray | None = None  # float32 [N]  loss weight of each example (ones when not given)

    def __post_init__(self):
        if self.weight is None:
            self.weight = np.ones(len(self.label), np.float32)

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index) -> "Examples":
        """Rows ``index`` (array of positions or boolean mask)."""
        return Examples(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def inputs(self) -> dict[str, np.ndarray]:
        """The model's input fields by name."""
        return {f: getattr(self, f) for f in FIELDS}

    def batch(self) -> dict[str, np.ndarray]:
        """Input fields plus ``label`` and ``weight``: what a training step reads."""
        return {**self.inputs(), "label": self.label, "weight": self.weight}

    @staticmethod
    def empty(spec: "FeatureSpec") -> "Examples":
        """No examples, with the field widths of ``spec``."""
        return Examples(np.zeros(0, np.int32), np.zeros((0, spec.max_categories), np.int32), np.zeros((0, spec.history), np.int32),
                        np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @staticmethod
    def concat(parts: list["Examples"]) -> "Examples":
        return Examples(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Examples)})


def _sampled(events: pd.DataFrame) -> np.ndarray:
    return events[SAMPLED].to_numpy(bool) if SAMPLED in events.columns else np.zeros(len(events), bool)


def category_rows(items: pd.DataFrame, cat_vocab: Vocabulary, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted item ids, [n_items, width] category rows) from the item table, vectorised."""
    ids = items["item_id"].to_numpy(np.int64)
    order = np.argsort(ids, kind="stable")
    lists = items["categories"].to_numpy()[order]
    lengths = np.fromiter((min(len(c), width) for c in lists), dtype=np.int64, count=len(lists))
    flat = np.concatenate([np.asarray(c, dtype=np.int64)[:width] for c in lists]) if len(lists) else np.array([], np.int64)
    table = np.full((len(ids), width), PAD, dtype=np.int32)
    rows = np.repeat(np.arange(len(ids)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    table[rows, cols] = cat_vocab.lookup(flat)
    return ids[order], table


class Encoder:
    """Encodes events into :class:`Examples`; the item -> category table is built once."""

    def __init__(self, item_vocab: Vocabulary, cat_vocab: Vocabulary, items: pd.DataFrame, spec: FeatureSpec = FeatureSpec()):
        self.item_vocab, self.spec = item_vocab, spec
        self._known, self._table = category_rows(items, cat_vocab, spec.max_categories)

    def __call__(self, events: pd.DataFrame, history_events: pd.DataFrame) -> Examples:
        """Encode ``events`` (any order; output keeps it) with history from ``history_events``."""
        spec, item_vocab = self.spec, self.item_vocab
        n = len(events)
        pos = history_events[history_events["label"] == 1]
        flag = np.concatenate([np.zeros(n, np.int8), np.ones(len(pos), np.int8)])
        user = np.concatenate([events["user_id"].to_numpy(np.int64), pos["user_id"].to_numpy(np.int64)])
        ts = np.concatenate([events["timestamp"].to_numpy(np.int64), pos["timestamp"].to_numpy(np.int64)])
        eid = np.concatenate([events["event_id"].to_numpy(str), pos["event_id"].to_numpy(str)])
        row = np.concatenate([np.arange(n), np.arange(len(pos))])
        # at one timestamp, sampled negatives come first (they never see the positive they were drawn for),
        # then real events by id; an event sorts before its own positive
        real = np.concatenate([~_sampled(events), np.ones(len(pos), bool)])
        order = np.lexsort((flag, eid, real, ts, user))
        f = flag[order]
        before = np.cumsum(f) - f  # positives strictly earlier in the sorted order
        first = np.r_[True, user[order][1:] != user[order][:-1]]
        user_start = np.maximum.accumulate(np.where(first, before, 0))
        pos_items = item_vocab.lookup(pos["item_id"].to_numpy(np.int64))[row[order][f == 1]]

        ev = f == 0
        earlier = (before - user_start)[ev]
        start = user_start[ev]
        offsets = earlier[:, None] - spec.history + np.arange(spec.history)[None, :]
        hist = np.full((n, spec.history), PAD, dtype=np.int32)
        if len(pos_items):
            valid = offsets >= 0
            hist[row[order][ev]] = np.where(valid, pos_items[np.where(valid, start[:, None] + offsets, 0)], PAD)

        item_ids = events["item_id"].to_numpy(np.int64)
        known, table = self._known, self._table
        cats = np.full((n, spec.max_categories), PAD, dtype=np.int32)
        if len(known):
            at = np.searchsorted(known, item_ids).clip(max=len(known) - 1)
            has = known[at] == item_ids
            cats[has] = table[at[has]]

        return Examples(
            item=item_vocab.lookup(item_ids),
            cats=cats,
            hist=hist,
            label=events["label"].to_numpy(np.float32),
            user_id=events["user_id"].to_numpy(np.int64),
            timestamp=events["timestamp"].to_numpy(np.int64),
        )


def encode(
    events: pd.DataFrame,
    history_events: pd.DataFrame,
    item_vocab: Vocabulary,
    cat_vocab: Vocabulary,
    items: pd.DataFrame,
    spec: FeatureSpec = FeatureSpec(),
) -> Examples:
    """Encode ``events`` with history from ``history_events`` (one-off; reuse an :class:`Encoder` in loops)."""
    return Encoder(item_vocab, cat_vocab, items, spec)(events, history_events)
