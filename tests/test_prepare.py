"""Per-user time split, train-only vocabularies and the prepared directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recfl.core.dataset import PreparedDataset, prepare
from recfl.core.errors import RecflError
from recfl.core.formats import SyntheticSpec, load
from recfl.core.split import split_by_time
from recfl.core.vocab import OOV, RESERVED, Vocabulary


@pytest.fixture(scope="module")
def synthetic():
    return load("synthetic", None, SyntheticSpec(users=150, items=400, categories=12, clusters=4, seed=5))


def test_split_never_puts_test_before_train(synthetic):
    train, test = split_by_time(synthetic.events, 0.25)
    assert len(train) + len(test) == len(synthetic.events)
    assert set(train["event_id"]).isdisjoint(test["event_id"])
    last_train = train.groupby("user_id")["timestamp"].max()
    first_test = test.groupby("user_id")["timestamp"].min()
    assert (first_test >= last_train.reindex(first_test.index)).all()
    # every user with >= 2 events keeps at least one event on each side
    assert set(test["user_id"]) == set(train["user_id"])


def test_split_fraction_and_single_event_users():
    events = pd.DataFrame({
        "event_id": [f"e{i}" for i in range(11)], "user_id": [1] * 10 + [2], "item_id": range(11),
        "category_id": 0, "label": 1, "timestamp": [50, 10, 40, 30, 20, 90, 80, 70, 60, 100, 5],
    })
    train, test = split_by_time(events, 0.3)
    assert sorted(test["timestamp"]) == [80, 90, 100]
    assert test["user_id"].eq(1).all() and (train["user_id"] == 2).sum() == 1
    with pytest.raises(RecflError, match="test fraction"):
        split_by_time(events, 1.0)


def test_vocabulary_reserves_pad_and_oov_and_orders_by_frequency():
    vocab = Vocabulary.fit(np.array([7, 7, 7, 3, 3, 9, 5]), min_count=2)
    assert vocab.size == 2 + RESERVED
    assert list(vocab.lookup(np.array([7, 3, 9, 42]))) == [2, 3, OOV, OOV]


def test_prepare_fits_vocabularies_on_train_only(synthetic, tmp_path):
    events = synthetic.events.copy()
    # an item that only ever appears in a user's latest event lands in test only
    last = events.groupby("user_id")["timestamp"].idxmax()
    events.loc[last.iloc[0], "item_id"] = 10_000_000
    items = pd.concat([synthetic.items, pd.DataFrame({"item_id": [10_000_000], "categories": [np.array([999])]})])
    data = prepare(type(synthetic)("synthetic", "x", "rule", events, items), tmp_path / "p", 0.2)
    assert 10_000_000 in set(data.test["item_id"]) and 10_000_000 not in set(data.train["item_id"])
    assert data.item_vocab.lookup(np.array([10_000_000]))[0] == OOV
    assert 999 not in set(data.category_vocab.ids)
    assert set(data.item_vocab.ids) == set(data.train["item_id"])
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["train"]["rows"] + manifest["test"]["rows"] == len(events)
    assert manifest["test_fraction"] == 0.2 and "split_rule" in manifest


def test_prepared_dataset_requires_manifest(tmp_path):
    with pytest.raises(RecflError, match="not a prepared data set"):
        PreparedDataset(tmp_path)


def test_synthetic_is_deterministic_and_seed_sensitive():
    spec = SyntheticSpec(users=80, items=300, seed=11)
    a, b = load("synthetic", None, spec).events, load("synthetic", None, spec).events
    pd.testing.assert_frame_equal(a, b)
    c = load("synthetic", None, SyntheticSpec(users=80, items=300, seed=12)).events
    assert not a[["item_id", "label"]].equals(c[["item_id", "label"]])


def test_synthetic_has_power_law_popularity_and_non_iid_users():
    data = load("synthetic", None, SyntheticSpec(users=2000, items=5000, categories=40, clusters=8, seed=1))
    counts = data.events["item_id"].value_counts()
    top = counts.iloc[: len(counts) // 100].sum() / counts.sum()
    assert top > 0.15  # 1% of the items draw a large share of events (hot items)
    assert (counts == 1).sum() > 50  # and a long tail of cold items
    cat_counts = data.events["category_id"].value_counts()
    assert cat_counts.iloc[0] > 10 * cat_counts.iloc[-1]  # hot and cold categories
    # users' category mixes differ much more than sampling noise would allow
    mix = pd.crosstab(data.events["user_id"], data.events["category_id"], normalize="index")
    assert mix.max(axis=1).mean() > 2 * mix.mean(axis=0).max()
    assert 0.2 < data.events["label"].mean() < 0.6
