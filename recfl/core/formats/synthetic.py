"""Seeded synthetic behaviour log: the built-in default data set.

Users belong to interest clusters with their own category preferences
(non-IID clients); category sizes and item popularity follow power laws
(hot and cold items and categories); a click happens with probability
``sigmoid(scale * <user, item> + item_bias + offset)`` over latent factors
that clusters and categories share, so item ids and click history predict
clicks. Vectorised, so millions of events take seconds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfl.core.config import check_limits
from recfl.core.formats.base import SourceData
from recfl.core.schema import conform

LABEL_RULE = "label ~ Bernoulli(sigmoid(latent affinity + item bias)); seeded"
START_TIMESTAMP = 1_704_067_200  # 2024-01-01


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of a synthetic data set; the seed makes it reproducible."""

    users: int = 2000
    items: int = 5000
    categories: int = 50
    clusters: int = 20
    events_per_user: float = 60.0
    item_zipf: float = 1.1
    category_zipf: float = 1.0
    factors: int = 8
    days: int = 30
    seed: int = 0

    def __post_init__(self):
        check_limits(self, "synthetic", users=">= 1", items=">= 1", categories=">= 1", clusters=">= 1",
                     events_per_user=">= 2", item_zipf=">= 0", category_zipf=">= 0", factors=">= 1", days=">= 1")


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Power-law weights over ``n`` entries in random order, summing to 1."""
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return rng.permutation(w / w.sum())


def generate(spec: SyntheticSpec = SyntheticSpec()) -> SourceData:
    """Draw the events and the item table described by ``spec``."""
    rng = np.random.default_rng(spec.seed)
    k, r = spec.categories, spec.factors

    cat_weight = _zipf_weights(k, spec.category_zipf, rng)
    item_cat = np.sort(rng.choice(k, size=spec.items, p=cat_weight))  # items grouped by category
    item_pop = _zipf_weights(spec.items, spec.item_zipf, rng)
    # Cumulative popularity within each category block, shifted by the category index,
    # so one searchsorted over (category + u) draws an item of that category.
    block_sum = np.bincount(item_cat, weights=item_pop, minlength=k)
    cs = np.cumsum(item_pop / block_sum[item_cat])
    block_start = np.searchsorted(item_cat, item_cat, side="left")
    block_end = np.searchsorted(item_cat, item_cat, side="right") - 1
    key = item_cat + cs - np.where(block_start > 0, cs[block_start - 1], 0.0)
    key[block_end] = item_cat[block_end] + 1.0
    has_items = np.bincount(item_cat, minlength=k) > 0

    cluster_pref = rng.dirichlet(np.full(k, 0.1), size=spec.clusters) * 0.8 + 0.2 * cat_weight
    cluster_pref[:, ~has_items] = 0
    cluster_pref /= cluster_pref.sum(axis=1, keepdims=True)
    cat_center = rng.normal(size=(k, r))
    item_vec = cat_center[item_cat] + 0.6 * rng.normal(size=(spec.items, r))
    item_bias = 0.5 * rng.normal(size=spec.items)
    cluster_center = rng.normal(size=(spec.clusters, r))
    user_cluster = rng.integers(spec.clusters, size=spec.users)
    user_vec = cluster_center[user_cluster] + 0.6 * rng.normal(size=(spec.users, r))

    sigma = 0.8
    counts = np.maximum(2, rng.lognormal(np.log(spec.events_per_user) - sigma**2 / 2, sigma, size=spec.users)).astype(np.int64)
    user = np.repeat(np.arange(spec.users), counts)
    cat = np.empty(user.size, dtype=np.int64)
    event_cluster = user_cluster[user]
    draws = rng.random(user.size)
    for c in range(spec.clusters):
        mine = event_cluster == c
        cat[mine] = np.searchsorted(np.cumsum(cluster_pref[c]), draws[mine], side="right").clip(max=k - 1)
    item = np.searchsorted(key, cat + rng.random(user.size), side="left").clip(max=spec.items - 1)
    affinity = np.einsum("ij,ij->i", user_vec[user], item_vec[item]) / np.sqrt(r)
    label = rng.random(user.size) < 1 / (1 + np.exp(-(1.5 * affinity + item_bias[item] - 0.8)))
    span = spec.days * 86_400
    timestamp = START_TIMESTAMP + rng.integers(span, size=user.size)
    order = np.lexsort((timestamp, user))
    source = "synthetic-" + hashlib.blake2b(repr(spec).encode(), digest_size=6).hexdigest()  # ids differ across specs

    events = conform(pd.DataFrame({
        "event_id": [f"{source}:{i}" for i in range(user.size)],
        "user_id": user[order],
        "item_id": item[order],
        "category_id": item_cat[item[order]],
        "label": label[order].astype(np.int8),
        "timestamp": timestamp[order],
        "behavior": np.where(label[order], "click", "view"),
    }))
    items = pd.DataFrame({"item_id": np.arange(spec.items, dtype=np.int64), "categories": list(item_cat[:, None].astype(np.int64))})
    seen = np.isin(items["item_id"].to_numpy(), events["item_id"].to_numpy())
    return SourceData("synthetic", f"synthetic:{spec}", LABEL_RULE, events, items.loc[seen].reset_index(drop=True))
