"""The one model definition: shapes, sparse SGD, training beats chance, save/load."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from recfl.core.model import (
    ModelSpec,
    init_params,
    load_model,
    logits,
    predict,
    save_model,
    sgd_step,
)

SPEC = ModelSpec(item_rows=50, category_rows=8, embed_dim=4, hidden=(8,), history=3, max_categories=2)


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    item = rng.integers(2, 20, n).astype(np.int32)
    cats = rng.integers(0, 8, (n, 2)).astype(np.int32)
    hist = rng.integers(0, 20, (n, 3)).astype(np.int32)
    label = (item % 2).astype(np.float32)
    return item, cats, hist, label


def test_logits_shape_and_padding_is_ignored():
    params = init_params(SPEC, 1)
    item, cats, hist, _ = _batch()
    z = logits(params.item_emb, params.cat_emb, params.dense, item, cats, hist)
    assert z.shape == (16,)
    # changing the padding row changes nothing
    moved = params.copy()
    moved.item_emb[0] += 5.0
    moved.cat_emb[0] += 5.0
    z2 = logits(moved.item_emb, moved.cat_emb, moved.dense, item, cats, hist)
    np.testing.assert_allclose(z.numpy(), z2.numpy(), rtol=1e-6)


def test_sgd_step_updates_only_touched_rows_and_lowers_loss():
    params = init_params(SPEC, 2)
    item, cats, hist, label = _batch()
    weights = [tf.constant(a) for a in params.arrays()]
    new, loss0 = sgd_step(weights, item, cats, hist, label, 0.5)
    touched = set(item) | set(hist.ravel()) - {0}
    changed = np.flatnonzero(np.any(new[0].numpy() != params.item_emb, axis=1))
    assert set(changed) <= touched and len(changed) > 0
    for _ in range(30):
        new, loss = sgd_step(new, item, cats, hist, label, 0.5)
    assert float(loss) < 0.5 * float(loss0)


def test_save_load_round_trip(tmp_path):
    params = init_params(SPEC, 3)
    save_model(tmp_path / "m", SPEC, params, saved_model=True)
    spec, loaded = load_model(tmp_path / "m")
    assert spec == SPEC
    for a, b in zip(params.arrays(), loaded.arrays()):
        np.testing.assert_array_equal(a, b)
    item, cats, hist, _ = _batch()
    served = tf.saved_model.load(str(tmp_path / "m" / "saved_model")).signatures["serving_default"]
    probs = served(item=tf.constant(item), cats=tf.constant(cats), hist=tf.constant(hist))["probability"].numpy()
    np.testing.assert_allclose(probs, predict(SPEC, params, {"item": item, "cats": cats, "hist": hist}), rtol=1e-5)
