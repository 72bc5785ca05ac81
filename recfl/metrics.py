"""CTR metrics shared by training, simulation, personalization and the A/B harness.

AUC uses average ranks for tied scores; gAUC is the impression-weighted mean
of per-user AUCs over users who have both classes (the others are counted,
not silently dropped).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-7


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


def logloss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean binary cross-entropy with probabilities clipped to [EPS, 1 - EPS]."""
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(scores, np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


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
