"""Metrics against scikit-learn (test-only reference) and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from recfl.core.metrics import auc, gauc, logloss, per_user_auc


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # heavy ties
    assert math.isclose(auc(y, s), roc_auc_score(y, s), rel_tol=1e-12)


def test_auc_hand_cases():
    assert auc([0, 1], [0.2, 0.8]) == 1.0
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([1, 0, 1, 0], [0.9, 0.9, 0.1, 0.5]) == 0.375
    assert math.isnan(auc([1, 1], [0.1, 0.2]))


def test_gauc_weights_by_impressions_and_excludes_one_class_users():
    users = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.6, 0.5, 0.4, 0.1])
    value, counted, excluded = gauc(users, labels, scores)
    # user 1: pairs (0.9>0.1, 0.9>0.8, 0.2>0.1, 0.2<0.8) -> 3/4 over 4 events; user 2: 0 over 2
    assert math.isclose(value, (0.75 * 4 + 0.0 * 2) / 6)
    assert (counted, excluded) == (2, 1)
    table = per_user_auc(users, labels, scores)
    assert table.set_index("user_id").loc[3, "events"] == 3 and math.isnan(table.set_index("user_id").loc[3, "auc"])


def test_logloss_matches_sklearn_and_clips():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.4])
    assert math.isclose(logloss(y, p), log_loss(y, p), rel_tol=1e-9)
    assert np.isfinite(logloss([1], [0.0]))
