"""`recfl pool build|match` and `recfl train --pool` from the command line."""

from __future__ import annotations

import json

import pytest

from recfl.app.cli import main
from recfl.core.candidates import read_candidates


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_then_match_in_two_shards(tmp_path, capsys):
    data = tmp_path / "data"
    assert run(capsys, "data", "synth", "--users", "120", "--items", "400", "--out", str(data), "--seed", "2")[0] == 0
    code, out, _ = run(capsys, "pool", "build", "--data", str(data), "--out", str(tmp_path / "pool"), "--share-fraction", "0.4")
    summary = json.loads(out)
    assert code == 0 and summary["share_fraction"] == 0.4 and summary["pool_events"] > 0
    total = 0
    for shard in ("0/2", "1/2"):
        code, out, _ = run(capsys, "pool", "match", "--data", str(data), "--pool", str(tmp_path / "pool"),
                           "--out", str(tmp_path / "cand"), "--shard", shard, "--set", "matching.top_m=5")
        assert code == 0
        total += json.loads(out)["candidates"]
    assert total == len(read_candidates(tmp_path / "cand")) > 0


@pytest.mark.parametrize("argv,message", [
    (["pool", "match", "--data", "{data}", "--pool", "{tmp}/none", "--out", "{tmp}/c"], "none: not a cloud pool (no such folder)"),
    (["pool", "match", "--data", "{data}", "--pool", "{tmp}/none", "--out", "{tmp}/c", "--shard", "3/3"], "--shard '3/3'"),
    (["pool", "build", "--data", "{data}", "--out", "{tmp}/p", "--share-fraction", "2"], "pool.share_fraction = 2.0 must be in [0, 1]"),
    (["pool", "match", "--data", "{data}", "--pool", "{tmp}/none", "--out", "{tmp}/c", "--set", "matching.top_m=0"], "top_m"),
])
def test_user_mistakes_are_one_line(tmp_path, capsys, small_pool, argv, message):
    argv = [a.format(data=small_pool.data.root, tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_train_on_pool_users_evaluates_on_device_users(small_pool, tmp_path, capsys):
    code, out, _ = run(capsys, "train", "--data", str(small_pool.data.root), "--out", str(tmp_path / "m"),
                       "--pool", str(small_pool.pool_dir), "--epochs", "1")
    assert code == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["train_users"] == len(small_pool.split.sharing_users)
    device_test = small_pool.data.test["user_id"].isin(small_pool.split.device_users).sum()
    assert metrics["test_examples"] == device_test and json.loads(out)["test"]["auc"] > 0.5
