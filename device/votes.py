"""Neighbour votes: the matched candidates' labels as a prior on the items a device scores.

The candidates a device downloads are labelled events of the pool users most
like it. Fine-tuning can only use them through the shared weights; a vote
uses them directly: an item the neighbours liked more often than their
candidates on average moves up, one they disliked moves down. Per scored
item ``i`` with candidates ``C(i)`` (same item id), each of weight ``w_c``
(1, or the sample filter's density-ratio odds), and ``ybar`` the weighted
mean label over all the device's candidates,

    vote(i) = sum_{c in C(i)} w_c (y_c - ybar) / (sum_{c in C(i)} w_c + shrink)

and the score becomes ``sigmoid(logit(p) + weight * vote(i))``. An item no
candidate holds keeps its score; ``shrink`` keeps one neighbour's label from
counting as much as many. It runs on the device, after fine-tuning, in numpy.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before the logit (float32 scores can be exactly 0 or 1)


def votes(items: np.ndarray, candidate_items: np.ndarray, candidate_labels: np.ndarray, shrink: float,
          weights: np.ndarray | None = None) -> np.ndarray:
    """``vote(i)`` for each of ``items`` (0 where no candidate holds the item); ``weights`` per candidate, ones if None."""
    items = np.asarray(items, np.int64)
    w = np.ones(len(candidate_items)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(candidate_items),) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"votes: weights must be {len(candidate_items)} finite values >= 0")
    if not w.sum() > 0:
        return np.zeros(len(items))
    labels = np.asarray(candidate_labels, np.float64)
    held, where = np.unique(np.asarray(candidate_items, np.int64), return_inverse=True)
    sums = np.bincount(where, w * (labels - np.average(labels, weights=w)), minlength=len(held))
    counts = np.bincount(where, w, minlength=len(held))
    per_item = np.divide(sums, counts + shrink, out=np.zeros(len(held)), where=counts + shrink > 0)
    at = np.clip(np.searchsorted(held, items), 0, len(held) - 1)
    return np.where(held[at] == items, per_item[at], 0.0)


def with_votes(scores: np.ndarray, vote: np.ndarray, weight: float) -> np.ndarray:
    """Probabilities ``scores`` moved by ``weight * vote`` in logit space (float32, like the model's scores); a
    score without a vote is returned as it was, bit for bit."""
    out, vote = np.array(scores, np.float32), np.asarray(vote)
    moved = (vote != 0) & (weight != 0)
    p = np.clip(out[moved].astype(np.float64), EPS, 1 - EPS)
    out[moved] = 1 / (1 + np.exp(-(np.log(p / (1 - p)) + weight * vote[moved])))
    return out
