"""Centralized training of the cloud model on a prepared data set, with test metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from recfl.core import interrupts
from recfl.core.atomic import write_json_atomic
from recfl.core.baselines import popularity_scores
from recfl.core.config import check_limits
from recfl.core.dataset import PreparedDataset
from recfl.core.features import Encoder, Examples, encode
from recfl.core.metrics import ctr_metrics
from recfl.core.models import (
    ModelConfig,
    ModelParams,
    ModelSpec,
    batch_loss,
    init_params,
    predict,
    save_model,
    vocabulary_sizes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` config section: central (cloud) training."""

    epochs: int = 3
    batch_size: int = 256
    learning_rate: float = 0.002
    seed: int = 0

    def __post_init__(self):
        check_limits(self, "train", epochs=">= 1", batch_size=">= 1", learning_rate="> 0")


def training_examples(data: PreparedDataset, spec: ModelSpec, train_users: np.ndarray | None = None) -> Callable[[int], Examples]:
    """The training examples of each epoch (history from train): the users' training events, plus sampled
    negatives drawn afresh every epoch when the data set's rule asks for them (``[data] train_negatives``)."""
    encoder = Encoder(data.item_vocab, data.category_vocab, data.items, spec.features)
    events = of_users(data.train, train_users)
    if data.train_negatives == 0:
        fixed = encoder(events, data.train)
        return lambda epoch: fixed
    return lambda epoch: encoder(data.with_training_negatives(events, ("cloud", epoch)), data.train)


def evaluation_examples(data: PreparedDataset, spec: ModelSpec, test_users: np.ndarray | None = None) -> Examples:
    """Test examples of ``test_users`` (all users when None), history frozen at the split."""
    return encode(of_users(data.test, test_users), data.train, data.item_vocab, data.category_vocab, data.items, spec.features)


def of_users(events, users: np.ndarray | None):
    """The events of ``users`` (all events when ``users`` is None), order kept."""
    return events if users is None else events[events["user_id"].isin(users)]


def fit(spec: ModelSpec, params: ModelParams, examples: Callable[[int], Examples], config: TrainConfig,
        progress: bool = True) -> tuple[ModelParams, list[float]]:
    """Adam over ``examples(epoch)`` for ``config.epochs``; returns trained params and mean loss per epoch.

    Device-private weights are not trained: the cloud has none of a device's (they stay at zero).
    """
    import tensorflow as tf

    tf.random.set_seed(config.seed)
    groups = [group for group, _, _ in spec.shapes()]
    variables = [tf.Variable(a) for a in params.arrays()]
    trained = [v for v, group in zip(variables, groups) if group != "private"]
    optimizer = tf.keras.optimizers.Adam(config.learning_rate)

    @tf.function(reduce_retracing=True, autograph=False)
    def step(batch):
        with tf.GradientTape() as tape:
            loss = batch_loss(spec, variables, batch)
        optimizer.apply_gradients(zip(tape.gradient(loss, trained), trained))
        return loss

    rng = np.random.default_rng(config.seed)
    losses = []
    for epoch in range(config.epochs):
        epoch_examples = examples(epoch)
        order = rng.permutation(len(epoch_examples))
        total, batches = 0.0, range(0, len(order), config.batch_size)
        for lo in tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress, leave=False):
            interrupts.check()
            b = epoch_examples.take(order[lo : lo + config.batch_size])
            total += float(step(b.batch())) * len(b)
        losses.append(total / max(len(order), 1))
        log.info("epoch %d: train loss %.4f", epoch + 1, losses[-1])
    return ModelParams.from_arrays(spec, [v.numpy() for v in variables]), losses


def train_cloud_model(data: PreparedDataset, out: Path, model_config: ModelConfig = ModelConfig(),
                      config: TrainConfig = TrainConfig(), progress: bool = True,
                      train_users: np.ndarray | None = None, test_users: np.ndarray | None = None) -> dict:
    """Train on ``data``'s train split, evaluate on its test split, write the model and metrics.

    ``train_users`` limits training to those users' events (the cloud sees only
    the pool of sharing users); ``test_users`` limits evaluation likewise.
    """
    started = time.time()
    spec = ModelSpec.build(model_config, vocabulary_sizes(data))
    train, test = training_examples(data, spec, train_users), evaluation_examples(data, spec, test_users)
    params, losses = fit(spec, init_params(spec, model_config.init_seed), train, config, progress)
    scores = predict(spec, params, test.inputs())
    baseline = popularity_scores(of_users(data.train, train_users), of_users(data.test, test_users)["item_id"].to_numpy())
    report = {
        "data": str(data.root),
        "model": ctr_metrics(test.user_id, test.label, scores),
        "popularity_baseline": ctr_metrics(test.user_id, test.label, baseline),
        "train_loss": losses,
        "train_examples": len(train(0)),
        "train_users": None if train_users is None else int(len(np.unique(train_users))),
        "test_examples": len(test),
        "config": {"model": asdict(model_config), "train": asdict(config)},
        "seconds": round(time.time() - started, 2),
    }
    out = Path(out)
    save_model(out, spec, params, meta={"trained_on": str(data.root), "config": report["config"]})
    write_json_atomic(out / "metrics.json", report)
    return report
