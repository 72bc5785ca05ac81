"""``recfl personalize`` end to end on a small synthetic pool, for every arm."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cloud_pool.matching import MatchConfig, write_candidates
from device.personalize import ARMS, PreviousDevices, capacity_prefix
from device.tflite_trainer import conversions
from device.votes import votes, with_votes
from recfl.app.cli import main
from recfl.core.candidates import read_candidates
from recfl.core.features import Examples
from recfl.core.models import ModelConfig, ModelSpec
from recfl.core.schema import PREDICTION_COLUMNS, PREDICTION_MARKER
from recfl.core.submodel import Submodel
from recfl.core.train import TrainConfig, train_cloud_model

USERS = 5
FAST = ["--set", "finetune.max_epochs=2", "--set", "filter.rounds=10"]


@pytest.fixture(scope="module")
def setup(small_pool, tmp_path_factory):
    """The pool's global model (trained on sharing users only) and the device users' candidates."""
    root = tmp_path_factory.mktemp("personalize")
    train_cloud_model(small_pool.data, root / "model", ModelConfig(embed_dim=8, hidden=(16,)), TrainConfig(epochs=1),
                      progress=False, train_users=small_pool.split.sharing_users, test_users=small_pool.split.device_users)
    write_candidates(small_pool.pool_dir, small_pool.data, root / "cands", MatchConfig(budget_multiplier=3, min_budget=20),
                     progress=False)
    return small_pool, root


def _run(setup, arm, out, *extra):
    pool, root = setup
    args = ["personalize", "--data", str(pool.data.root), "--model", str(root / "model"), "--arm", arm, "--out", str(out),
            "--pool", str(pool.pool_dir), "--candidates", str(root / "cands"), "--users", str(USERS), *FAST, *extra]
    return main(args)


def test_every_arm_end_to_end(setup, tmp_path, capsys):
    pool, root = setup
    device_users = np.sort(pool.split.device_users)
    test = pool.data.test
    expected = test[test["user_id"].isin(np.intersect1d(device_users, test["user_id"].unique())[:USERS])]
    scores = {}
    for arm in ARMS:
        assert _run(setup, arm, tmp_path / f"{arm}.parquet") == 0
        summary = json.loads(capsys.readouterr().out)
        pred = pd.read_parquet(tmp_path / f"{arm}.parquet")
        assert list(pred.columns) == [*PREDICTION_COLUMNS, *PREDICTION_MARKER] and (pred["arm"] == arm).all()
        assert len(pred) == len(expected) and set(pred["user_id"]) == set(expected["user_id"])
        assert pred["score"].between(0, 1).all() and summary["users"] == USERS
        scores[arm] = pred["score"].to_numpy()
        if arm == "cloud":
            continue
        devices = tmp_path / f"{arm}.devices"
        assert sorted(p.name for p in devices.glob("*.weights.npz")) == sorted(f"{u}.weights.npz" for u in expected["user_id"].unique())
        report = pd.read_parquet(devices / "users.parquet")
        assert len(report) == USERS and (report["arm"] == arm).all()
        if arm == "local":
            assert (report["trained_candidates"] == 0).all()
        if arm == "coda-nofilter":
            assert (report["trained_candidates"] == report["candidates"]).all() and (report["candidates"] > 0).all()
        if arm == "coda":
            assert set(report["filter_path"]) <= {"classifier", "fallback"}
            assert (report["kept"] < report["candidates"]).all() and report["kept_fraction"].between(0, 1).all()
            assert "filter_auc" in report
    # the .tflite was converted by the first device arm only, and reused by the others
    assert len(conversions(root / "model" / "tflite")) == 1
    assert not np.allclose(scores["cloud"], scores["coda-nofilter"])


def test_untrained_device_model_scores_like_the_cloud_model(setup, tmp_path, capsys):
    """Submodel extraction + TFLite inference reproduce the global model when nothing is trained."""
    assert _run(setup, "cloud", tmp_path / "cloud.parquet") == 0
    assert _run(setup, "local", tmp_path / "local.parquet", "--set", "finetune.max_epochs=0") == 0
    capsys.readouterr()
    cloud, local = (pd.read_parquet(tmp_path / f"{a}.parquet") for a in ("cloud", "local"))
    np.testing.assert_allclose(local["score"], cloud["score"], atol=1e-5)


def test_votes_move_the_scores_of_arms_with_candidates_by_their_labels_and_leave_local_alone(setup, tmp_path, capsys):
    """Without fine-tuning, coda-nofilter with votes is the cloud model's score moved by each item's candidate vote."""
    pool, root = setup
    untrained = ["--set", "finetune.max_epochs=0"]
    assert _run(setup, "cloud", tmp_path / "cloud.parquet") == 0
    assert _run(setup, "local", tmp_path / "local.parquet", *untrained, "--set", "finetune.votes=3.0") == 0
    assert _run(setup, "coda-nofilter", tmp_path / "voted.parquet", *untrained, "--set", "finetune.votes=3.0",
                "--set", "finetune.votes_shrink=0.5") == 0
    capsys.readouterr()
    cloud, local, voted = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("cloud", "local", "voted"))
    np.testing.assert_allclose(local["score"], cloud["score"], atol=1e-5)  # local has no candidates to vote
    candidates = read_candidates(root / "cands", voted["user_id"].unique())
    expected = []
    for user, rows in cloud.groupby("user_id", sort=False):
        mine = candidates[candidates["target_user_id"] == user]
        vote = votes(rows["item_id"].to_numpy(), mine["item_id"].to_numpy(), mine["label"].to_numpy(), 0.5)
        expected.append(with_votes(rows["score"].to_numpy(), vote, 3.0))
    moved = np.concatenate(expected)
    assert not np.allclose(moved, cloud["score"], atol=1e-3)  # some scored items are among the candidates
    np.testing.assert_allclose(voted["score"], moved, atol=1e-4)
    report = pd.read_parquet(tmp_path / "voted.devices" / "users.parquet")
    assert report["voted_events"].sum() > 0


def test_candidates_that_only_vote_leave_fine_tuning_as_local_does_it(setup, tmp_path, capsys):
    """candidate_weight = 0: coda fine-tunes exactly like local (same weights), and without votes scores like it."""
    assert _run(setup, "local", tmp_path / "local.parquet") == 0
    assert _run(setup, "coda", tmp_path / "coda.parquet", "--set", "finetune.candidate_weight=0.0",
                "--set", "finetune.votes=0.0") == 0
    capsys.readouterr()
    local, coda = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("local", "coda"))
    np.testing.assert_array_equal(coda["score"], local["score"])
    for user in local["user_id"].unique():
        a, b = (np.load(tmp_path / f"{n}.devices" / f"{user}.weights.npz") for n in ("local", "coda"))
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    report = pd.read_parquet(tmp_path / "coda.devices" / "users.parquet")
    assert (report["trained_candidates"] == 0).all() and (report["trimmed"] == 0).all() and (report["kept"] > 0).all()


def test_votes_from_the_kept_candidates_follow_the_filter(setup, tmp_path, capsys):
    """votes_from = "kept": a filter that keeps nothing leaves no vote; one that keeps all votes like every candidate."""
    only_vote = ["--set", "finetune.candidate_weight=0.0", "--set", "finetune.votes=2.0"]
    assert _run(setup, "coda", tmp_path / "received.parquet", *only_vote) == 0
    assert _run(setup, "coda", tmp_path / "all.parquet", *only_vote, "--set", 'finetune.votes_from="kept"',
                "--set", "filter.keep_fraction=1.0") == 0
    assert _run(setup, "coda", tmp_path / "none.parquet", *only_vote, "--set", 'finetune.votes_from="kept"',
                "--set", "filter.keep_fraction=0.0") == 0
    assert _run(setup, "local", tmp_path / "local.parquet") == 0
    capsys.readouterr()
    received, kept_all, none, local = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("received", "all", "none", "local"))
    np.testing.assert_array_equal(kept_all["score"], received["score"])
    assert not np.allclose(received["score"], local["score"], atol=1e-4)
    assert _run(setup, "coda", tmp_path / "odds.parquet", *only_vote, "--set", 'finetune.votes_from="kept"',
                "--set", "filter.keep_fraction=1.0", "--set", 'filter.weighting="odds"', "--set", "filter.min_local=3") == 0
    capsys.readouterr()
    odds = pd.read_parquet(tmp_path / "odds.parquet")
    assert (pd.read_parquet(tmp_path / "odds.devices" / "users.parquet")["filter_path"] == "classifier").any()
    assert not np.allclose(odds["score"], received["score"], atol=1e-5)  # the filter's odds weigh the voters
    np.testing.assert_array_equal(none["score"], local["score"])
    assert (pd.read_parquet(tmp_path / "none.devices" / "users.parquet")["voted_events"] == 0).all()


def test_workers_give_the_same_result_without_converting(setup, tmp_path, capsys):
    assert _run(setup, "coda", tmp_path / "one.parquet") == 0
    capsys.readouterr()
    assert _run(setup, "coda", tmp_path / "two.parquet", "--workers", "2") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tflite_conversions"] == 0
    one, two = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("one", "two"))
    pd.testing.assert_frame_equal(one, two)


def test_candidates_are_matched_on_the_fly_without_a_candidates_directory(setup, tmp_path, capsys):
    pool, root = setup
    common = ["personalize", "--data", str(pool.data.root), "--model", str(root / "model"), "--arm", "coda-nofilter",
              "--pool", str(pool.pool_dir), "--users", "3", *FAST]
    assert main([*common, "--out", str(tmp_path / "read.parquet"), "--candidates", str(root / "cands")]) == 0
    assert main([*common, "--out", str(tmp_path / "matched.parquet"), "--set", "matching.budget_multiplier=3",
                 "--set", "matching.min_budget=20"]) == 0
    capsys.readouterr()
    read, matched = (pd.read_parquet(tmp_path / f"{n}.devices" / "users.parquet") for n in ("read", "matched"))
    assert (matched["candidates"] > 0).all()
    pd.testing.assert_frame_equal(read[["user_id", "candidates"]], matched[["user_id", "candidates"]])


def test_tiny_users_take_the_fallback_end_to_end(setup, tmp_path, capsys):
    assert _run(setup, "coda", tmp_path / "p.parquet", "--set", "filter.min_local=100000") == 0
    capsys.readouterr()
    report = pd.read_parquet(tmp_path / "p.devices" / "users.parquet")
    assert (report["filter_path"] == "fallback").all() and report["filter_auc"].isna().all()
    np.testing.assert_array_equal(report["kept"], np.ceil(0.1 * report["candidates"]).astype(int))


def test_user_mistakes_are_one_line_errors(setup, tmp_path, capsys):
    pool, root = setup
    code = main(["personalize", "--data", str(pool.data.root), "--model", str(root / "model"), "--arm", "coda",
                 "--out", str(tmp_path / "p.parquet")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "needs --pool" in err
    code = main(["personalize", "--data", str(pool.data.root), "--model", str(tmp_path), "--arm", "local",
                 "--out", str(tmp_path / "p.parquet")])
    assert code == 2 and "not a recfl model directory" in capsys.readouterr().err


def test_capacity_keeps_the_leading_candidates_that_fit():
    def ex(items, hist, cats=None):
        n = len(items)
        cats = np.full((n, 1), 2, np.int32) if cats is None else np.array(cats, np.int32).reshape(n, 1)
        return Examples(np.array(items, np.int32), cats, np.array(hist, np.int32).reshape(n, -1),
                        np.zeros(n, np.float32), np.zeros(n, np.int64), np.zeros(n, np.int64))

    spec = ModelSpec.build(ModelConfig(history=1, max_categories=1), {"items": 10, "categories": 5})
    base = Submodel.covering(spec, ex([2, 3], [[0], [2]]))  # item rows 0, 1, 2, 3
    cands = ex([3, 4, 5, 4, 6], [[2], [0], [4], [5], [7]])  # new rows: -, 4, 5, -, 6 7

    def fits(items, categories, candidates=cands):
        return capacity_prefix(base, candidates, {"item": items, "category": categories})

    assert fits(5, 8) == 2  # 4 rows + {4}; the third adds 5
    assert fits(7, 8) == 4  # the fourth adds nothing; the fifth adds 6 and 7
    assert fits(8, 8) == 5
    recats = ex([3, 4, 5, 4, 6], [[2], [0], [4], [5], [7]], cats=[2, 2, 3, 4, 3])
    assert fits(8, 4, recats) == 3  # category rows 0, 1, 2 + {3} fit 4; the fourth adds 4
    assert fits(8, 8, cands.take(slice(0, 0))) == 0
    with pytest.raises(Exception, match="capacity"):
        fits(3, 8)


def test_damaged_or_older_earlier_devices_are_run_again(tmp_path, caplog):
    """Earlier outputs that cannot be read, or that predate input digests, take nothing over: every device runs."""
    predictions = tmp_path / "coda.parquet"
    devices = tmp_path / "coda.devices"
    devices.mkdir()
    assert PreviousDevices.read(predictions) is None  # none at all
    predictions.write_bytes(b"PAR1 not a parquet file")
    (devices / "users.parquet").write_bytes(b"\x00" * 64)
    assert PreviousDevices.read(predictions) is None and "personalizing every device again" in caplog.text
    pd.DataFrame({"user_id": [1], "score": [0.5]}).to_parquet(predictions)
    pd.DataFrame({"user_id": [1], "seconds": [0.1]}).to_parquet(devices / "users.parquet")  # no digests: an older recfl
    assert PreviousDevices.read(predictions) is None
