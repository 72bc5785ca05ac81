"""Central training of the cloud model on real data beats the popularity baseline."""

from __future__ import annotations

import pytest
from conftest import shared

from recfl.core.dataset import prepare
from recfl.core.formats import load
from recfl.core.train import TrainConfig, train_cloud_model


@pytest.mark.shared_data
def test_cloud_model_beats_popularity_on_movielens_100k(tmp_path):
    data = prepare(load("movielens-100k", shared("ml-100k")), tmp_path / "ml")
    report = train_cloud_model(data, tmp_path / "model", config=TrainConfig(epochs=2), progress=False)
    assert report["model"]["auc"] > report["popularity_baseline"]["auc"] + 0.02
    assert report["model"]["gauc"] > report["popularity_baseline"]["gauc"]
    assert report["model"]["logloss"] < 0.65
