"""Guards on predictions files: every problem is one clear error naming the arm, never a silent drop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ab_testing.evaluate import AbConfig, evaluate
from ab_testing.predictions import from_frame, read_predictions
from recfl.core.errors import RecflError
from tools.ab_simulate import SimArm, simulate, write_arms


@pytest.fixture
def frame() -> pd.DataFrame:
    return simulate(60, [SimArm("a", 1.0), SimArm("b", 0.8)], seed=3)


def run(frame: pd.DataFrame, **config):
    return evaluate(from_frame(frame), "a", AbConfig(bootstrap=20, **config))


def test_files_round_trip_parquet_and_csv(tmp_path, frame):
    paths = write_arms(frame, tmp_path)
    frame[frame["arm"] == "b"].to_csv(tmp_path / "b.csv", index=False)
    pred = read_predictions([paths[0], tmp_path / "b.csv"])
    assert pred.arms == ("a", "b") and len(pred.frame) == len(frame)
    assert pred.sources == {"a": str(paths[0]), "b": str(tmp_path / "b.csv")}


@pytest.mark.parametrize("name,change,message", [
    ("missing", lambda f: f.drop(columns="timestamp"), "missing column(s) timestamp"),
    ("ids", lambda f: f.assign(user_id=f["user_id"].astype(str)), "column user_id must hold integers"),
    ("labels", lambda f: f.assign(label=np.where(np.arange(len(f)) == 5, 2, f["label"])), "1 labels are not 0 or 1"),
    ("score type", lambda f: f.assign(score="high"), "column score must be numeric"),
    ("no arm", lambda f: f.assign(arm=np.where(np.arange(len(f)) < 3, None, f["arm"])), "3 rows without an arm name"),
])
def test_malformed_tables_are_refused(frame, name, change, message):
    with pytest.raises(RecflError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_frame(change(frame))


def test_nan_and_infinite_scores_are_errors(frame):
    bad = frame.copy()
    bad.loc[bad.index[bad["arm"] == "b"][:2], "score"] = [np.nan, np.inf]
    with pytest.raises(RecflError, match=r"arm 'b' \(<frame>\): 2 scores are NaN or infinite \(e.g. user 0"):
        run(bad)


def test_scores_outside_unit_interval_are_an_error_only_for_logloss(frame):
    bad = frame.assign(score=np.where(frame["arm"] == "b", frame["score"] * 3, frame["score"]))
    with pytest.raises(RecflError, match="scores outside \\[0, 1\\].*leave logloss out of --metrics"):
        run(bad)
    assert run(bad, metrics=("auc", "ndcg@5")).comparisons  # ranking metrics only need an order


def test_duplicate_events_are_errors(frame):
    dup = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    with pytest.raises(RecflError, match=r"arm 'a' \(<frame>\): 2 rows share a \(user_id, item_id, timestamp\)"):
        run(dup)


def test_paired_design_refuses_arms_on_different_events(frame):
    fewer = frame[~((frame["arm"] == "b") & (frame["user_id"] < 5))]
    with pytest.raises(RecflError, match=r"do not score the same events: 0 events of 0 users only in 'b', \d+ events "
                                         r"of 5 users only in 'a' .*use --design bucketed"):
        run(fewer)
    assert run(fewer, design="bucketed").assignment.missing["b"] >= 0  # the bucketed design accepts it (and checks SRM)


def test_paired_design_refuses_different_labels(frame):
    flipped = frame.copy()
    row = flipped.index[flipped["arm"] == "b"][7]
    flipped.loc[row, "label"] = 1 - flipped.loc[row, "label"]
    with pytest.raises(RecflError, match="1 events have a different label in arm 'b' than in control 'a'"):
        run(flipped)


def test_arm_and_file_mistakes(tmp_path, frame):
    paths = write_arms(frame, tmp_path)
    with pytest.raises(RecflError, match="arm 'a' is also in"):
        read_predictions([paths[0], paths[0]])
    with pytest.raises(RecflError, match="predictions file not found"):
        read_predictions([tmp_path / "nope.parquet"])
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(RecflError, match="expected a .parquet or .csv"):
        read_predictions([tmp_path / "x.txt"])
    with pytest.raises(RecflError, match=r"control arm 'z' is not in the predictions \(arms: a, b\)"):
        evaluate(read_predictions(paths), "z")
    with pytest.raises(RecflError, match="only one arm"):
        evaluate(read_predictions(paths[:1]), "a")
    with pytest.raises(RecflError, match="unknown design 'ab'"):
        run(frame, design="ab")
