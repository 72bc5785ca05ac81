"""The model interface: built-in models, the shared training step, plug-in factories, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recfl.core.errors import RecflError
from recfl.core.models import (
    ModelConfig,
    ModelSpec,
    batch_loss,
    init_params,
    load_model,
    predict,
    relu,
    resolve,
    save_model,
    train_step,
)

SIZES = {"items": 50, "categories": 8}


def spec_of(name: str, **config) -> ModelSpec:
    return ModelSpec.build(ModelConfig(name=name, embed_dim=4, hidden=(8,), history=3, max_categories=2, **config), SIZES)


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    item = rng.integers(2, 20, n).astype(np.int32)
    hist = rng.integers(0, 20, (n, 3)).astype(np.int32)
    return {"item": item, "cats": rng.integers(0, 8, (n, 2)).astype(np.int32), "hist": hist,
            "label": (item % 2).astype(np.float32), "weight": np.ones(n, np.float32)}


def _tensors(values):
    return [tf.constant(v) for v in values]


@pytest.mark.parametrize("name", ["mean", "attention"])
def test_forward_shape_padding_and_user_vector(name):
    spec = spec_of(name)
    params = init_params(spec, 1)
    batch = _batch()
    z = predict(spec, params, batch)
    assert z.shape == (16,)
    moved = params.copy()
    moved.tables["item"][0] += 5.0  # the PAD rows are never read
    moved.tables["category"][0] += 5.0
    np.testing.assert_allclose(predict(spec, moved, batch), z, rtol=1e-6)
    moved.private["user"][:] = 1.0  # the private user vector moves scores
    assert np.abs(predict(spec, moved, batch) - z).max() > 1e-4
    assert "user" not in spec_of(name, user_vector=False).definition.private


@pytest.mark.parametrize("name", ["mean", "attention"])
def test_train_step_touches_only_batch_rows_and_lowers_loss(name):
    spec = spec_of(name)
    params = init_params(spec, 2)
    batch = _batch()
    new, loss0 = train_step(spec, _tensors(params.arrays()), batch, 0.5)
    touched = set(batch["item"]) | set(batch["hist"].ravel()) - {0}
    changed = np.flatnonzero(np.any(new[0].numpy() != params.tables["item"], axis=1))
    assert set(changed) <= touched and len(changed) > 0
    for _ in range(40):
        new, loss = train_step(spec, new, batch, 0.5)
    assert float(loss) < 0.6 * float(loss0)


def test_pairwise_loss_ranks_and_ignores_weightless_rows():
    spec = spec_of("mean")
    flat = _tensors(init_params(spec, 3).arrays())
    batch = _batch()
    z = predict(spec, init_params(spec, 3), batch)
    logit = np.log(z / (1 - z))
    pos, neg = batch["label"] == 1, batch["label"] == 0
    want = np.mean(np.log1p(np.exp(-(logit[pos][:, None] - logit[neg][None, :]))))
    assert float(batch_loss(spec, flat, batch, pairwise=1.0)) == pytest.approx(want, rel=1e-4)
    padded = {k: np.concatenate([v, v[:4]]) for k, v in batch.items()}
    padded["weight"][-4:] = 0.0  # padding rows change neither loss
    for pairwise in (0.0, 1.0):
        assert float(batch_loss(spec, flat, padded, pairwise)) == pytest.approx(float(batch_loss(spec, flat, batch, pairwise)), rel=1e-5)


def test_elastic_pull_and_trainable_groups():
    spec = spec_of("mean")
    params = init_params(spec, 4)
    anchor = init_params(spec, 5)
    batch = {**_batch(), "weight": np.zeros(16, np.float32)}  # no data gradient: only the elastic pull moves weights
    new, _ = train_step(spec, _tensors(params.arrays()), batch, 0.1, anchor=_tensors(anchor.arrays()), elastic=2.0)
    for p, a, n in zip(params.arrays(), anchor.arrays(), new):
        np.testing.assert_allclose(n.numpy(), p - 0.1 * 2.0 * (p - a), rtol=1e-5, atol=1e-7)
    masks = {"tables": 0.0, "dense": 0.0, "private": 1.0}
    new, _ = train_step(spec, _tensors(params.arrays()), _batch(), 0.5, masks=masks)
    for (group, _, _), p, n in zip(spec.shapes(), params.arrays(), new):
        assert np.array_equal(n.numpy(), p) == (group != "private"), group


def test_relu_gradient_matches_tensorflow():
    x = tf.constant([[-1.0, 0.5, 2.0, -0.2]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = tf.reduce_sum(relu(x) * x), tf.reduce_sum(tf.nn.relu(x) * x)
    np.testing.assert_allclose(tape.gradient(ours, x), tape.gradient(theirs, x))


def broken_factory(config):
    raise ValueError("no such layer")


def not_a_model(config):
    return {"tables": []}


@pytest.mark.parametrize("name,message", [
    ("transformer", "choose mean, attention or a factory"),
    ("no_such_package.models:build", "cannot import the factory (ModuleNotFoundError"),
    ("tests.test_model:missing", "cannot import the factory (AttributeError"),
    ("tests.test_model:broken_factory", "the factory failed (ValueError: no such layer)"),
    ("tests.test_model:not_a_model", "returned dict, not a ModelDef"),
])
def test_bad_model_names_are_one_clear_line(name, message):
    with pytest.raises(RecflError) as err:
        resolve(ModelConfig(name=name))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["mean", "attention"])
def test_save_load_round_trip(tmp_path, name):
    spec = spec_of(name)
    params = init_params(spec, 3)
    save_model(tmp_path / "m", spec, params, saved_model=True)
    loaded_spec, loaded = load_model(tmp_path / "m")
    assert loaded_spec == spec
    for a, b in zip(params.arrays(), loaded.arrays()):
        np.testing.assert_array_equal(a, b)
    batch = _batch()
    served = tf.saved_model.load(str(tmp_path / "m" / "saved_model")).signatures["serving_default"]
    probs = served(item=tf.constant(batch["item"]), cats=tf.constant(batch["cats"]), hist=tf.constant(batch["hist"]))["probability"]
    np.testing.assert_allclose(probs.numpy(), predict(spec, params, batch), rtol=1e-5)
