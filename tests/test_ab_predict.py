"""`recfl predict` writes the A/B harness's input for the cloud model and the popularity baseline."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import shared

from recfl.app.cli import main
from recfl.core.schema import PREDICTION_COLUMNS, PREDICTION_MARKER


def run(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_model_and_popularity_then_compare(tmp_path, capsys):
    data, model = str(tmp_path / "data"), str(tmp_path / "model")
    run(capsys, "data", "synth", "--users", "80", "--items", "300", "--out", data, "--seed", "1")
    trained = run(capsys, "train", "--data", data, "--out", model, "--epochs", "1", "--set", "model.embed_dim=4",
                  "--set", "model.hidden=[8]")
    cloud = run(capsys, "predict", "--data", data, "--model", model, "--arm", "cloud", "--out", str(tmp_path / "cloud.parquet"))
    pop = run(capsys, "predict", "--data", data, "--popularity", "--arm", "popularity", "--out", str(tmp_path / "pop.parquet"))
    # the file holds exactly the scores `recfl train` evaluated
    assert cloud["test"]["auc"] == pytest.approx(trained["test"]["auc"], abs=1e-6)
    assert pop["test"]["auc"] == pytest.approx(trained["popularity_baseline"]["auc"], abs=1e-6)
    frame = pd.read_parquet(tmp_path / "cloud.parquet")
    assert list(frame.columns) == [*PREDICTION_COLUMNS, *PREDICTION_MARKER] and set(frame["arm"]) == {"cloud"}
    assert frame["score"].between(0, 1).all() and len(frame) == cloud["rows"] == pop["rows"]
    report = run(capsys, "ab", "evaluate", str(tmp_path / "pop.parquet"), str(tmp_path / "cloud.parquet"),
                 "--control", "popularity", "--out", str(tmp_path / "report"), "--bootstrap", "50", "--users", data)
    assert report["arms"]["cloud"] == report["arms"]["popularity"]


def test_predict_needs_a_scorer(tmp_path, capsys):
    assert main(["predict", "--data", str(tmp_path), "--arm", "x", "--out", str(tmp_path / "p.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recfl: error: one of the arguments --model --popularity is required") and err.count("\n") == 1


@pytest.mark.heavy
@pytest.mark.shared_data
def test_cloud_model_beats_popularity_on_movielens_100k_in_the_ab_harness(tmp_path, capsys):
    data, model = str(tmp_path / "ml"), str(tmp_path / "model")
    run(capsys, "data", "prepare", "--format", "movielens-100k", "--path", str(shared("ml-100k")), "--out", data)
    run(capsys, "train", "--data", data, "--out", model)
    run(capsys, "predict", "--data", data, "--model", model, "--arm", "cloud", "--out", str(tmp_path / "cloud.parquet"))
    run(capsys, "predict", "--data", data, "--popularity", "--arm", "popularity", "--out", str(tmp_path / "pop.parquet"))
    run(capsys, "ab", "evaluate", str(tmp_path / "pop.parquet"), str(tmp_path / "cloud.parquet"), "--control", "popularity",
        "--out", str(tmp_path / "report"), "--users", data)
    doc = json.loads((tmp_path / "report" / "metrics.json").read_text())
    overall = {c["metric"]: c for c in doc["comparisons"] if c["segment"] == "all"}
    assert overall["auc"]["better"] is True and overall["gauc"]["better"] is True
