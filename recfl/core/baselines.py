"""Non-learned reference scorers every model must beat."""

from __future__ import annotations

import numpy as np
import pandas as pd


def popularity_scores(train: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Score = the item's positive count in training, scaled to [0, 1] (unseen items score 0)."""
    positives = train.loc[train["label"] == 1, "item_id"].value_counts()
    top = max(int(positives.max()) if len(positives) else 0, 1)
    return (pd.Series(item_ids).map(positives).fillna(0).to_numpy(np.float64) / top).astype(np.float32)
