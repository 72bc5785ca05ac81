"""Per-user time split, train-only vocabularies and the prepared directory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recfl.core.dataset import PREPARED_FILES, DataConfig, PreparedDataset, prepare
from recfl.core.errors import RecflError
from recfl.core.formats import SyntheticSpec, load
from recfl.core.schema import SAMPLED
from recfl.core.split import split_by_time, split_events
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
    data = prepare(type(synthetic)("synthetic", "x", "rule", events, items), tmp_path / "p", DataConfig(test_fraction=0.2))
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


def _events(rows) -> pd.DataFrame:
    """Canonical events from (user, item, label, timestamp) tuples, ids in row order."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "timestamp"])
    return frame.assign(event_id=[f"e{i:03d}" for i in range(len(frame))], category_id=-1, behavior="x")


def test_leave_one_out_takes_each_users_latest_positive_and_drops_what_follows():
    events = _events([
        (1, 10, 0, 1), (1, 11, 1, 2), (1, 12, 0, 3), (1, 13, 1, 4), (1, 14, 0, 5), (1, 15, 0, 6),  # test 13; 14, 15 dropped
        (2, 10, 1, 1), (2, 11, 0, 2),  # latest positive is the first event: nothing to learn from, train only
        (3, 10, 0, 1), (3, 11, 0, 2),  # no positive: train only
        (4, 10, 1, 7),  # a single event: train only
        (5, 10, 1, 3), (5, 11, 1, 3), (5, 12, 0, 3),  # one timestamp: (timestamp, event_id) order decides
    ])
    split = split_events(events, "leave_one_out")
    assert split.test[["user_id", "item_id"]].values.tolist() == [[1, 13], [5, 11]]
    assert split.dropped == 3  # user 1's two later negatives, user 5's event after its latest positive
    assert sorted(split.train.loc[split.train["user_id"] == 1, "item_id"]) == [10, 11, 12]
    assert set(split.train["user_id"]) == {1, 2, 3, 4, 5} and len(split.train) + len(split.test) + split.dropped == len(events)


def test_leave_one_out_never_puts_test_before_train_and_carves_validation_the_same_way(synthetic):
    split = split_events(synthetic.events, "leave_one_out")
    assert (split.test["label"] == 1).all() and split.test["user_id"].is_unique
    last_train = split.train.groupby("user_id")["timestamp"].max()
    assert (split.test.set_index("user_id")["timestamp"] >= last_train.reindex(split.test["user_id"])).all()
    validation = split_events(split.train, "leave_one_out")  # the same rule on the training events only
    assert validation.test["user_id"].is_unique and (validation.test["label"] == 1).all()
    assert set(validation.test["event_id"]) <= set(split.train["event_id"])
    later = validation.test.set_index("user_id")["timestamp"] <= split.test.set_index("user_id")["timestamp"].reindex(
        validation.test["user_id"])
    assert later.all()


@pytest.mark.parametrize("rule", ["time_fraction", "leave_one_out"])
def test_a_holdout_splits_only_its_users_and_every_other_users_events_train(synthetic, rule):
    events = synthetic.events
    users = np.sort(events["user_id"].unique())
    held = users[::3]
    split = split_events(events, rule, 0.2, holdout=held)
    alone = split_events(events[events["user_id"].isin(held)], rule, 0.2)
    assert split.test.equals(alone.test) and split.dropped == alone.dropped  # the held users split as on their own
    others = events[~events["user_id"].isin(held)]
    assert set(split.test["user_id"]) <= set(held) and len(split.test)
    assert set(others["event_id"]) <= set(split.train["event_id"])  # nobody else loses an event
    assert len(split.train) == len(alone.train) + len(others)
    order = split.train[["user_id", "timestamp", "event_id"]]
    assert order.equals(order.sort_values(["user_id", "timestamp", "event_id"]).reset_index(drop=True))


