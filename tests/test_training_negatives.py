"""Training negatives in every trainer: drawn afresh per cloud epoch and federated round, once per device,
never an item the user touched, never seeing their own positive in the history feature."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recfl.core.dataset import DataConfig, prepare
from recfl.core.federated.clients import Population
from recfl.core.formats import SyntheticSpec, load
from recfl.core.models import ModelConfig, ModelSpec, vocabulary_sizes
from device.personalize import with_candidate_negatives
from recfl.core.train import training_examples


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    source = load("synthetic", None, SyntheticSpec(users=40, items=300, categories=8, clusters=4, events_per_user=15, seed=3))
    return prepare(source, tmp_path_factory.mktemp("neg") / "data", DataConfig(train_negatives=2))


def test_the_cloud_trainer_draws_new_negatives_every_epoch(data):
    spec = ModelSpec.build(ModelConfig(history=5), vocabulary_sizes(data))
    epochs = training_examples(data, spec)
    first, second = epochs(0), epochs(1)
    positives = int((data.train["label"] == 1).sum())
    assert len(first) == len(second) == len(data.train) + 2 * positives
    assert not np.array_equal(first.item, second.item) and np.array_equal(epochs(0).item, first.item)
    touched = set(zip(pd.concat([data.train, data.test])["user_id"], data.item_vocab.lookup(pd.concat([data.train, data.test])["item_id"].to_numpy())))
    sampled = slice(len(data.train), None)
    assert not touched & set(zip(first.user_id[sampled], first.item[sampled]))
    assert (first.label[sampled] == 0).all()


def test_a_negative_never_sees_its_own_positive_in_the_history(data):
    """A negative shares its positive's timestamp; its history is the positive's own (what came strictly before)."""
    spec = ModelSpec.build(ModelConfig(history=20), vocabulary_sizes(data))
    examples = training_examples(data, spec)(0)
    real = len(data.train)
    positive_hist = {(u, t): h for u, t, h, y in zip(examples.user_id[:real], examples.timestamp[:real], examples.hist[:real],
                                                     examples.label[:real]) if y == 1}
    assert len(positive_hist) == int(data.train["label"].sum())  # one positive per (user, timestamp) here
    for k in range(real, len(examples)):
        np.testing.assert_array_equal(examples.hist[k], positive_hist[(examples.user_id[k], examples.timestamp[k])])
    events = data.train[data.train["user_id"] == data.train["user_id"].iloc[0]]
    assert data.with_training_negatives(events, ("probe", 0))["sampled"].sum() == 2 * int((events["label"] == 1).sum())


def test_federated_clients_get_negatives_per_round(data):
    spec = ModelSpec.build(ModelConfig(history=5), vocabulary_sizes(data))
    population = Population(data, spec)
    plain, round3, round4 = (population.clients(np.arange(4), r) for r in (None, 3, 4))
    for k in range(4):
        positives = int(plain[k].examples.label.sum())
        assert plain[k].size == population.sizes()[k] and round3[k].size == plain[k].size + 2 * positives
        assert round3[k].user_id == plain[k].user_id
    assert any(not np.array_equal(a.submodel.rows["item"], b.submodel.rows["item"]) for a, b in zip(round3, round4))


def test_a_pool_event_matched_to_many_devices_brings_each_the_same_negatives(data):
    """Negatives of candidates are drawn once per pool event: 200 device users matched to one pool user's events
    each get that user's negatives (before, the copies counted as 200 positives per timestamp, more than the
    items the pool user has not touched, and the coda arms stopped with an error)."""
    owner = data.train[(data.train["user_id"] == data.train["user_id"].iloc[0]) & (data.train["label"] == 1)]
    targets = np.arange(10_000, 10_200)
    matched = pd.concat([owner.assign(target_user_id=t, similarity=np.float32(1.0 / (1 + k))) for k, t in enumerate(targets)],
                        ignore_index=True)
    out = with_candidate_negatives(data, matched)
    assert len(out) == len(matched) + 2 * len(matched) and out["sampled"].sum() == 2 * len(matched)
    drawn = {t: sorted(g.loc[g["sampled"], "item_id"]) for t, g in out.groupby("target_user_id")}
    assert len(drawn) == len(targets) and all(items == drawn[targets[0]] for items in drawn.values())
    negatives = out[out["sampled"]]
    assert not set(negatives["item_id"]) & set(data.train.loc[data.train["user_id"] == owner["user_id"].iloc[0], "item_id"])
    similarity = negatives.groupby("target_user_id")["similarity"].first()
    assert np.allclose(similarity.to_numpy(), matched.groupby("target_user_id")["similarity"].first().to_numpy())
