"""Coarse user profiles: what a user's training events are about, as one small integer vector.

A profile is a histogram over the pool's most frequent categories (every
category of each event's item, from the item catalog), optionally followed
by a histogram over the pool's most frequent items; each part is
L2-normalized, the item part weighted, and the result quantized to integers
``0..levels`` (relative to its largest entry). The quantization is what a
device uploads (one byte per dimension, nothing else about its events), and
it makes every dot product of two profiles an exact integer in float32, so
similarities, rankings and ties are the same whatever the block size.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import pandas as pd

from recfl.core.errors import RecflError
from recfl.core.vocab import Vocabulary

FLOAT32_EXACT = (1 << 24) - 1  # integers up to this are exact in float32


@dataclass(frozen=True, eq=False)
class ProfileSpec:
    """The dimensions of a profile and how events are weighed; built once from the pool."""

    category_ids: np.ndarray  # raw category id of dimension k (most frequent in the pool first)
    item_ids: np.ndarray  # raw item id of dimension len(category_ids) + k
    catalog_items: np.ndarray  # item ids of the (item, category dimension) pairs, sorted
    catalog_dims: np.ndarray  # category dimension of each pair
    positive_weight: float = 1.0
    item_weight: float = 1.0

    @property
    def dims(self) -> int:
        return len(self.category_ids) + len(self.item_ids)

    @property
    def levels(self) -> int:
        """Largest quantized value such that ``dims * levels**2`` stays exact in float32."""
        return int(min(255, np.floor(np.sqrt(FLOAT32_EXACT / max(self.dims, 1)))))

    @classmethod
    def build(cls, category_vocab: Vocabulary, item_vocab: Vocabulary, items: pd.DataFrame, category_dims: int,
              item_dims: int = 0, positive_weight: float = 1.0, item_weight: float = 1.0) -> "ProfileSpec":
        """Dimensions from the pool vocabularies (most frequent first); ``items`` is the item catalog."""
        if category_dims < 0 or item_dims < 0 or category_dims + item_dims == 0:
            raise RecflError("a profile needs category_dims + item_dims > 0 (both >= 0)")
        if positive_weight < 0 or item_weight < 0:
            raise RecflError("profile weights must be >= 0")
        category_ids = category_vocab.ids[:category_dims]
        pairs = item_categories(items)
        dim = _position(category_ids, pairs["category_id"].to_numpy(np.int64))
        keep = dim >= 0
        order = np.argsort(pairs["item_id"].to_numpy(np.int64)[keep], kind="stable")
        return cls(category_ids, item_vocab.ids[:item_dims], pairs["item_id"].to_numpy(np.int64)[keep][order],
                   dim[keep][order], float(positive_weight), float(item_weight))

    @classmethod
    def from_events(cls, pool_item_ids: np.ndarray, items: pd.DataFrame, category_dims: int, item_dims: int = 0,
                    positive_weight: float = 1.0, item_weight: float = 1.0) -> "ProfileSpec":
        """:meth:`build` with the pool's frequencies, counted over the ``item_id`` of its shared events."""
        categories, pool_items = pool_frequencies(pool_item_ids, items)
        return cls.build(categories, pool_items, items, category_dims, item_dims, positive_weight, item_weight)


def item_categories(items: pd.DataFrame) -> pd.DataFrame:
    """The item catalog as (item_id, category_id) pairs, one per category of an item."""
    cats = items["categories"].to_numpy()
    lengths = np.fromiter((len(c) for c in cats), dtype=np.int64, count=len(cats))
    flat = np.concatenate([np.asarray(c, dtype=np.int64) for c in cats]) if lengths.sum() else np.array([], np.int64)
    return pd.DataFrame({"item_id": np.repeat(items["item_id"].to_numpy(np.int64), lengths), "category_id": flat})


def category_frequencies(item_id: np.ndarray, items: pd.DataFrame) -> Vocabulary:
    """How many events touch each category (every category of the event's item), most frequent first."""
    ids, counts = np.unique(np.asarray(item_id, dtype=np.int64), return_counts=True)
    pairs = item_categories(items)
    pos = np.searchsorted(ids, pairs["item_id"].to_numpy(np.int64)).clip(max=max(len(ids) - 1, 0))
    hit = (ids[pos] == pairs["item_id"].to_numpy(np.int64)) if len(ids) else np.zeros(len(pairs), bool)
    per_cat = pd.Series(counts[pos[hit]]).groupby(pairs["category_id"].to_numpy(np.int64)[hit]).sum()
    cat_ids, cat_counts = per_cat.index.to_numpy(np.int64), per_cat.to_numpy(np.int64)
    order = np.lexsort((cat_ids, -cat_counts))
    return Vocabulary(cat_ids[order], cat_counts[order])