def test_prepare_with_negatives_stores_them_in_test_and_records_the_rule(synthetic, tmp_path):
    cfg = DataConfig(split="leave_one_out", negatives=20, train_negatives=3, negative_sampling="popularity", seed=4)
    data = prepare(synthetic, tmp_path / "p", cfg)
    test = data.test
    real, sampled = test[~test[SAMPLED]], test[test[SAMPLED]]
    assert (real["label"] == 1).all() and (sampled["label"] == 0).all()
    per_user = test.groupby("user_id")[SAMPLED].agg(["size", "sum"])
    assert (per_user["size"] == 21).all() and (per_user["sum"] == 20).all()  # one positive + 20 sampled, every user
    assert set(sampled["item_id"]) <= set(data.item_vocab.ids)
    touched = set(zip(pd.concat([data.train, real])["user_id"], pd.concat([data.train, real])["item_id"]))
    assert touched.isdisjoint(zip(sampled["user_id"], sampled["item_id"]))
    assert not data.train[SAMPLED].any()
    m = data.manifest
    assert m["split"] == "leave_one_out" and m["negatives"]["test_per_positive"] == 20 and m["test"]["sampled"] == len(sampled)
    assert m["negatives"]["sampling"] == "popularity" and "training vocabulary row" in m["negatives"]["rule"]
    assert data.train_negatives == 3 and m["schema_version"] == 2
    assert data.settings == DataConfig(**{**vars(cfg), "format": "synthetic", "path": synthetic.path})
    again = prepare(synthetic, tmp_path / "q", cfg)  # seeded: every arm, every rerun scores exactly these events
    pd.testing.assert_frame_equal(again.test, test)
    # the trainers' sampler never draws a user's train or test item, sampled test negatives included
    neg = data.negative_sampler.sample(data.train[data.train["label"] == 1], data.train_negatives, ("cloud", 0))
    assert set(zip(neg["user_id"], neg["item_id"])).isdisjoint(zip(test["user_id"], test["item_id"]))


def test_min_user_events_drops_light_users_and_counts_their_events(synthetic, tmp_path):
    sizes = synthetic.events.groupby("user_id").size()
    data = prepare(synthetic, tmp_path / "p", DataConfig(min_user_events=int(sizes.median())))
    kept = set(data.train["user_id"]) | set(data.test["user_id"])
    assert kept == set(sizes[sizes >= sizes.median()].index)
    assert data.manifest["dropped"]["users_below_min_user_events"] == int(sizes[sizes < sizes.median()].sum())


@pytest.mark.parametrize("settings,message", [
    ({"split": "leave_one_out"}, "data.split = 'leave_one_out' needs data.negatives >= 1"),
    ({"split": "random"}, "data.split = 'random' must be one of time_fraction, leave_one_out"),
    ({"negative_sampling": "zipf"}, "data.negative_sampling = 'zipf' must be one of uniform, popularity"),
    ({"negatives": -1}, "data.negatives = -1 must be >= 0"),
    ({"min_user_events": 0}, "data.min_user_events = 0 must be >= 1"),
])
def test_impossible_settings_are_one_line(settings, message):
    with pytest.raises(RecflError) as err:
        DataConfig(**settings)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_negatives_beyond_the_untouched_items_and_all_positive_training_are_one_line(tmp_path, fixtures):
    sequences = load("sequence", fixtures / "sequence.txt")  # 16 items; user 3 touches 7 of them
    with pytest.raises(RecflError) as err:
        prepare(sequences, tmp_path / "a", DataConfig(split="leave_one_out", negatives=12, train_negatives=1))
    assert "data.negatives = 12 is more than the" in str(err.value) and "lower data.negatives" in str(err.value)
    with pytest.raises(RecflError, match="every training event is a positive.*data.train_negatives >= 1"):
        prepare(sequences, tmp_path / "b", DataConfig(split="leave_one_out", negatives=3))
    with pytest.raises(RecflError, match="data.train_negatives = 9 is more than the"):
        prepare(sequences, tmp_path / "c", DataConfig(split="leave_one_out", negatives=3, train_negatives=9))
    data = prepare(sequences, tmp_path / "d", DataConfig(split="leave_one_out", negatives=3, train_negatives=2))
    assert data.test.groupby("user_id").size().eq(4).all() and data.test["user_id"].nunique() == 5


@pytest.mark.parametrize("name", PREPARED_FILES)
def test_every_missing_file_of_a_prepared_set_is_one_line(tmp_path, synthetic, name):
    data = prepare(synthetic, tmp_path / "p")
    (data.root / name).unlink()
    with pytest.raises(RecflError) as err:
        PreparedDataset(data.root)
    assert f"({name} missing); prepare it again" in str(err.value) and "\n" not in str(err.value)


def test_a_damaged_vocabulary_is_one_line(tmp_path, synthetic):
    data = prepare(synthetic, tmp_path / "p")
    (data.root / "vocab" / "items.parquet").write_bytes(b"PAR1 nothing")
    with pytest.raises(RecflError, match=r"vocab/items.parquet: not a readable Parquet file .*prepare the data set again"):
        PreparedDataset(data.root).item_vocab
