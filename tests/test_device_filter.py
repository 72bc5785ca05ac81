"""The on-device LightGBM sample filter: out-of-fold scores, keep rules, the fallback for tiny users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from device.sample_filter import (
    CLASSIFIER,
    FALLBACK,
    NO_CANDIDATES,
    FilterConfig,
    FoldParts,
    ItemKnowledge,
    assign_folds,
    features,
    filter_candidates,
    fit_classifier,
    median_times,
    user_context,
)
from recfl.core.errors import RecflError
from recfl.core.metrics import auc
from recfl.core.vocab import Vocabulary

ITEMS = 400
CONTENT = ("item", "category", "label", "popularity", "embedding")  # features of the sample alone (no history needed)
KNOWLEDGE = ItemKnowledge(Vocabulary.fit(np.repeat(np.arange(ITEMS), 3)), Vocabulary.fit(np.arange(20)),
                          np.random.default_rng(0).standard_normal((ITEMS + 2, 4)).astype(np.float32))


def _events(rng, n, items, categories, user=1, label_rate=0.5):
    """Canonical events drawing items and categories from the given pools."""
    return pd.DataFrame({
        "event_id": [f"u{user}-{k}-{rng.integers(1 << 30)}" for k in range(n)],
        "user_id": np.full(n, user, np.int64),
        "item_id": rng.choice(items, n).astype(np.int64),
        "category_id": rng.choice(categories, n).astype(np.int64),
        "label": (rng.random(n) < label_rate).astype(np.int8),
        "timestamp": 880_000_000 + rng.integers(0, 10**7, n),
        "behavior": np.full(n, "pv"),
        "similarity": rng.random(n).astype(np.float32),
    })


def test_every_candidate_is_scored_by_the_model_that_left_its_fold_out():
    rng = np.random.default_rng(1)
    local = _events(rng, 60, np.arange(0, 100), np.arange(0, 5))
    cands = pd.concat([_events(rng, 150, np.arange(0, 100), np.arange(0, 5), user=2),
                       _events(rng, 150, np.arange(200, 400), np.arange(10, 20), user=3)], ignore_index=True)
    config = FilterConfig(features=CONTENT, folds=4, keep_fraction=0.5)
    result = filter_candidates(local, cands, KNOWLEDGE, config)
    assert result.path == CLASSIFIER
    assert set(np.unique(result.fold)) == {0, 1, 2, 3} and set(np.unique(result.local_fold)) == {0, 1, 2, 3}
    behaviors = pd.Index(["pv"])
    x_local, x_cand = (features(f, KNOWLEDGE, config.features, behaviors) for f in (local, cands))
    for k in range(4):
        # the recorded fold assignment reproduces each score from a model that never saw the candidate
        model = fit_classifier(np.vstack([x_local[result.local_fold != k], x_cand[result.fold != k]]),
                               np.r_[np.ones((result.local_fold != k).sum()), np.zeros((result.fold != k).sum())], config)
        np.testing.assert_allclose(model.predict(x_cand[result.fold == k]), result.score[result.fold == k], rtol=1e-12)
    # the local-like half is kept far more often than the foreign half, and told apart out of fold
    assert result.keep[:150].mean() > 0.8 and result.keep[150:].mean() < 0.2
    assert result.auc > 0.6
    assert result.report()["kept_fraction"] == pytest.approx(0.5)


def test_out_of_fold_scores_do_not_memorize_indistinguishable_candidates():
    """Candidates drawn like the local data: out of fold the classifier is at chance; scored in sample
    (what the folds prevent) the same model separates them, so this test can tell the two apart."""
    rng = np.random.default_rng(2)
    pools = (np.arange(0, 300), np.arange(0, 10))
    local, cands = _events(rng, 200, *pools), _events(rng, 400, *pools, user=2)
    config = FilterConfig(features=("item", "category", "popularity", "embedding"), num_leaves=31, rounds=80, min_data_in_leaf=1)
    result = filter_candidates(local, cands, KNOWLEDGE, config)
    assert abs(result.auc - 0.5) < 0.1
    x = np.vstack([features(f, KNOWLEDGE, config.features, pd.Index(["pv"])) for f in (local, cands)])
    y = np.r_[np.ones(len(local)), np.zeros(len(cands))]
    assert auc(y, fit_classifier(x, y, config).predict(x)) > 0.9


def _history(rng, n, items):
    hist = rng.choice(items, (n, 5)).astype(np.int32) + 2  # vocabulary rows of the item ids
    hist[:, :2] *= rng.random((n, 2)) < 0.5
    return hist


def test_user_context_features_are_cross_fitted_so_membership_does_not_separate():
    """Taste, category share and context compare each sample with the user's own events. A local sample is one
    of those events, a candidate is not; measured against all of them (a local sample left out of its own share,
    say), that alone separated the classes (median AUC 0.95 on MovieLens 100K). Cross-fitted, candidates drawn
    like the local data stay at chance."""
    rng = np.random.default_rng(7)
    pools = (np.arange(0, 300), np.arange(0, 10))
    config = FilterConfig(features=("label", "popularity", "affinity", "category_share", "context"), folds=3)
    aucs = []
    for user in range(8):
        local, cands = _events(rng, 60, *pools, user=1), _events(rng, 300, *pools, user=2)
        result = filter_candidates(local, cands, KNOWLEDGE, config, _history(rng, 60, pools[0]), _history(rng, 300, pools[0]))
        aucs.append(result.auc)
    assert abs(np.median(aucs) - 0.5) < 0.06


def test_context_features_find_local_like_candidates():
    """Candidates whose items and history come from the user's own pools score higher than foreign ones."""
    rng = np.random.default_rng(8)
    own, foreign = (np.arange(0, 150), np.arange(0, 5)), (np.arange(200, 400), np.arange(10, 20))
    local = _events(rng, 80, *own)
    cands = pd.concat([_events(rng, 200, *own, user=2), _events(rng, 200, *foreign, user=3)], ignore_index=True)
    hist = np.vstack([_history(rng, 200, own[0]), _history(rng, 200, foreign[0])])
    config = FilterConfig(features=("affinity", "category_share", "context"), folds=3, keep_fraction=0.5, weighting="odds")
    result = filter_candidates(local, cands, KNOWLEDGE, config, _history(rng, 80, own[0]), hist)
    assert result.keep[:200].mean() > 0.8 and result.keep[200:].mean() < 0.2
    kept = result.weight[result.keep]
    assert kept.mean() == pytest.approx(1.0) and (kept >= 0).all() and (result.weight[~result.keep] == 0).all()


