"""How well coarse matching anticipates each device user's future: the measurement behind the profile choice.

For each variant of ``[matching]`` settings, match every device user and
report which share of that user's *test* events (held out, later in time)
the candidates cover: same item, same item among positive test events, same
category. Test events are read here only to judge; matching never sees
them. The ``random`` row gives each user the candidates that the configured
settings found for another device user: the floor any profile must beat.

    python -m tools.match_quality --data DIR --pool POOLDIR [--set matching.top_m=20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import pandas as pd

from cloud_pool.matching import MatchConfig, match_candidates
from recfl.core import config
from recfl.core.dataset import PreparedDataset
from recfl.core.pool import load_split

VARIANTS: dict[str, dict] = {
    "categories": {"item_dims": 0},
    "categories, positives x3": {"item_dims": 0, "positive_weight": 3.0},
    "categories + 256 items": {"item_dims": 256},
    "categories + 512 items": {"item_dims": 512},
    "categories + 1024 items": {"item_dims": 1024},
    "categories + 1024 items, positives x3": {"item_dims": 1024, "positive_weight": 3.0},
    "1024 items only": {"category_dims": 0, "item_dims": 1024},
    "categories + 256 items, top 10 users": {"item_dims": 256, "top_m": 10},
    "categories + 256 items, top 200 users, <= 20 each": {"item_dims": 256, "top_m": 200, "per_pool_user": 20},
}


def coverage(candidates: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Shares of test events whose item (all / positives) or category appears in their user's candidates."""
    def hit(key: str) -> np.ndarray:
        have = candidates[["target_user_id", key]].drop_duplicates().rename(columns={"target_user_id": "user_id"})
        return test[["user_id", key]].merge(have.assign(_hit=True), how="left", on=["user_id", key])["_hit"].notna().to_numpy()

    items = hit("item_id")
    positive = test["label"].to_numpy() == 1
    return {
        "test_item_recall": round(float(items.mean()), 4),
        "test_positive_item_recall": round(float(items[positive].mean()), 4),
        "test_category_recall": round(float(hit("category_id").mean()), 4),
    }


def reassigned(candidates: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    """Each user's candidates handed to the next user in a seeded random order (a random matching)."""
    order = np.random.default_rng(0).permutation(users)
    target = dict(zip(order, np.roll(order, 1)))
    return candidates.assign(target_user_id=candidates["target_user_id"].map(target))


def evaluate(data: PreparedDataset, pool_dir: str, base: MatchConfig) -> list[dict]:
    device = load_split(pool_dir).device_users
    test = data.test[data.test["user_id"].isin(device)]
    rows = []
    for name, change in {"configured": {}, **VARIANTS}.items():
        started = time.perf_counter()
        candidates = match_candidates(pool_dir, data, dataclasses.replace(base, **change))
        seconds = time.perf_counter() - started
        rows.append({"variant": name, **coverage(candidates, test), "candidates_per_user": round(len(candidates) / len(device), 1),
                     "seconds": round(seconds, 2)})
        if not change:
            rows.append({"variant": "random (another user's candidates)", **coverage(reassigned(candidates, device), test),
                         "candidates_per_user": rows[-1]["candidates_per_user"]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--pool", required=True)
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    base = config.section(MatchConfig, config.load(args.config, args.overrides), "matching")
    print(json.dumps(evaluate(PreparedDataset(args.data), args.pool, base), indent=2))


if __name__ == "__main__":
    main()
