"""Evaluation that can tell arms apart: the leave-one-out protocol's HR@10/NDCG@10, who can count, and the stop before training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared

from ab_testing.evaluate import AbConfig, evaluate
from ab_testing.predictions import from_frame, read_predictions
from cloud_pool.pool import PoolConfig
from recfl.app.cli import main
from recfl.app.commands.run import summary_lines
from recfl.app.evaluable import evaluable, require_evaluable
from recfl.app.pipeline import ARMS
from recfl.core.dataset import DataConfig, prepare, split_source
from recfl.core.errors import RecflError
from recfl.core.evaluable import coverage
from recfl.core.formats import SyntheticSpec, load
from recfl.core.schema import SAMPLED, predictions_table

RANKS = {1: 1, 2: 4, 3: 10, 4: 11, 5: 57}  # user -> rank of the test positive among its 100 events


def _loo_predictions(ranks: dict[int, int], arm: str) -> pd.DataFrame:
    """Per user one positive and 99 sampled negatives, the positive scored at the given rank (1 = top)."""
    rows = []
    for user, rank in ranks.items():
        negatives = np.linspace(0.99, 0.01, 99)
        rows += [(user, 1000 + k, 0, s) for k, s in enumerate(negatives)]
        above, below = negatives[rank - 2] if rank > 1 else 1.0, negatives[rank - 1] if rank <= 99 else 0.0
        rows.append((user, 1, 1, (above + below) / 2))
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "score"])
    return frame.assign(timestamp=100, arm=arm)


def test_hr_and_ndcg_at_10_are_the_published_leave_one_out_protocol():
    """Per user, the positive ranked among its 100 events; HR@10 = share of users with it in the top 10,
    NDCG@10 = mean of 1/log2(rank + 1) (0 outside the top 10), as NCF, FedNCF, FedMF and PFedRec report them."""
    other = {user: max(1, rank - 3) for user, rank in RANKS.items()}
    frame = pd.concat([_loo_predictions(RANKS, "a"), _loo_predictions(other, "b")])
    result = evaluate(from_frame(frame), "a", AbConfig(metrics=("hr@10", "ndcg@10", "gauc"), bootstrap=20))
    value = {(v.arm, v.metric): v.value for v in result.values if v.segment == "all"}
    for arm, ranks in (("a", RANKS), ("b", other)):
        hand_hr = sum(r <= 10 for r in ranks.values()) / len(ranks)
        hand_ndcg = sum(1 / math.log2(r + 1) for r in ranks.values() if r <= 10) / len(ranks)
        hand_gauc = sum((100 - r) / 99 for r in ranks.values()) / len(ranks)  # every user has 100 events
        assert value[(arm, "hr@10")] == pytest.approx(hand_hr)
        assert value[(arm, "ndcg@10")] == pytest.approx(hand_ndcg)
        assert value[(arm, "gauc")] == pytest.approx(hand_gauc)
    assert value[("a", "hr@10")] == pytest.approx(3 / 5)
    assert {a.arm: a.counted_users["hr@10"] for a in result.arms} == {"a": 5, "b": 5}


def test_coverage_counts_who_can_count_per_metric():
    test = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 4, 4], "label": [1, 0, 1, 1, 0, 0, 1]})
    report = coverage(test, ["gauc", "logloss", "hr@10", "ctr@5"], {"all": np.array([1, 2, 3, 4, 5]), "some": np.array([2, 4])})
    assert report["all"] == {"users": 5, "with_test": 4, "with_positive": 3, "gauc": 2, "logloss": 2, "hr@10": 3, "ctr@5": 4}
    assert report["some"] == {"users": 2, "with_test": 2, "with_positive": 2, "gauc": 1, "logloss": 1, "hr@10": 2, "ctr@5": 2}
    with pytest.raises(RecflError, match="unknown metric 'mrr'"):
        coverage(test, ["mrr"], {"all": np.array([1])})


def _report(counted: int, users: int) -> dict:
    group = {"users": users, "with_test": users, "with_positive": users, "gauc": counted}
    return {"primary": "gauc", "needs": {"gauc": "both classes"}, "all": group, "device": group, "evaluated": group}


def test_the_stop_before_training_needs_enough_counted_users():
    require_evaluable(_report(50, 200), 50)
    require_evaluable(_report(4, 8), 50)  # a run of 8 users needs half of them, not 50
    require_evaluable(_report(50, 99), 50)
    require_evaluable(_report(0, 200), 0)  # 0 never stops
    for report, minimum in ((_report(49, 200), 50), (_report(3, 8), 50), (_report(49, 99), 50)):
        with pytest.raises(RecflError) as err:
            require_evaluable(report, minimum)
        message = str(err.value)
        assert message.startswith(f"only {report['evaluated']['gauc']} of the {report['evaluated']['users']} evaluated")
        assert "data.negatives" in message and "leave_one_out" in message and "min_user_events" in message
        assert "\n" not in message


def test_prepared_negatives_make_every_user_with_a_positive_count():
    source = load("synthetic", None, SyntheticSpec(users=60, items=200, categories=6, clusters=3, events_per_user=8, seed=2))
    plain = split_source(source, DataConfig())
    sampled = split_source(source, DataConfig(negatives=5))
    groups = {"all": np.unique(plain.test["user_id"])}
    before = coverage(plain.test, ["gauc"], groups)["all"]
    after = coverage(sampled.test, ["gauc"], groups)["all"]
    assert before["gauc"] < before["with_positive"] and after["gauc"] == after["with_positive"] == before["with_positive"]


def test_evaluable_groups_follow_the_pool_salt_and_the_run_size():
    source = load("synthetic", None, SyntheticSpec(users=200, items=300, categories=6, clusters=3, seed=2))
    prepared = split_source(source, DataConfig())
    report = evaluable(prepared.train, prepared.test, AbConfig(primary="ndcg@10"), PoolConfig(), 30)
    assert report["primary"] == "ndcg@10" and list(report["needs"])[0] == "ndcg@10"
    assert report["evaluated"]["users"] == 30 and 0 < report["device"]["users"] < report["all"]["users"]
    other = evaluable(prepared.train, prepared.test, AbConfig(), PoolConfig(salt="other"), 30)
    assert other["device"]["users"] != report["device"]["users"] or other["evaluated"] != report["evaluated"]


def test_describe_reports_the_split_and_who_counts(capsys, fixtures):
    path = str(fixtures / "sequence.txt")
    assert main(["data", "describe", "--format", "sequence", "--path", path, "--split", "leave_one_out",
                 "--negatives", "4", "--set", "run.device_users=0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 24 and out["split"]["test"]["sampled"] == 20 and "position" in out["time_rule"]
    assert out["evaluable"]["all"]["gauc"] == 5 and out["evaluable"]["min_evaluable_users"] == 50
    assert main(["data", "describe", "--format", "sequence", "--path", path, "--negatives", "40"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recfl: error: data.negatives = 40 is more than the") and err.count("\n") == 1


def test_run_stops_before_training_with_one_line(capsys, tmp_path, fixtures):
    out = tmp_path / "run"
    assert main(["run", "--format", "taobao", "--path", str(fixtures / "taobao.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recfl: error: only 0 of the ") and "for the primary metric gauc" in err and err.count("\n") == 1
    assert (out / "data" / "stage.json").is_file() and not (out / "pool").exists()  # nothing after the data stage


def test_run_summary_names_the_primary_metric_and_its_users_and_never_prints_nan():
    values = {arm: {"value": 0.61, "ci": [0.6, 0.62]} for arm in ARMS}
    values["coda"] = {"value": None, "ci": [None, None]}
    values["local"] = {"value": 0.5, "ci": [None, 0.7]}
    lines = summary_lines({"metric": "ndcg@10", "needs": "a positive", "users": 200, "counted": 180, "values": values})
    assert lines[0].startswith("ndcg@10 (primary metric) on the device users' test events: 180 of 200 users count "
                               "(a user needs a positive among its test events)")
    assert "  cloud          0.6100  [0.6000, 0.6200]" in lines
    assert "  coda           undefined: no user counts for ndcg@10" in lines
    assert "  local          0.5000  [undefined, 0.7000]" in lines
    assert not any("nan" in line.lower() for line in lines)


@pytest.mark.shared_data
def test_taobao_slice_stops_before_training_under_the_default_split(capsys, tmp_path):
    path = shared("taobao-userbehavior/UserBehavior_slice.csv")
    assert main(["run", "--format", "taobao", "--path", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("recfl: error: only 0 of the 200 evaluated device users can count for the primary metric gauc")
    assert not (tmp_path / "run" / "pool").exists()


@pytest.mark.shared_data
def test_taobao_slice_under_leave_one_out_counts_every_evaluated_user(capsys):
    path = shared("taobao-userbehavior/UserBehavior_slice.csv")
    assert main(["data", "describe", "--format", "taobao", "--path", str(path), "--split", "leave_one_out", "--negatives", "99"]) == 0
    report = json.loads(capsys.readouterr().out)["evaluable"]
    assert report["evaluated"]["gauc"] == report["evaluated"]["users"] == 200
    assert report["device"]["ndcg@10"] == report["device"]["with_test"] == 1641


@pytest.mark.shared_data
def test_amazon_with_negatives_counts_nine_in_ten_device_users(capsys):
    path = shared("amazon-musical-instruments/reviews_Musical_Instruments_5.json")
    assert main(["data", "describe", "--format", "amazon-5core", "--path", str(path), "--test-fraction", "0.3",
                 "--negatives", "99"]) == 0
    report = json.loads(capsys.readouterr().out)["evaluable"]
    assert report["device"]["gauc"] >= 0.9 * report["device"]["users"] and report["device"]["users"] == 713
    assert report["evaluated"]["gauc"] >= 0.9 * report["evaluated"]["users"]


@pytest.mark.shared_data
def test_beauty_prepares_as_sequences_with_a_test_positive_for_every_user(tmp_path):
    source = load("sequence", shared("amazon-beauty-seq/Beauty.txt"))
    data = prepare(source, tmp_path / "beauty", DataConfig(split="leave_one_out", negatives=99, train_negatives=4))
    m = data.manifest
    assert (m["train"]["users"], m["test"]["users"], m["test"]["positives"]) == (22363, 22363, 22363)
    assert m["train"]["rows"] + m["test"]["positives"] == 198502 and m["test"]["sampled"] == 99 * 22363
    assert "position" in m["time_rule"]


def test_predictions_carry_the_sampled_marker_and_the_harness_reads_them(tmp_path):
    source = load("synthetic", None, SyntheticSpec(users=40, items=200, categories=6, clusters=3, seed=5))
    data = prepare(source, tmp_path / "d", DataConfig(split="leave_one_out", negatives=9))
    test = data.test
    rng = np.random.default_rng(0)
    files = []
    for arm in ("a", "b"):
        table = predictions_table(test, rng.random(len(test)), arm)
        assert (table[SAMPLED].to_numpy() == test[SAMPLED].to_numpy()).all() and table[SAMPLED].sum() == 9 * test["label"].sum()
        table.to_parquet(tmp_path / f"{arm}.parquet", index=False)
        files.append(tmp_path / f"{arm}.parquet")
    result = evaluate(read_predictions(files), "a", AbConfig(metrics=("gauc", "ndcg@10"), bootstrap=10))
    users = test["user_id"].nunique()  # every user with a test positive, each with its 9 sampled negatives
    assert {a.arm: a.counted_users["gauc"] for a in result.arms} == {"a": users, "b": users} and users > 30


@pytest.mark.heavy
@pytest.mark.shared_data
def test_taobao_slice_runs_end_to_end_under_leave_one_out(capsys, tmp_path):
    """configs/taobao-slice-loo.toml, smaller: every evaluated device user counts for its primary metric."""
    path = shared("taobao-userbehavior/UserBehavior_slice.csv")
    config = Path(__file__).parents[1] / "configs" / "taobao-slice-loo.toml"
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(out), "--set", f"data.path={json.dumps(str(path))}",
                 "--set", "run.device_users=30", "--set", "train.epochs=1", "--set", "federated.rounds=2",
                 "--set", "ab.bootstrap=50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ndcg@10 (primary metric) on the device users' test events: 30 of 30 users count")
    primary = json.loads((out / "run.json").read_text())["stages"]["ab"]["primary"]
    assert all(v["value"] is not None for v in primary["values"].values())
