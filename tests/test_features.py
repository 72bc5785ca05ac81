"""History features come only from strictly earlier positives, frozen at the split for test."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recfl.core.features import FeatureSpec, encode
from recfl.core.vocab import PAD, Vocabulary


def _events(rows):
    return pd.DataFrame(rows, columns=["event_id", "user_id", "item_id", "category_id", "label", "timestamp"])


def test_history_is_strictly_earlier_positives_and_frozen_for_test():
    train = _events([
        ("a", 1, 10, 0, 1, 100), ("b", 1, 11, 0, 0, 200), ("c", 1, 12, 0, 1, 300),
        ("d", 2, 13, 0, 1, 150),
    ])
    test = _events([("e", 1, 14, 0, 1, 400), ("f", 1, 15, 0, 0, 500)])
    vocab = Vocabulary.fit(train["item_id"].to_numpy())
    items = pd.DataFrame({"item_id": [10, 11, 12, 13, 14, 15], "categories": [np.array([c]) for c in [1, 1, 2, 2, 3, 1]]})
    cats = Vocabulary.fit(np.array([1, 1, 2, 2]))
    spec = FeatureSpec(history=3, max_categories=2)
    tr = encode(train, train, vocab, cats, items, spec)
    row = lambda i: int(vocab.lookup(np.array([i]))[0])
    assert tr.hist[0].tolist() == [PAD, PAD, PAD]  # nothing before the first event
    assert tr.hist[1].tolist() == [PAD, PAD, row(10)]
    assert tr.hist[2].tolist() == [PAD, PAD, row(10)]  # event b was negative
    assert tr.hist[3].tolist() == [PAD, PAD, PAD]  # another user's history is separate
    te = encode(test, train, vocab, cats, items, spec)
    # test event e is positive, but f's history must not contain it: frozen at the split
    assert te.hist[0].tolist() == te.hist[1].tolist() == [PAD, row(10), row(12)]
    assert te.item.tolist() == [1, 1]  # unseen test items are OOV
    assert te.cats[1].tolist()[0] == int(cats.lookup(np.array([1]))[0])
    assert te.cats[0].tolist() == [1, PAD]  # category 3 never seen in train: OOV


def test_history_keeps_the_latest_and_encode_preserves_row_order():
    rows = [(f"e{i}", 7, 100 + i, 0, 1, 1000 + i) for i in range(6)]
    train = _events(rows[::-1])  # reversed input order
    vocab = Vocabulary.fit(train["item_id"].to_numpy())
    items = pd.DataFrame({"item_id": [], "categories": []})
    ex = encode(train, train, vocab, Vocabulary.fit(np.array([], np.int64)), items, FeatureSpec(history=2, max_categories=1))
    assert ex.item.tolist() == vocab.lookup(train["item_id"].to_numpy()).tolist()
    latest = ex.hist[0].tolist()  # event e5 (first row) sees e3, e4
    assert latest == vocab.lookup(np.array([103, 104])).tolist()
