"""Sampled negatives: never an item the user touched, distinct per (user, timestamp), seeded per user, one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recfl.core.errors import RecflError
from recfl.core.formats import SyntheticSpec, load
from recfl.core.negatives import MAX_ROUNDS, NegativeSampler
from recfl.core.schema import SAMPLED, SPLIT_COLUMNS
from recfl.core.split import split_by_time
from recfl.core.vocab import Vocabulary


@pytest.fixture(scope="module")
def world():
    """A synthetic split: train, test, the train vocabulary and the item table."""
    data = load("synthetic", None, SyntheticSpec(users=120, items=300, categories=10, clusters=4, seed=3))
    train, test = split_by_time(data.events, 0.2)
    return train, test, Vocabulary.fit(train["item_id"].to_numpy()), data.items


def _sampler(world, sampling="uniform", seed=0) -> NegativeSampler:
    train, test, vocab, items = world
    return NegativeSampler(pd.concat([train, test]), vocab, items, sampling, seed)


def _pairs(frame: pd.DataFrame) -> set:
    return set(zip(frame["user_id"], frame["item_id"]))


@pytest.mark.parametrize("sampling", ["uniform", "popularity"])
def test_negatives_are_untouched_vocabulary_items_distinct_per_user_and_time(world, sampling):
    train, test, vocab, items = world
    positives = train[train["label"] == 1]
    neg = _sampler(world, sampling).sample(positives, 5, ("cloud", 0))
    assert list(neg.columns) == list(SPLIT_COLUMNS) and {str(t) for t in neg.dtypes} <= {"string", "int64", "int8", "bool"}
    assert len(neg) == 5 * len(positives) and neg[SAMPLED].all() and (neg["label"] == 0).all()
    assert _pairs(neg).isdisjoint(_pairs(pd.concat([train, test])))  # never an item of the user's train or test
    assert set(neg["item_id"]) <= set(vocab.ids)  # every sampled item has an embedding row
    assert not neg.duplicated(["user_id", "item_id", "timestamp"]).any() and neg["event_id"].is_unique
    assert neg["event_id"].str.startswith("sampled:").all() and neg["behavior"].isna().all()
    # one block per positive, with the positive's user and timestamp
    expected = positives.sort_values(["user_id", "timestamp"], kind="stable")[["user_id", "timestamp"]]
    assert (neg[["user_id", "timestamp"]].iloc[::5].to_numpy() == expected.to_numpy()).all()
    first_cat = {i: (c[0] if len(c) else -1) for i, c in zip(items["item_id"], items["categories"])}
    assert neg["category_id"].tolist() == [first_cat[i] for i in neg["item_id"]]


def test_a_users_draws_depend_on_seed_stream_and_that_user_only(world):
    train = world[0]
    positives = train[train["label"] == 1]
    sampler = _sampler(world)
    everyone = sampler.sample(positives, 3, ("cloud", 1))
    some = positives["user_id"].unique()[::7]
    alone = sampler.sample(positives[positives["user_id"].isin(some)].iloc[::-1], 3, ("cloud", 1))  # other order, fewer users
    pd.testing.assert_frame_equal(alone.reset_index(drop=True),
                                  everyone[everyone["user_id"].isin(some)].reset_index(drop=True))
    pd.testing.assert_frame_equal(_sampler(world).sample(positives, 3, ("cloud", 1)), everyone)  # a fresh sampler, same draws
    other_epoch = sampler.sample(positives, 3, ("cloud", 2))
    other_seed = _sampler(world, seed=1).sample(positives, 3, ("cloud", 1))
    for other in (other_epoch, other_seed):
        assert (other["item_id"].to_numpy() != everyone["item_id"].to_numpy()).mean() > 0.9


def test_popularity_sampling_follows_training_counts(world):
    train, test, vocab, items = world
    positives = train[train["label"] == 1]
    draws = pd.concat([_sampler(world, "popularity").sample(positives, 5, ("cloud", e)) for e in range(4)])
    uniform = pd.concat([_sampler(world, "uniform").sample(positives, 5, ("cloud", e)) for e in range(4)])
    hot = set(vocab.ids[:10])  # the ten items with the most training events
    assert draws["item_id"].isin(hot).mean() > 4 * uniform["item_id"].isin(hot).mean()


def test_a_user_who_touched_almost_everything_gets_the_rest_exactly():
    """Rejection rounds rarely hit the last free items; the exact remainder still finds them."""
    universe = np.arange(100, 400)
    touched = pd.DataFrame({"user_id": 7, "item_id": universe[:-6]})  # 6 items left
    vocab = Vocabulary(universe, np.ones(len(universe), np.int64))
    items = pd.DataFrame({"item_id": universe, "categories": [np.array([i % 5]) for i in universe]})
    sampler = NegativeSampler(touched, vocab, items, "uniform", 0)
    positives = pd.DataFrame({"user_id": [7, 7, 8], "timestamp": [50, 50, 60], "event_id": ["a", "b", "c"]})
    neg = sampler.sample(positives, 3, "test")
    mine = neg[neg["user_id"] == 7]
    assert sorted(mine["item_id"]) == sorted(universe[-6:])  # 2 positives at one time x 3 = all six free items
    assert len(neg[neg["user_id"] == 8]) == 3 and MAX_ROUNDS < 100
    with pytest.raises(RecflError) as err:
        sampler.sample(positives, 4, "test", "data.negatives")
    assert str(err.value).startswith("data.negatives = 4 is more than the 6 items user 7 has not interacted with "
                                     "for its 2 positives at timestamp 50")
    assert "lower data.negatives" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RecflError, match="data.train_negatives = 7 is more than the 6 items user 7"):
        sampler.check_capacity(positives.iloc[:1], 7, "data.train_negatives")
    sampler.check_capacity(positives.iloc[:1], 6, "data.train_negatives")


def test_unknown_sampling_is_one_line(world):
    with pytest.raises(RecflError, match="unknown negative sampling 'zipf'; choose one of uniform, popularity"):
        _sampler(world, "zipf")
