"""`recfl ab evaluate` on degenerate arms (constant scores, one user, one class) and the messages of its guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from recfl.app.cli import main

METRICS = "auc,gauc,logloss,hr@3,ndcg@3,ctr@3,uctr@3"


def _events(users: int, per_user: int, labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"user_id": np.repeat(np.arange(users), per_user), "item_id": np.tile(np.arange(per_user), users),
                         "timestamp": np.tile(np.arange(per_user), users), "label": labels})


def _uniform_users(rng) -> pd.DataFrame:
    """85 users with the same 13 labels: a constant scorer has the same value for every user and every resample."""
    pattern = (rng.random(13) < 0.4).astype(int)
    pattern[0] = 1
    return _events(85, 13, np.tile(pattern, 85))


def _constant(events: pd.DataFrame, rng) -> pd.DataFrame:
    return pd.concat([events.assign(score=rng.random(len(events)), arm="control"),
                      events.assign(score=0.7296554464299441, arm="constant")])


CASES = {
    # its resampled values differ from the point in the last bits: the plots once drew negative error bars and crashed
    "constant score": lambda rng: _constant(_uniform_users(rng), rng),
    "one user": lambda rng: _constant(_events(1, 12, (rng.random(12) < 0.5).astype(int)), rng),
    "one event": lambda rng: _constant(_events(1, 1, np.array([1])), rng),
    "one class (no clicks)": lambda rng: _constant(_events(40, 6, np.zeros(240, int)), rng),
    "one class (all clicks)": lambda rng: _constant(_events(40, 6, np.ones(240, int)), rng),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("design", ["paired", "bucketed"])
def test_degenerate_arms_get_a_complete_report(tmp_path, capsys, case, design):
    frame = CASES[case](np.random.default_rng(0))
    frame.to_csv(tmp_path / "pred.csv", index=False)
    out = tmp_path / "report"
    code = main(["ab", "evaluate", str(tmp_path / "pred.csv"), "--control", "control", "--out", str(out),
                 "--metrics", METRICS, "--bootstrap", "50", "--design", design, "--buckets", "2"])
    err = capsys.readouterr().err
    if design == "bucketed" and frame["user_id"].nunique() == 1:  # one user cannot be split between two arms
        assert code == 2 and "recfl: error: bucketed design: no predictions for the users assigned to '" in err
        return
    assert code == 0, err
    assert all((out / "plots" / f).read_bytes().startswith(b"\x89PNG") for f in ("metrics.png", "lifts.png", "per_user.png"))
    assert "constant" in (out / "report.md").read_text()
    doc = json.loads((out / "metrics.json").read_text())
    assert {v["arm"] for v in doc["values"]} == {"control", "constant"}


def _write(frame: pd.DataFrame, path) -> str:
    frame.to_parquet(path) if str(path).endswith(".parquet") else frame.to_csv(path, index=False)
    return str(path)


def _valid(rng, arm: str) -> pd.DataFrame:
    return _events(20, 5, (rng.random(100) < 0.5).astype(int)).assign(score=rng.random(100), arm=arm)


@pytest.mark.parametrize("name,treatment,message", [
    ("folder", None, "{path}: is a folder; give its predictions files (.parquet or .csv)"),
    ("header only", lambda f: f.iloc[:0], "{path}: no rows (column names only)"),
    ("empty file", "", "{path}: empty file (0 bytes)"),
    ("missing column", lambda f: f.drop(columns="timestamp"), "{path} (arm 'treatment'): missing column(s) timestamp"),
    ("empty ids", lambda f: f.assign(item_id=f["item_id"].where(f.index != 3)),
     "{path} (arm 'treatment'): column item_id must hold integers (found float64, 1 empty)"),
    ("score type", lambda f: f.assign(score="high"), "{path} (arm 'treatment'): column score must be numeric"),
    ("labels", lambda f: f.assign(label=np.where(f.index == 4, 3, f["label"])),
     "{path} (arm 'treatment'): 1 labels are not 0 or 1"),
    ("nan score", lambda f: f.assign(score=np.where(f.index == 4, np.nan, f["score"])),
     "arm 'treatment' ({path}): 1 scores are NaN or infinite"),
    ("duplicate", lambda f: pd.concat([f, f.iloc[[2]]]), "arm 'treatment' ({path}): 2 rows share a (user_id, item_id, timestamp)"),
])
@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_every_guard_names_the_file_and_the_arm(tmp_path, capsys, name, treatment, message, suffix):
    rng = np.random.default_rng(1)
    control = _write(_valid(rng, "control"), tmp_path / f"control.{suffix}")
    path = tmp_path / f"treatment.{suffix}"
    if treatment is None:
        path.mkdir()
    elif isinstance(treatment, str):
        path.write_text(treatment)
    else:
        _write(treatment(_valid(rng, "treatment")), path)
    assert main(["ab", "evaluate", control, str(path), "--control", "control", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recfl: error: " + message.format(path=path)) and err.count("\n") == 1, err


def test_metrics_json_does_not_depend_on_the_blas_threads_or_kernels(tmp_path):
    """OpenBLAS sums in an order set by its thread count and the CPU's kernels; the bootstrap does not use it."""
    rng = np.random.default_rng(2)
    labels = (rng.random(30_000) < 0.3).astype(int)
    frame = pd.concat([_events(3000, 10, labels).assign(score=rng.random(30_000), arm=arm) for arm in ("a", "b")])
    frame.to_parquet(tmp_path / "pred.parquet")
    pd.DataFrame({"user_id": np.arange(3000), "train_events": np.arange(3000) % 50}).to_csv(tmp_path / "users.csv")
    reports = []
    for i, blas in enumerate([{"OPENBLAS_NUM_THREADS": "1"}, {"OPENBLAS_NUM_THREADS": "2"}, {"OPENBLAS_CORETYPE": "Haswell"}]):
        out = tmp_path / f"report-{i}"
        subprocess.run([sys.executable, "-m", "recfl", "ab", "evaluate", str(tmp_path / "pred.parquet"), "--control", "a",
                        "--out", str(out), "--bootstrap", "200", "--users", str(tmp_path / "users.csv")],
                       env={**os.environ, **blas}, check=True, capture_output=True)
        reports.append((out / "metrics.json").read_bytes())
    assert reports[1] == reports[0] and reports[2] == reports[0]
