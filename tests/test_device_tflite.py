"""The device program: builtin ops only, TF and TFLite steps agree, one conversion per capacity, weights in and out."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tensorflow as tf

from device import tflite_trainer
from device.program import StepSettings
from device.tflite_trainer import (
    DeviceTrainer,
    FinetuneConfig,
    conversion_of,
    conversions,
    export,
    finetune,
)
from recfl.core.errors import RecflError
from recfl.core.features import Examples
from recfl.core.metrics import logloss
from recfl.core.models import (
    ModelConfig,
    ModelDef,
    ModelParams,
    ModelSpec,
    init_params,
    mlp_shapes,
    predict,
    train_step,
)
from recfl.core.models import mean as mean_model

BATCH = 32
SETTINGS = [  # (steps of) plain SGD, the pairwise and mixed losses, elastic pull, and each group alone
    StepSettings(0.3), StepSettings(0.3, pairwise=1.0), StepSettings(0.2, pairwise=0.5, elastic=0.5),
    StepSettings(0.3, trainable=("private",)), StepSettings(0.3, trainable=("tables",)), StepSettings(0.3, trainable=("dense", "private")),
]


def spec_of(name: str) -> ModelSpec:
    return ModelSpec.build(ModelConfig(name=name, embed_dim=8, hidden=(16, 8), history=5, max_categories=3),
                           {"items": 128, "categories": 16})


@pytest.fixture(scope="module", params=["mean", "attention"])
def exported(request, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tflite")
    spec = spec_of(request.param)
    return spec, cache, export(spec, cache, BATCH, ops="builtin")


def _batch(spec: ModelSpec, rng, n, rows=40) -> Examples:
    """Few distinct rows (many duplicates in a batch) and PAD slots in history and categories."""
    c = spec.config
    hist = rng.integers(1, rows, (n, c.history)).astype(np.int32)
    hist[:, :2] *= rng.random((n, 2)) < 0.5
    cats = rng.integers(1, 16, (n, c.max_categories)).astype(np.int32)
    cats[:, 1:] *= rng.random((n, c.max_categories - 1)) < 0.5
    return Examples(item=rng.integers(1, rows, n).astype(np.int32), cats=cats, hist=hist,
                    label=(rng.random(n) < 0.4).astype(np.float32), user_id=np.zeros(n, np.int64),
                    timestamp=np.zeros(n, np.int64), weight=rng.uniform(0.2, 2.0, n).astype(np.float32))


def test_the_program_has_no_flex_node(exported):
    _, cache, _ = exported
    assert conversions(cache)[-1]["flex_nodes"] == {}


def test_tf_and_tflite_training_steps_agree(exported):
    spec, _, path = exported
    params = init_params(spec, 5)
    params.private["user"] = np.linspace(-0.2, 0.2, 8).astype(np.float32)
    anchor = init_params(spec, 6)
    trainer = DeviceTrainer(path, spec)
    trainer.set_params(anchor, anchor=True)
    trainer.set_params(params)
    weights, anchor_t = [tf.constant(a) for a in params.arrays()], [tf.constant(a) for a in anchor.arrays()]
    rng = np.random.default_rng(0)
    for n, settings in zip((1, 7, 32, 32, 5, 32, 3, 32, 32, 32, 17, 32), SETTINGS * 2):
        batch = _batch(spec, rng, n)
        masks = {g: float(g in settings.trainable) for g in ("tables", "dense", "private")}
        weights, tf_loss = train_step(spec, weights, batch.batch(), settings.lr, settings.pairwise, anchor_t, settings.elastic, masks)
        tfl_loss = trainer.train_step(batch, settings)
        assert tfl_loss == pytest.approx(float(tf_loss), abs=1e-5)
        for want, got in zip(weights, trainer.get_params().arrays()):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    final = ModelParams.from_arrays(spec, [w.numpy() for w in weights])
    np.testing.assert_allclose(trainer.predict(batch), predict(spec, final, batch.inputs()), atol=1e-5)


def test_untouched_rows_and_pad_keep_their_values(exported):
    spec, _, path = exported
    params = init_params(spec, 7)
    trainer = DeviceTrainer(path, spec)
    trainer.set_params(params, anchor=True)
    rng = np.random.default_rng(1)
    for _ in range(5):
        trainer.train_step(_batch(spec, rng, 32), StepSettings(0.5, pairwise=0.5))
    got = trainer.get_params().tables["item"]
    np.testing.assert_array_equal(got[40:], params.tables["item"][40:])  # rows no batch used
    np.testing.assert_array_equal(got[0], params.tables["item"][0])  # PAD never trains


def test_weights_in_and_out_and_host_checkpoints(exported, tmp_path):
    spec, _, path = exported
    trainer = DeviceTrainer(path, spec)
    batch = _batch(spec, np.random.default_rng(1), 20)
    a, b = init_params(spec, 1), init_params(spec, 2)
    trainer.set_params(a)
    scores_a = trainer.predict(batch)
    trainer.set_params(b)
    np.testing.assert_allclose(trainer.predict(batch), predict(spec, b, batch.inputs()), atol=1e-6)
    assert np.abs(scores_a - trainer.predict(batch)).max() > 1e-3
    checkpoint = tmp_path / 'run [a*b?], "x"' / "device 1.weights.npz"
    checkpoint.parent.mkdir()
    trainer.save(checkpoint)
    trainer.set_params(a)
    trainer.restore(checkpoint)
    for want, got in zip(b.arrays(), trainer.get_params().arrays()):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="does not fit"):
        trainer.set_params(init_params(spec.with_rows({"item": 64, "category": 16}), 0))
    with pytest.raises(ValueError, match="1 to 32 examples"):
        trainer.train_step(_batch(spec, np.random.default_rng(2), 33), StepSettings(0.1))


def test_converted_once_per_capacity(exported):
    spec, cache, path = exported
    before = len(conversions(cache))
    assert export(spec, cache, BATCH, "builtin") == path and len(conversions(cache)) == before  # cached
    bigger_spec = spec.with_rows({"item": 256, "category": 16})
    bigger = export(bigger_spec, cache, BATCH, "builtin")
    assert bigger != path and len(conversions(cache)) == before + 1
    assert export(bigger_spec, cache, BATCH, "builtin") == bigger and len(conversions(cache)) == before + 1
    assert json.dumps(conversions(cache)[-1]["spec"], sort_keys=True) == json.dumps(bigger_spec.to_json(), sort_keys=True)


def test_finetune_stops_early_and_keeps_the_best_weights(exported):
    spec, _, path = exported
    rng = np.random.default_rng(3)
    params = init_params(spec, 3)
    trainer = DeviceTrainer(path, spec)
    fit, val = _batch(spec, rng, 200), _batch(spec, rng, 40)
    trainer.set_params(params, anchor=True)
    result = finetune(trainer, fit, val, FinetuneConfig(learning_rate=0.5, max_epochs=8, patience=2), np.random.default_rng(0))
    assert result.best_epoch >= 1 and len(result.val_losses) == result.epochs + 1
    assert result.epochs == 8 or result.epochs - result.best_epoch == 2
    assert logloss(val.label, trainer.predict(val)) == pytest.approx(min(result.val_losses), rel=1e-6)
    trainer.set_params(params)  # a step that only hurts (huge learning rate) leaves the loaded weights in place
    worse = finetune(trainer, fit, val, FinetuneConfig(learning_rate=500.0, max_epochs=3, patience=1), np.random.default_rng(0))
    assert worse.best_epoch == 0
    for want, got in zip(params.arrays(), trainer.get_params().arrays()):
        np.testing.assert_array_equal(got, want)
    assert finetune(trainer, fit, val.take(slice(0, 0)), FinetuneConfig(), np.random.default_rng(0)).steps == 0


def flex_relu_model(config: ModelConfig) -> ModelDef:
    """The mean model with TensorFlow's own ReLU, whose gradient (ReluGrad) has no TFLite builtin."""

    def forward(w, batch):
        item = tf.gather(w.tables["item"], batch["item"])
        return tf.squeeze(tf.matmul(tf.nn.relu(item), w.dense["out_w0"]) + w.dense["out_b0"], -1)

    return ModelDef("flex-relu", mean_model.tables(config), mlp_shapes("out", config.embed_dim, ()), forward)


