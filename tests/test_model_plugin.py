"""A model defined outside recfl/ (tests/plugins/bilinear.py) through every stage: cloud training, FedSubAvg in TFF,
TFLite personalization on builtin ops, and the A/B harness."""

from __future__ import annotations

import json

import pandas as pd

from device.tflite_trainer import conversions
from recfl.app.cli import main
from recfl.core.models import load_model

PLUGIN = ["--set", "model.name=tests.plugins.bilinear:build", "--set", "model.embed_dim=4"]


def test_a_plugged_in_model_runs_through_simulate_personalize_and_ab(small_pool, tmp_path, capsys):
    data, pool = str(small_pool.data.root), str(small_pool.pool_dir)
    assert main(["train", "--data", data, "--pool", pool, "--out", str(tmp_path / "cloud"), "--epochs", "1", *PLUGIN]) == 0
    spec, params = load_model(tmp_path / "cloud")
    assert [t.name for t in spec.definition.tables] == ["vectors", "bias"] and set(params.private) == {"user_bias"}
    assert main(["simulate", "--data", data, "--pool", pool, "--out", str(tmp_path / "sim"), "--init", str(tmp_path / "cloud"),
                 "--rounds", "2", "--clients-per-round", "6", "--eval-every", "1", *PLUGIN]) == 0
    rounds = [json.loads(line) for line in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and all(r["upload_bytes"] > 0 for r in rounds)
    model = tmp_path / "sim" / "model"
    for arm in ("cloud", "local"):
        assert main(["personalize", "--data", data, "--model", str(model), "--arm", arm, "--pool", pool, "--users", "6",
                     "--out", str(tmp_path / f"{arm}.parquet"), "--set", "finetune.max_epochs=2"]) == 0
    (record,) = conversions(model / "tflite")
    assert record["flex_nodes"] == {} and record["spec"]["config"]["name"] == "tests.plugins.bilinear:build"
    devices = pd.read_parquet(tmp_path / "local.devices" / "users.parquet")
    assert len(devices) == 6 and {"vectors_rows", "bias_rows"} <= set(devices.columns)
    capsys.readouterr()
    assert main(["ab", "evaluate", str(tmp_path / "cloud.parquet"), str(tmp_path / "local.parquet"), "--control", "cloud",
                 "--metrics", "auc,gauc", "--bootstrap", "50", "--out", str(tmp_path / "ab")]) == 0
    report = json.loads((tmp_path / "ab" / "metrics.json").read_text())
    assert {a["arm"] for a in report["arms"]} == {"cloud", "local"}