def test_threshold_rule_and_determinism():
    rng = np.random.default_rng(3)
    local = _events(rng, 40, np.arange(0, 50), np.arange(0, 3))
    cands = _events(rng, 120, np.arange(0, 400), np.arange(0, 20), user=2)
    config = FilterConfig(features=CONTENT, rule="threshold", threshold=0.5)
    first, again = filter_candidates(local, cands, KNOWLEDGE, config), filter_candidates(local, cands, KNOWLEDGE, config)
    np.testing.assert_array_equal(first.keep, first.score >= 0.5)
    np.testing.assert_array_equal(first.score, again.score)
    np.testing.assert_array_equal(first.fold, again.fold)


def test_history_feature_tells_apart_samples_from_other_contexts():
    """Candidates clicked after other histories than the user's: the history embedding separates them."""
    rng = np.random.default_rng(5)
    pools = (np.arange(0, 300), np.arange(0, 10))
    local, cands = _events(rng, 80, *pools), _events(rng, 200, *pools, user=2)
    local_hist = rng.integers(2, 50, (80, 6)).astype(np.int32)  # the user's own clicks
    cand_hist = np.where(np.arange(200)[:, None] < 100, rng.integers(2, 50, (200, 6)), rng.integers(200, 203, (200, 6)))
    config = FilterConfig(features=("item", "history"), keep_fraction=0.5)
    result = filter_candidates(local, cands, KNOWLEDGE, config, local_hist, cand_hist.astype(np.int32))
    assert result.keep[:100].mean() > 0.8 and result.keep[100:].mean() < 0.2
    without = filter_candidates(local, cands, KNOWLEDGE, FilterConfig(features=("item",)))
    assert abs(without.auc - 0.5) < abs(result.auc - 0.5)
    with pytest.raises(ValueError, match="history rows"):
        filter_candidates(local, cands, KNOWLEDGE, config)


