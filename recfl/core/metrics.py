"""CTR metrics shared by training, simulation, personalization and the A/B harness.

AUC uses average ranks for tied scores; gAUC is the impression-weighted mean
of per-user AUCs over users who have both classes (the others are counted,
not silently dropped).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-7
TOPK_COLUMNS = ("user_id", "events", "positives", "hit", "dcg", "idcg", "clicks", "shown")


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """One row per user: ``user_id``, ``auc`` (NaN for one-class users), ``events``, ``positives``."""
    frame = pd.DataFrame({"u": np.asarray(users), "y": np.asarray(labels) > 0.5, "s": np.asarray(scores, np.float64)})
    frame["r"] = frame.groupby("u", sort=False)["s"].rank(method="average")
    g = frame.assign(ry=frame["r"] * frame["y"]).groupby("u", sort=True)
    out = pd.DataFrame({"events": g.size(), "positives": g["y"].sum(), "rank_sum": g["ry"].sum()})
    neg = out["events"] - out["positives"]
    pos = out["positives"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["auc"] = np.where((pos > 0) & (neg > 0), (out["rank_sum"] - pos * (pos + 1) / 2) / (pos * neg), np.nan)
    return out.drop(columns="rank_sum").rename_axis("user_id").reset_index()


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int, int]:
    """(impression-weighted gAUC, users counted, users excluded for having one class)."""
    per_user = per_user_auc(users, labels, scores)
    ok = per_user["auc"].notna()
    if not ok.any():
        return float("nan"), 0, int(len(per_user))
    w = per_user.loc[ok, "events"].to_numpy(np.float64)
    return float(np.average(per_user.loc[ok, "auc"], weights=w)), int(ok.sum()), int((~ok).sum())


def event_logloss(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each event, probabilities clipped to [EPS, 1 - EPS]."""
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(scores, np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def logloss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean binary cross-entropy with probabilities clipped to [EPS, 1 - EPS]."""
    return float(np.mean(event_logloss(labels, scores)))


def per_user_topk(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int) -> pd.DataFrame:
    """Top-``k`` quantities of each user's events ranked by score, one row per user (sorted by id).

    Columns: ``user_id``, ``events``, ``positives``, ``hit`` (probability that a
    positive is in the top k), ``dcg`` (binary gains, 1/log2(rank + 1)),
    ``idcg``, ``clicks`` (positives in the top k) and ``shown`` (min(k, events)).
    Tied scores are in random order, so each value is its expectation over
    the orders of the ties (as AUC gives ties half credit): a constant scorer
    gets the base rate, never a lucky or unlucky fixed order.
    """
    from scipy.special import gammaln

    u = np.asarray(users)
    y = np.asarray(labels) > 0.5
    s = np.asarray(scores, np.float64)
    if len(u) == 0:
        return pd.DataFrame({c: np.zeros(0) for c in TOPK_COLUMNS})
    order = np.lexsort((-s, u))
    u, y, s = u[order], y[order], s[order]
    new_user = np.r_[True, u[1:] != u[:-1]]
    user_first = np.flatnonzero(new_user)
    block_first = np.flatnonzero(new_user | np.r_[True, s[1:] != s[:-1]])  # tie blocks within a user
    g = np.diff(np.r_[block_first, len(u)]).astype(np.float64)  # rows in the block
    p = np.add.reduceat(y.astype(np.float64), block_first)  # positives in the block
    a = block_first - user_first[(np.cumsum(new_user) - 1)[block_first]]  # rank of the block's first row
    r = np.clip(k - a, 0, g)  # the block's slots inside the top k
    discount = np.r_[0.0, np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))]  # discount[m]: DCG of m leading hits
    dcg = p / g * (discount[np.minimum(a + g, k).astype(int)] - discount[np.minimum(a, k)])
    # P(no positive in the block's r top slots) = C(g - p, r) / C(g, r) (hypergeometric)
    impossible = r > g - p
    safe = np.where(impossible, 0.0, g - p - r)
    miss = np.where(impossible, 0.0, np.exp(gammaln(g - p + 1) - gammaln(safe + 1) - gammaln(g + 1) + gammaln(g - r + 1)))
    events = np.diff(np.r_[user_first, len(u)])
    positives = np.add.reduceat(y.astype(np.int64), user_first)
    per_user = np.searchsorted(block_first, user_first)
    return pd.DataFrame({
        "user_id": u[user_first],
        "events": events,
        "positives": positives,
        "hit": 1.0 - np.multiply.reduceat(miss, per_user),
        "dcg": np.add.reduceat(dcg, per_user),
        "idcg": discount[np.minimum(positives, k)],
        "clicks": np.add.reduceat(p / g * r, per_user),
        "shown": np.minimum(events, k),
    })


def ctr_metrics(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict:
    """AUC, gAUC (with user counts) and logloss in one dict."""
    g, counted, excluded = gauc(users, labels, scores)
    return {
        "auc": auc(labels, scores),
        "gauc": g,
        "logloss": logloss(labels, scores),
        "events": int(len(labels)),
        "gauc_users": counted,
        "gauc_users_excluded": excluded,
    }
