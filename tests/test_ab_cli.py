"""`recfl ab evaluate` end to end on generated predictions files: report files, JSON, segments, one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from recfl.app.cli import main
from tools.ab_simulate import SimArm, simulate, write_arms

ARMS = [SimArm("control", 1.0), SimArm("better", 0.6), SimArm("same", 1.0)]


@pytest.fixture
def files(tmp_path):
    return write_arms(simulate(500, ARMS, seed=5), tmp_path / "pred")


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_paired_report_with_segments_is_complete_and_self_contained(tmp_path, files, capsys):
    users = pd.DataFrame({"user_id": np.arange(480), "train_events": np.arange(480) % 90})  # 20 users not listed
    users.to_parquet(tmp_path / "users.parquet")
    out = tmp_path / "report"
    assert main(["ab", "evaluate", *map(str, files), "--control", "control", "--out", str(out), "--bootstrap", "300",
                 "--metrics", "auc,gauc,logloss,ndcg@5,ctr@5,uctr@5", "--users", str(tmp_path / "users.parquet")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["arms"]["better"] == printed["arms"]["control"] and printed["arms"]["same"]["users"] == 500
    assert any(s.startswith("better auc: better") for s in printed["significant"])
    assert not any(s.startswith("same ") for s in printed["significant"])  # same noise: no difference expected
    assert printed["warnings"] == ["20 evaluated users are not in the users file; they count as users with 0 "
                                   "training events (cold)"]

    doc = strict_json((out / "metrics.json").read_text())
    assert doc["config"]["bootstrap"] == 300 and doc["control"] == "control" and doc["treatments"] == ["better", "same"]
    assert set(doc["segments"]["users"]) == {"all", "cold", "warm", "hot"}
    assert sum(doc["segments"]["users"][s]["better"] for s in ("cold", "warm", "hot")) == 500
    assert len(doc["comparisons"]) == 2 * 6 * 4 and len(doc["values"]) == 3 * 6 * 4
    auc_lift = next(c for c in doc["comparisons"] if (c["treatment"], c["metric"], c["segment"]) == ("better", "auc", "all"))
    assert auc_lift["abs_ci"][0] > 0 and auc_lift["significant"] is True and auc_lift["better"] is True

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing outside the file
    markdown = (out / "report.md").read_text()
    for text in ("# A/B report: better, same vs control control", "**paired**", "## Verdict", "## Segments",
                 "- **better** vs control: better on auc (+", "- **same** vs control: no significant difference on auc",
                 "cold < ", "| better | auc |", "![metric per arm with intervals](plots/metrics.png)"):
        assert text in markdown, text
    assert all((out / "plots" / f).read_bytes().startswith(b"\x89PNG") for f in ("metrics.png", "lifts.png", "per_user.png"))


def test_bucketed_report_shows_the_assignment(tmp_path, files, capsys):
    out = tmp_path / "report"
    assert main(["ab", "evaluate", *map(str, files), "--control", "control", "--out", str(out), "--design", "bucketed",
                 "--buckets", "10", "--salt", "exp-3", "--bootstrap", "100", "--set", "ab.correction='bh'"]) == 0
    doc = strict_json((out / "metrics.json").read_text())
    assert doc["assignment"]["buckets"] == {"control": [0, 3], "better": [3, 6], "same": [6, 10]}
    assert sum(doc["assignment"]["assigned_users"].values()) == 500 and doc["assignment"]["srm"]["mismatch"] is False
    assert doc["config"]["correction"] == "bh" and sum(a["users"] for a in doc["arms"]) == 500
    assert "## Assignment and sample-ratio check" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra,message", [
    (["--metrics", "auc,map@5"], "recfl: error: unknown metric 'map@5'"),
    (["--design", "ab"], "recfl: error: unknown design 'ab'; choose one of paired, bucketed"),
    (["--bootstrap", "1"], "recfl: error: config: ab.bootstrap = 1 must be >= 2"),
    (["--set", "ab.alpha=0.1"], "recfl: error: config: unknown key(s) alpha in [ab]"),
    (["--users", "/nonexistent/users.parquet"], "recfl: error: /nonexistent/users.parquet: users file not found"),
])
def test_mistakes_are_one_line_errors(tmp_path, files, capsys, extra, message):
    assert main(["ab", "evaluate", *map(str, files), "--control", "control", "--out", str(tmp_path / "r"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_bad_rows_are_one_line_errors(tmp_path, files, capsys):
    frame = pd.read_parquet(files[1])
    pd.concat([frame, frame.iloc[[3]]]).to_parquet(tmp_path / "dup.parquet")
    assert main(["ab", "evaluate", str(files[0]), str(tmp_path / "dup.parquet"), "--control", "control",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recfl: error: arm 'better' ({tmp_path / 'dup.parquet'}): 2 rows share a (user_id, item_id, "
                          "timestamp)") and err.count("\n") == 1