def test_tiny_users_take_the_fallback_path():
    rng = np.random.default_rng(4)
    local = _events(rng, 4, np.arange(0, 50), np.arange(0, 3))
    cands = _events(rng, 30, np.arange(0, 400), np.arange(0, 20), user=2)
    result = filter_candidates(local, cands, KNOWLEDGE, FilterConfig(min_local=10, keep_fraction=0.3))
    assert result.path == FALLBACK and np.isnan(result.auc) and (result.fold == -1).all()
    top = np.sort(cands["similarity"].to_numpy())[::-1][:9]  # ceil(0.3 * 30) most similar
    np.testing.assert_array_equal(np.sort(cands["similarity"].to_numpy()[result.keep])[::-1], top)
    keep_all = filter_candidates(local, cands, KNOWLEDGE, FilterConfig(min_local=10, fallback="all"))
    assert keep_all.path == FALLBACK and keep_all.keep.all()
    none = filter_candidates(local, cands.iloc[:0], KNOWLEDGE, FilterConfig())
    assert none.path == NO_CANDIDATES and len(none.keep) == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"rule": "best"}, "filter.rule"), ({"fallback": "none"}, "filter.fallback"), ({"folds": 1}, "filter.folds"),
    ({"features": ("item", "colour")}, "filter.features"), ({"keep_fraction": 1.5}, "filter.keep_fraction"),
    ({"folds": 2}, "filter.folds must be >= 3 with the user-context features"),
])
def test_bad_filter_config_is_one_clear_error(kwargs, message):
    with pytest.raises(RecflError, match=message):
        FilterConfig(**kwargs)


def test_user_context_sums_per_fold_equal_measuring_each_pair_of_folds_directly():
    """Taste and category share from per-fold sums (computed once per device) equal the direct definition: for
    the model of fold k, a sample of fold j against the user's positives (taste) and events (share) outside folds
    j and k, other than those of the sample's item."""
    rng = np.random.default_rng(11)
    local = _events(rng, 40, np.arange(0, 30), np.arange(0, 4))
    cands = _events(rng, 90, np.arange(0, 60), np.arange(0, 6), user=2)
    folds = 3
    local_fold, cand_fold = assign_folds(len(local), folds, rng), assign_folds(len(cands), folds, rng)
    parts = FoldParts.of(local, local_fold, cands, KNOWLEDGE, folds)
    medians = median_times(local, local_fold, folds)
    local_rows = KNOWLEDGE.item_vocab.lookup(local["item_id"].to_numpy())
    emb = KNOWLEDGE.item_embeddings.astype(np.float64)
    for k in range(folds):
        got = user_context(parts, cand_fold, medians, k)
        for i, row in enumerate(cands.itertuples()):
            ref = (local_fold != cand_fold[i]) & (local_fold != k) & (local["item_id"].to_numpy() != row.item_id)
            positives = ref & (local["label"].to_numpy() == 1)
            want = emb[local_rows[positives]].mean(axis=0) if positives.any() else np.zeros(emb.shape[1])
            np.testing.assert_allclose(got["taste"][i], want, atol=1e-12)
            share = (local["category_id"].to_numpy()[ref] == row.category_id).mean() if ref.any() else 0.0
            assert got["share"][i] == pytest.approx(share)
            outside = (local_fold != cand_fold[i]) & (local_fold != k)
            assert got["median_time"][i] == np.median(local["timestamp"].to_numpy()[outside])