def test_an_op_without_builtin_is_named_and_auto_falls_back_to_flex(tmp_path, caplog):
    spec = ModelSpec.build(ModelConfig(name="tests.test_device_tflite:flex_relu_model", embed_dim=4),
                           {"items": 32, "categories": 8})
    with pytest.raises(RecflError) as err:
        export(spec, tmp_path, 8, ops="builtin")
    assert "ReluGrad" in str(err.value) and "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING):
        path = export(spec, tmp_path, 8, ops="auto")
    assert "ReluGrad" in caplog.text
    assert conversions(tmp_path)[-1]["flex_nodes"].get("ReluGrad", 0) >= 1
    trainer = DeviceTrainer(path, spec)  # TensorFlow's interpreter carries the Flex delegate
    trainer.set_params(init_params(spec, 0))
    batch = _batch(spec, np.random.default_rng(0), 8)
    assert np.isfinite(trainer.train_step(Examples(batch.item % 32, batch.cats % 8, batch.hist % 32, batch.label,
                                                   batch.user_id, batch.timestamp), StepSettings(0.1)))


def test_a_torn_conversion_record_is_skipped_and_a_missing_one_is_a_clear_error(tmp_path):
    record = {"key": "abc", "flex_nodes": {}}
    (tmp_path / "conversions.jsonl").write_text("[1]\n" + json.dumps(record) + "\n" + '{"key": "def", "fl')  # a crash mid-append
    assert conversions(tmp_path) == [record]
    assert conversion_of(tmp_path / "abc.tflite") == record
    with pytest.raises(RecflError, match=r"def\.tflite: no conversion record in .*conversions\.jsonl; delete the program"):
        conversion_of(tmp_path / "def.tflite")


def test_a_conversion_is_recorded_before_its_program_and_never_glued_to_a_torn_record(tmp_path, monkeypatch):
    spec = spec_of("mean")
    (tmp_path / "conversions.jsonl").write_text('{"key": "0123", "fl')  # a crash mid-append left this

    def full_disk(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tflite_trainer, "atomic_path", full_disk)
    with pytest.raises(OSError):
        export(spec, tmp_path, BATCH, "builtin")
    (record,) = conversions(tmp_path)  # on disk before the program, which never was
    assert not (tmp_path / f"{record['key']}.tflite").exists()
    monkeypatch.undo()
    path = export(spec, tmp_path, BATCH, "builtin")  # converted again, recorded again
    assert conversion_of(path)["key"] == path.stem and len(conversions(tmp_path)) == 2
