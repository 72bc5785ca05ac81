"""The TFLite trainer: TF and TFLite steps agree, one conversion per capacity, weights load through signatures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from device.tflite_trainer import (
    DeviceTrainer,
    FinetuneConfig,
    conversions,
    export,
    finetune,
)
from recfl.core.features import Examples
from recfl.core.metrics import logloss
from recfl.core.model import ModelParams, ModelSpec, init_params, predict, sgd_step

SPEC = ModelSpec(item_rows=128, category_rows=16, embed_dim=8, hidden=(16, 8), history=5, max_categories=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tflite")
    return cache, export(SPEC, cache)


def _batch(rng, n, rows=40) -> Examples:
    """Few distinct rows (many duplicates in a batch) and PAD slots in history and categories."""
    hist = rng.integers(1, rows, (n, SPEC.history)).astype(np.int32)
    hist[:, :2] *= rng.random((n, 2)) < 0.5
    cats = rng.integers(1, SPEC.category_rows, (n, SPEC.max_categories)).astype(np.int32)
    cats[:, 1:] *= rng.random((n, SPEC.max_categories - 1)) < 0.5
    return Examples(item=rng.integers(1, rows, n).astype(np.int32), cats=cats, hist=hist,
                    label=(rng.random(n) < 0.4).astype(np.float32), user_id=np.zeros(n, np.int64), timestamp=np.zeros(n, np.int64))


def test_tf_and_tflite_training_steps_agree(exported):
    _, path = exported
    params = init_params(SPEC, 5)
    trainer = DeviceTrainer(path, SPEC)
    trainer.set_params(params)
    weights = [tf.constant(a) for a in params.arrays()]
    rng = np.random.default_rng(0)
    for n in (1, 7, 32, 32, 5, 64, 32, 3):
        batch = _batch(rng, n)
        weights, tf_loss = sgd_step(weights, batch.item, batch.cats, batch.hist, batch.label, 0.3)
        tfl_loss = trainer.train_step(batch, 0.3)
        assert tfl_loss == pytest.approx(float(tf_loss), abs=1e-6)
        for want, got in zip(weights, trainer.get_params().arrays()):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    untouched = np.arange(40, SPEC.item_rows)  # rows no batch used keep their exact values
    np.testing.assert_array_equal(trainer.get_params().item_emb[untouched], params.item_emb[untouched])
    np.testing.assert_array_equal(trainer.get_params().item_emb[0], params.item_emb[0])  # PAD never trains
    final = ModelParams.from_arrays([w.numpy() for w in weights])
    np.testing.assert_allclose(trainer.predict(batch), predict(SPEC, final, batch.inputs()), atol=1e-6)


def test_set_weights_changes_inference_and_checkpoints_round_trip(exported, tmp_path):
    _, path = exported
    trainer = DeviceTrainer(path, SPEC)
    batch = _batch(np.random.default_rng(1), 20)
    a, b = init_params(SPEC, 1), init_params(SPEC, 2)
    trainer.set_params(a)
    scores_a = trainer.predict(batch)
    trainer.set_params(b)
    scores_b = trainer.predict(batch)
    assert np.abs(scores_a - scores_b).max() > 1e-3
    np.testing.assert_allclose(scores_b, predict(SPEC, b, batch.inputs()), atol=1e-6)
    checkpoint = tmp_path / 'run [a*b?], "x"' / "device 1.ckpt"  # the path must arrive intact, glob characters too
    checkpoint.parent.mkdir()
    trainer.save(checkpoint)
    assert checkpoint.is_file()
    trainer.set_params(a)
    trainer.restore(checkpoint)
    for want, got in zip(b.arrays(), trainer.get_params().arrays()):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="does not fit"):
        trainer.set_params(init_params(SPEC.with_rows(64, 16), 0))


def test_converted_once_per_capacity(exported):
    cache, path = exported
    assert export(SPEC, cache) == path  # cached: no second conversion
    assert len(conversions(cache)) == 1
    bigger = export(SPEC.with_rows(256, 16), cache)
    assert bigger != path and len(conversions(cache)) == 2
    assert export(SPEC.with_rows(256, 16), cache) == bigger and len(conversions(cache)) == 2
    assert [json.dumps(c["spec"], sort_keys=True) for c in conversions(cache)] == \
        [json.dumps(s.to_json(), sort_keys=True) for s in (SPEC, SPEC.with_rows(256, 16))]


def test_finetune_stops_early_and_keeps_the_best_weights(exported):
    _, path = exported
    rng = np.random.default_rng(3)
    params = init_params(SPEC, 3)
    trainer = DeviceTrainer(path, SPEC)
    fit, val = _batch(rng, 200), _batch(rng, 40)
    trainer.set_params(params)
    result = finetune(trainer, fit, val, FinetuneConfig(learning_rate=0.5, max_epochs=8, patience=2), np.random.default_rng(0))
    assert result.best_epoch >= 1 and len(result.val_losses) == result.epochs + 1
    assert result.epochs == 8 or result.epochs - result.best_epoch == 2
    assert logloss(val.label, trainer.predict(val)) == pytest.approx(min(result.val_losses), rel=1e-6)
    # a step that only hurts (huge learning rate) leaves the loaded weights in place
    trainer.set_params(params)
    worse = finetune(trainer, fit, val, FinetuneConfig(learning_rate=500.0, max_epochs=3, patience=1), np.random.default_rng(0))
    assert worse.best_epoch == 0
    for want, got in zip(params.arrays(), trainer.get_params().arrays()):
        np.testing.assert_array_equal(got, want)
    # no validation slice: nothing to stop on, so nothing is trained
    assert finetune(trainer, fit, val.take(slice(0, 0)), FinetuneConfig(), np.random.default_rng(0)).steps == 0
