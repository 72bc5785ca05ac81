"""Neighbour votes: the candidates' labels as a prior on the scored items (device/votes.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device.votes import votes, with_votes


def test_a_vote_is_the_centred_label_sum_over_the_count_plus_the_shrink():
    # candidates: item 7 liked twice, item 8 disliked once, item 9 liked once; mean label 3/4
    cand_items, cand_labels = np.array([7, 8, 7, 9]), np.array([1, 0, 1, 1])
    got = votes(np.array([7, 8, 9, 5, 7]), cand_items, cand_labels, shrink=1.0)
    np.testing.assert_allclose(got, [2 * 0.25 / 3, -0.75 / 2, 0.25 / 2, 0.0, 2 * 0.25 / 3])


def test_no_candidates_and_unheld_items_give_no_vote():
    assert not votes(np.array([1, 2]), np.array([], np.int64), np.array([]), 1.0).any()
    assert not votes(np.array([1, 2, 100]), np.array([50, 60]), np.array([1, 0]), 0.0).any()


def test_a_zero_weight_keeps_the_scores_and_a_positive_one_moves_them_by_the_vote_in_logits():
    scores = np.array([0.2, 0.5, 0.9], np.float32)
    vote = np.array([0.5, 0.0, -1.0])
    np.testing.assert_array_equal(with_votes(scores, vote, 0.0), scores)
    moved = with_votes(scores, vote, 2.0)
    logit = np.log(scores / (1 - scores))
    np.testing.assert_allclose(np.log(moved / (1 - moved)), logit + 2.0 * vote, atol=1e-5)
    assert moved.dtype == np.float32


def test_a_score_without_a_vote_keeps_every_bit_even_at_the_extremes():
    scores = np.array([0.0, 1.0, 1e-9, 1 - 1e-9, 0.3], np.float32)  # the logit's clipping must not touch them
    kept = with_votes(scores, np.zeros(5), 1.0)
    assert kept.tobytes() == scores.tobytes() and kept is not scores


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1)), max_size=30), st.floats(0, 10))
def test_votes_stay_within_the_label_range_around_the_mean(candidates, shrink):
    items = np.array([i for i, _ in candidates], np.int64)
    labels = np.array([y for _, y in candidates], np.float64)
    got = votes(np.arange(7), items, labels, shrink)
    mean = labels.mean() if len(labels) else 0.0
    assert (got >= -mean - 1e-12).all() and (got <= 1 - mean + 1e-12).all()
    assert got[6] == 0.0  # item 6 is never a candidate


def test_weighted_votes_weigh_each_candidate_and_ones_are_the_unweighted_vote():
    cand_items, cand_labels = np.array([7, 8, 7, 9]), np.array([1, 0, 0, 1])
    items = np.array([7, 8, 9, 5])
    plain = votes(items, cand_items, cand_labels, 2.0)
    assert votes(items, cand_items, cand_labels, 2.0, np.ones(4)).tobytes() == plain.tobytes()
    w = np.array([3.0, 1.0, 1.0, 0.0])  # weighted mean label 3/5; item 9's only candidate weighs nothing
    np.testing.assert_allclose(votes(items, cand_items, cand_labels, 2.0, w),
                               [(3 * 0.4 + 1 * -0.6) / (4 + 2), -0.6 / (1 + 2), 0.0, 0.0])


def test_weightless_candidates_give_no_vote_even_without_a_shrink():
    got = votes(np.array([7, 8]), np.array([7, 8]), np.array([1, 0]), 0.0, np.array([1.0, 0.0]))
    assert np.isfinite(got).all() and got[1] == 0.0
    assert not votes(np.array([7]), np.array([7]), np.array([1]), 0.0, np.array([0.0])).any()


def test_weights_that_are_not_one_finite_non_negative_value_per_candidate_are_refused():
    for bad in (np.array([1.0, np.inf]), np.array([1.0, np.nan]), np.array([1.0, -1.0]), np.array([1.0])):
        with pytest.raises(ValueError, match="weights must be 2 finite values >= 0"):
            votes(np.array([7]), np.array([7, 8]), np.array([1, 0]), 1.0, bad)