def pool_frequencies(pool_item_ids: np.ndarray, items: pd.DataFrame) -> tuple[Vocabulary, Vocabulary]:
    """(category, item) frequencies of the pool's shared events, most frequent first: what its profiles count."""
    return category_frequencies(pool_item_ids, items), Vocabulary.fit(pool_item_ids)


def _position(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in ``keys`` (unsorted, unique), or -1."""
    if not len(keys):
        return np.full(len(values), -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys, values, sorter=order).clip(max=len(keys) - 1)
    return np.where(keys[order[pos]] == values, order[pos], -1)


def profiles(user_id: np.ndarray, item_id: np.ndarray, label: np.ndarray, spec: ProfileSpec,
             chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct users, their quantized profiles as uint8 [users, dims]) from event columns.

    Users are processed ``chunk`` at a time, so the float histograms never exceed ``chunk x dims``.
    """
    users, row = np.unique(np.asarray(user_id, dtype=np.int64), return_inverse=True)
    order = np.argsort(row, kind="stable")
    bounds = np.searchsorted(row[order], np.arange(0, len(users) + chunk, chunk))
    item_id, label = np.asarray(item_id, dtype=np.int64), np.asarray(label)
    out = np.zeros((len(users), spec.dims), dtype=np.uint8)
    for k in range(len(bounds) - 1):
        events = order[bounds[k] : bounds[k + 1]]
        first = k * chunk
        rows = min(chunk, len(users) - first)
        out[first : first + rows] = _quantized(row[events] - first, item_id[events], label[events], rows, spec)
    return users, out


def _quantized(row: np.ndarray, item_id: np.ndarray, label: np.ndarray, rows: int, spec: ProfileSpec) -> np.ndarray:
    """Profiles of ``rows`` users from their events (``row`` in 0..rows-1)."""
    weight = np.where(label == 1, spec.positive_weight, 1.0)
    items, item_index = np.unique(item_id, return_inverse=True)  # sorted lookups are cache-friendly
    # category part: one count per (event, category of its item) pair of the catalog
    lo = np.searchsorted(spec.catalog_items, items, side="left")
    per_event = (np.searchsorted(spec.catalog_items, items, side="right") - lo)[item_index]
    lo = lo[item_index]
    event = np.repeat(np.arange(len(item_id)), per_event)
    pair = np.arange(per_event.sum()) - np.repeat(np.cumsum(per_event) - per_event, per_event) + np.repeat(lo, per_event)
    vectors = np.empty((rows, spec.dims))
    n_cat = len(spec.category_ids)
    vectors[:, :n_cat] = _unit_rows(_histogram(row[event], spec.catalog_dims[pair], weight[event], rows, n_cat))
    if len(spec.item_ids):
        dim = _position(spec.item_ids, items)[item_index]
        hit = dim >= 0
        item_hist = _histogram(row[hit], dim[hit], weight[hit], rows, len(spec.item_ids))
        vectors[:, n_cat:] = np.sqrt(spec.item_weight) * _unit_rows(item_hist)
    return quantize(vectors, spec.levels)


def profile(events: pd.DataFrame, spec: ProfileSpec) -> np.ndarray:
    """One user's profile from that user's events (``item_id``, ``label``): what a device uploads."""
    if events.empty:
        return np.zeros(spec.dims, dtype=np.uint8)
    return profiles(np.zeros(len(events), np.int64), events["item_id"].to_numpy(), events["label"].to_numpy(), spec)[1][0]


def _histogram(row: np.ndarray, dim: np.ndarray, weight: np.ndarray, rows: int, dims: int) -> np.ndarray:
    return np.bincount(row * dims + dim, weights=weight, minlength=rows * dims).astype(np.float64).reshape(rows, dims)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norm, out=np.zeros_like(matrix), where=norm > 0)


def quantize(vectors: np.ndarray, levels: int) -> np.ndarray:
    """Scale each row so its largest entry is ``levels`` and round (all-zero rows stay zero)."""
    top = vectors.max(axis=1, keepdims=True) if vectors.shape[1] else np.zeros((len(vectors), 1))
    scaled = np.divide(vectors * levels, top, out=np.zeros_like(vectors, dtype=np.float64), where=top > 0)
    return np.rint(scaled).astype(np.uint8)


__all__ = ["ProfileSpec", "category_frequencies", "item_categories", "pool_frequencies", "profile", "profiles",
           "quantize"]
