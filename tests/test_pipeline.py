"""``recfl run``: every stage end to end on a tiny synthetic set, skipping, and resuming after a kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfl.app.cli import main
from recfl.app.commands.run import summary_lines
from recfl.app.pipeline import ARMS, stages

TINY = """
[synthetic]
users = 120
items = 300
categories = 12
events_per_user = 30.0
[train]
epochs = 1
[federated]
rounds = 3
clients_per_round = 10
[run]
device_users = 8
workers = 2
[ab]
bootstrap = 100
"""


def _config(tmp: Path) -> Path:
    path = tmp / "tiny.toml"
    path.write_text(TINY)
    return path


def _stage_times(out: Path) -> dict[str, float]:
    return {s.name: (out / s.name / "stage.json").stat().st_mtime for s in stages()}


def _results(out: Path) -> dict:
    scores = {arm: pd.read_parquet(out / f"arm-{arm}" / f"{arm}.parquet")["score"].tolist() for arm in ARMS}
    values = json.loads((out / "ab" / "metrics.json").read_text())
    return {"scores": scores, "values": values["values"] if "values" in values else values}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    out = tmp / "run"
    assert main(["run", "--out", str(out), "--config", str(_config(tmp))]) == 0
    return tmp, out


def test_every_stage_runs_and_the_report_compares_all_arms(finished, capsys):
    tmp, out = finished
    report = (out / "ab" / "report.md").read_text()
    assert all(arm in report for arm in ARMS)
    assert (out / "ab" / "report.html").stat().st_size > 10_000
    run = json.loads((out / "run.json").read_text())
    assert set(run["stages"]) == {s.name for s in stages()}
    primary = run["stages"]["ab"]["primary"]
    assert primary["metric"] == "gauc" and set(primary["values"]) == set(ARMS)
    assert 0 < primary["counted"] <= primary["users"] == 8
    assert summary_lines(primary)[0].startswith(f"gauc (primary metric) on the device users' test events: {primary['counted']} of 8")
    assert run["stages"]["pool"]["pool_dir"] and run["stages"]["candidates"]["rows"] > 0


def test_rerun_skips_everything_and_a_changed_setting_reruns_only_downstream(finished):
    tmp, out = finished
    before = _stage_times(out)
    assert main(["run", "--out", str(out), "--config", str(_config(tmp))]) == 0
    assert _stage_times(out) == before
    assert main(["run", "--out", str(out), "--config", str(_config(tmp)), "--set", "ab.bootstrap=150"]) == 0
    after = _stage_times(out)
    assert [name for name in after if after[name] != before[name]] == ["ab"]
    assert main(["run", "--out", str(out), "--config", str(_config(tmp))]) == 0  # back to the module's settings


def test_a_changed_upstream_setting_reruns_downstream_on_fresh_outputs(finished):
    """A new cloud model must reach the federated stages: no resume from the old run's checkpoint."""
    tmp, out = finished
    changed = tmp / "changed"
    shutil.copytree(out, changed)  # keeps modification times
    before = _stage_times(changed)
    assert main(["run", "--out", str(changed), "--config", str(_config(tmp)), "--set", "train.epochs=2"]) == 0
    after = _stage_times(changed)
    assert [n for n in after if after[n] != before[n]] == [s.name for s in stages() if s.name not in ("data", "pool", "candidates")]
    for algorithm in ("fedsubavg", "fedavg"):
        rounds = (changed / algorithm / "metrics.jsonl").read_text().count('"train_loss"')
        assert rounds == 3, algorithm  # every round ran again, none appended to the old run's
        old, new = (np.load(d / algorithm / "model" / "params.npz") for d in (out, changed))
        assert not np.array_equal(old["arr_0"], new["arr_0"])


def test_killed_run_resumes_to_the_same_results(finished):
    tmp, out = finished
    killed = tmp / "killed"
    cmd = [sys.executable, "-m", "recfl", "run", "--out", str(killed), "--config", str(_config(tmp))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill inside the first federated stage
        metrics = killed / "fedsubavg" / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "fedsubavg" / "stage.json").exists()
    assert main(["run", "--out", str(killed), "--config", str(_config(tmp))]) == 0
    assert _results(killed) == _results(out)


@pytest.mark.heavy
@pytest.mark.parametrize("stage", [s.name for s in stages()])
def test_killed_in_any_stage_resumes_to_the_same_results(finished, stage):
    tmp, out = finished
    killed = tmp / f"killed-{stage}"
    cmd = [sys.executable, "-m", "recfl", "run", "--out", str(killed), "--config", str(_config(tmp))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (killed / stage).is_dir():
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the stage
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["run", "--out", str(killed), "--config", str(_config(tmp))]) == 0
    assert _results(killed) == _results(out)
