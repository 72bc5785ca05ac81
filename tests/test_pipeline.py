"""``recfl run``: every stage end to end on a tiny synthetic set, skipping, resuming after a kill, moving
the run folder, refusing another data set's folder, and Ctrl-C (a real SIGINT) in the pipeline and its workers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lock_holder import held_elsewhere

from recfl.app import api
from recfl.app.api import AbConfig, FederatedConfig, RunConfig, SyntheticSpec, TrainConfig
from recfl.app.cli import main
from recfl.app.commands.run import summary_lines
from recfl.app.pipeline import ARMS, GLOBAL, PERSONALIZED, stages
from recfl.core.candidates import read_candidates
from recfl.core.errors import RecflError
from recfl.core.metrics import per_user_auc
from recfl.core.pool import assign_roles, check_pool, open_store, pool_config
from streaming.producer import produce
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic
from tensorboard_events import expected_rounds, histogram_counts, holds, scalars

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
    """A finished run, launched from its parent folder with a relative ``--out`` (as a user types it)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    launched_from = os.getcwd()
    os.chdir(tmp)
    try:
        assert main(["run", "--out", "run", "--config", str(_config(tmp))]) == 0
    finally:
        os.chdir(launched_from)
    return tmp, tmp / "run"


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


def test_tensorboard_and_the_report_show_the_rounds_and_the_device_results(finished):
    """OUT/tensorboard: each federated stage's rounds as in its metrics.jsonl, each arm's per-device results as
    histograms; the A/B report's convergence figure."""
    _, out = finished
    for algorithm in GLOBAL:
        assert scalars(out / "tensorboard" / algorithm) == expected_rounds(out / algorithm / "metrics.jsonl")
    for arm in ARMS:
        predictions = pd.read_parquet(out / f"arm-{arm}" / f"{arm}.parquet")
        users = per_user_auc(predictions["user_id"], predictions["label"], predictions["score"])["auc"]
        counts = histogram_counts(out / "tensorboard" / f"arm-{arm}")
        assert holds(counts["device/test_auc"], users)
        if arm in PERSONALIZED:
            devices = pd.read_parquet(out / f"arm-{arm}" / f"{arm}.devices" / "users.parquet")
            assert holds(counts["device/epochs"], devices["epochs"]) and holds(counts["device/kept"], devices["kept"])
            assert ("device/filter_auc" in counts) == (arm == "coda")
        else:
            assert set(counts) == {"device/test_auc"}
    report = (out / "ab" / "report.md").read_text()
    assert "## Federated convergence" in report and (out / "ab" / "plots" / "convergence.png").stat().st_size > 1000
    assert "Federated convergence" in (out / "ab" / "report.html").read_text()


def test_the_python_api_runs_the_same_pipeline(finished):
    """``api.run`` with the config file's settings as dataclasses has the command's fingerprints: nothing reruns."""
    tmp, out = finished
    before = _stage_times(out)
    run = api.run(out, SyntheticSpec(users=120, items=300, categories=12, events_per_user=30.0), TrainConfig(epochs=1),
                  FederatedConfig(rounds=3, clients_per_round=10), RunConfig(device_users=8), AbConfig(bootstrap=100))
    assert _stage_times(out) == before
    assert run.report == out / "ab" / "report.html" and run.stages == json.loads((out / "run.json").read_text())["stages"]
    assert set(run.primary["values"]) == set(ARMS)
    with pytest.raises(RecflError, match="dict is not a config section"):
        api.run(out, {"train": {"epochs": 2}})


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


def _rerun_copy(finished, name: str, *sets: str) -> tuple[Path, list[str]]:
    """Copy the finished run to ``name``, run it again with ``--set`` each of ``sets``: the copy and the stages rerun."""
    tmp, out = finished
    copy = tmp / name
    shutil.copytree(out, copy)
    before = _stage_times(copy)
    assert main(["run", "--out", str(copy), "--config", str(_config(tmp)), *(a for s in sets for a in ("--set", s))]) == 0
    after = _stage_times(copy)
    return copy, [stage for stage in after if after[stage] != before[stage]]


def test_privacy_reaches_the_federated_stages_and_the_summary(finished, capsys):
    """`recfl run --set privacy.enabled=true` reruns the federated stages (privately) and what depends on them."""
    capsys.readouterr()
    private, rerun = _rerun_copy(finished, "private", "privacy.enabled=true")
    # the personalized arms start from the FedSubAvg model (run.personalize_from), so they rerun too
    assert rerun == ["fedsubavg", "fedavg", "arm-fedavg", "arm-fedsubavg", "arm-local", "arm-coda-nofilter", "arm-coda", "ab"]
    stages_ = json.loads((private / "run.json").read_text())["stages"]
    printed = capsys.readouterr().out
    for algorithm in ("fedsubavg", "fedavg"):
        budget = stages_[algorithm]["privacy"]
        assert budget["epsilon"] > 0 and budget["delta"] == 1e-5 and budget["noise_multiplier"] == 1.0
        assert f"{algorithm} was trained privately: epsilon {budget['epsilon']} at delta 1e-05" in printed


def test_killed_run_resumes_to_the_same_results(finished):
    """Also: two runs of one config on one machine write the same metrics.json, byte for byte."""
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
    assert (killed / "ab" / "metrics.json").read_bytes() == (out / "ab" / "metrics.json").read_bytes()


def test_a_moved_run_folder_is_complete(finished, monkeypatch, capsys):
    tmp, out = finished
    moved = tmp / "elsewhere" / "moved"
    shutil.copytree(out, moved)  # keeps modification times
    before = _stage_times(moved)
    monkeypatch.chdir(moved.parent)  # neither the folder the run was launched from nor the run folder
    capsys.readouterr()
    assert main(["run", "--out", "moved", "--config", str(_config(tmp)), "--set", "ab.bootstrap=120"]) == 0
    after = _stage_times(moved)
    assert [name for name in after if after[name] != before[name]] == ["ab"]  # it read the moved folder's predictions
    assert f"report: {moved / 'ab' / 'report.html'}" in capsys.readouterr().out
    run = json.loads((moved / "run.json").read_text())
    assert run["stages"]["pool"]["pool_dir"] == "pool" and run["stages"]["ab"]["report.html"] == "ab/report.html"
    assert run["stages"]["data"]["data_dir"] == "data" and run["stages"]["fedavg"]["model_dir"] == "fedavg/model"
    sources = {a["arm"]: a["source"] for a in json.loads((moved / "ab" / "metrics.json").read_text())["arms"]}
    assert sources["coda"] == "arm-coda/coda.parquet"  # as run.json has it: the same wherever the folder is
    assert main(["run", "--out", "moved", "--config", str(_config(tmp)), "--set", "ab.bootstrap=120"]) == 0
    assert _stage_times(moved) == after


def _twin_copy(finished, name: str, tag: str) -> tuple[Path, int, int, pd.DataFrame]:
    """A copy of the finished run, a device user with candidates (the twin), a new sharing user, and that user's
    events (ids ``tag-K``) repeating the twin's training events after every event in the data set, not stored yet."""
    tmp, out = finished
    copy = tmp / name
    shutil.copytree(out, copy)
    data = pd.read_parquet(copy / "data" / "train.parquet")
    twin = int(read_candidates(copy / "candidates")["target_user_id"].iloc[0])
    roles = pool_config(check_pool(copy / "pool"))
    first = int(data["user_id"].max()) + 1
    sharer = int(assign_roles(np.arange(first, first + 100), roles.share_fraction, roles.salt).sharing_users[0])
    rows = data[data["user_id"] == twin]
    return copy, twin, sharer, rows.assign(user_id=sharer, event_id=[f"{tag}-{k}" for k in range(len(rows))],
                                           timestamp=int(data["timestamp"].max()) + 1 + np.arange(len(rows)))


def test_events_stored_in_the_pool_rerun_matching_and_only_the_devices_whose_inputs_changed(finished):
    """``recfl run`` fingerprints its pool's content: a new sharing user who repeats a device user's events,
    stored in ``OUT/pool`` as ``recfl stream consume --pool OUT/pool`` stores them, reruns the candidates, the
    arms that read them and the report, and becomes that device user's first candidates. The device user is
    personalized again; every device whose own events, test events and candidates are unchanged is taken over,
    and the result is what personalizing every device again gives. A rerun after that skips everything."""
    tmp, _ = finished
    copy, twin, sharer, arrived = _twin_copy(finished, "arrivals", "arrival")
    with open_store(copy / "pool") as store:
        assert store.append(arrived).written == len(arrived)
    devices = {arm: pd.read_parquet(copy / f"arm-{arm}" / f"{arm}.devices" / "users.parquet").set_index("user_id")
               for arm in ("coda", "coda-nofilter")}
    before = _stage_times(copy)
    assert main(["run", "--out", str(copy), "--config", str(_config(tmp))]) == 0
    after = _stage_times(copy)
    assert [stage for stage in after if after[stage] != before[stage]] == ["candidates", "arm-coda-nofilter", "arm-coda",
                                                                          "ab"]
    candidates = read_candidates(copy / "candidates")
    mine = candidates[candidates["target_user_id"] == twin]
    assert mine["user_id"].iat[0] == sharer and set(arrived["event_id"]) <= set(mine["event_id"])
    record = json.loads((copy / "run.json").read_text())["stages"]
    for arm, earlier in devices.items():
        now = pd.read_parquet(copy / f"arm-{arm}" / f"{arm}.devices" / "users.parquet").set_index("user_id")
        assert not now.at[twin, "reused"] and not (copy / f"arm-{arm}.previous").exists()
        assert (now["reused"] == (now["inputs"] == earlier["inputs"].reindex(now.index))).all()
        assert 0 < record[f"arm-{arm}"]["reused_devices"] == int(now["reused"].sum()) < len(now)
        reused = now.index[now["reused"]]
        assert (now.loc[reused, "seconds"] == earlier.loc[reused, "seconds"]).all()  # taken over, not run
    assert main(["run", "--out", str(copy), "--config", str(_config(tmp))]) == 0
    assert _stage_times(copy) == after
    scratch = tmp / "arrivals-scratch"
    shutil.copytree(copy, scratch)
    shutil.rmtree(scratch / "arm-coda")
    assert main(["run", "--out", str(scratch), "--config", str(_config(tmp))]) == 0
    assert json.loads((scratch / "run.json").read_text())["stages"]["arm-coda"]["reused_devices"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet(copy / "arm-coda" / "coda.parquet"),
                                  pd.read_parquet(scratch / "arm-coda" / "coda.parquet"))


def test_the_live_loop_brings_events_produced_while_it_runs_into_its_next_cycle(finished, kafka_broker, topic, capsys):
    """``recfl run --stream``: a new sharing user who repeats a device user's events and a new device user, produced
    while the loop runs, reach the pool in its window and the twin's candidates in the next cycle, where only
    matching, the arms that read candidates and the report rerun."""
    tmp, out = finished
    copy = tmp / "live"
    shutil.copytree(out, copy)
    train = pd.read_parquet(copy / "data" / "train.parquet")
    twin = int(read_candidates(copy / "candidates")["target_user_id"].iloc[-1])
    roles = pool_config(check_pool(copy / "pool"))
    first = int(train["user_id"].max()) + 1
    split = assign_roles(np.arange(first, first + 100), roles.share_fraction, roles.salt)
    sharer, device = int(split.sharing_users[0]), int(split.device_users[0])
    rows = train[train["user_id"] == twin].drop(columns="sampled")
    late = int(train["timestamp"].max()) + 1

    def events(user: int, tag: str) -> list:
        return [(str(user).encode(), {"schema": 1, **event, "user_id": user, "event_id": f"{tag}-{k}", "timestamp": late + k})
                for k, event in enumerate(rows.astype(object).to_dict("records"))]

    sent = events(sharer, "live-sharer") + events(device, "live-device")
    settings = StreamConfig(bootstrap_servers=kafka_broker.bootstrap_servers, topic=topic)
    ensure_topic(settings, topic, settings.partitions)
    producer = threading.Timer(2.0, produce, (sent, settings, topic))  # while the first cycle runs
    producer.start()
    before = _stage_times(copy)
    try:
        assert main(["run", "--out", str(copy), "--config", str(_config(tmp)), "--stream", topic, "--bootstrap-servers",
                     kafka_broker.bootstrap_servers, "--every", "12s", "--cycles", "2"]) == 0
    finally:
        producer.join()
    printed = capsys.readouterr().out
    assert f"{len(sent):,} messages from {topic}" in printed and f"({len(sent):,} written," in printed
    assert "stopped after cycle 2;" in printed
    after = _stage_times(copy)
    assert [stage for stage in after if after[stage] != before[stage]] == ["candidates", "arm-coda-nofilter", "arm-coda",
                                                                          "ab"]
    mine = read_candidates(copy / "candidates").query("target_user_id == @twin")
    assert mine["user_id"].iat[0] == sharer and {f"live-sharer-{k}" for k in range(len(rows))} <= set(mine["event_id"])
    assert not read_candidates(copy / "candidates")["event_id"].str.startswith("live-device").any()


def test_a_live_loop_killed_mid_cycle_goes_on_when_started_again(finished, kafka_broker, topic, capsys):
    """SIGKILL to the whole loop while the second cycle re-personalizes the coda arm (its window's events are in
    the pool, some of its devices done), then ``recfl run --stream`` again: every event is in the pool once, the
    cycle finishes from where it stopped (devices whose inputs are unchanged still taken over) and the next
    cycle has nothing to do."""
    tmp, _ = finished
    copy, twin, sharer, events = _twin_copy(finished, "live-killed", "killed")
    sent = [(str(sharer).encode(), {"schema": 1, **event})
            for event in events.drop(columns="sampled").astype(object).to_dict("records")]
    settings = StreamConfig(bootstrap_servers=kafka_broker.bootstrap_servers, topic=topic)
    ensure_topic(settings, topic, settings.partitions)
    produce(sent, settings, topic)
    stream = ["--stream", topic, "--bootstrap-servers", kafka_broker.bootstrap_servers]
    first = json.loads((copy / "arm-coda" / "started.json").read_text())["fingerprint"]
    devices = copy / "arm-coda" / "coda.devices"

    def mid_coda() -> bool:
        started = copy / "arm-coda" / "started.json"
        return (started.is_file() and json.loads(started.read_text())["fingerprint"] != first and devices.is_dir()
                and any(devices.glob("*.weights.npz")))

    proc = subprocess.Popen([sys.executable, "-m", "recfl", "run", "--out", str(copy), "--config", str(_config(tmp)), *stream,
                             "--every", "4s", "--cycles", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not mid_coda():
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (copy / "arm-coda" / "stage.json").exists() and (copy / "arm-coda.previous" / "stage.json").is_file()

    def stored() -> pd.Series:
        with open_store(copy / "pool") as store:
            return store.read()["event_id"]

    assert stored().str.startswith("killed-").sum() == len(sent)
    capsys.readouterr()
    assert main(["run", "--out", str(copy), "--config", str(_config(tmp)), *stream, "--every", "3s", "--cycles", "2"]) == 0
    assert "stopped after cycle 2;" in capsys.readouterr().out
    assert stored().str.startswith("killed-").sum() == len(sent) and stored().is_unique
    record = json.loads((copy / "run.json").read_text())
    assert set(record["stages"]) == {s.name for s in stages()} and not (copy / "arm-coda.previous").exists()
    assert record["stages"]["arm-coda"]["reused_devices"] > 0
    mine = read_candidates(copy / "candidates").query("target_user_id == @twin")
    assert mine["user_id"].iat[0] == sharer and mine["event_id"].str.startswith("killed-").sum() == len(sent)


def test_live_loop_mistakes_are_one_line_errors(finished, capsys):
    tmp, out = finished
    for args, message in ((["--every", "10m"], "--every, --cycles and --bootstrap-servers go with --stream TOPIC"),
                          (["--stream", "t", "--seeds", "0", "1"], "--stream runs one pipeline in OUT; it does not take --seeds"),
                          (["--stream", "t", "--cycles", "0"], "--cycles must be at least 1, got 0"),
                          (["--stream", "t", "--every", "ten"], "argument --every: not a positive duration: 'ten'")):
        assert main(["run", "--out", str(tmp / "never"), "--config", str(_config(tmp)), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("recfl: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp / "never").exists()


def test_two_runs_never_write_one_out_folder_at_once(finished, capsys):
    """A run folder another process is writing is one line, and nothing in it changes; once free, it runs."""
    tmp, out = finished
    busy = tmp / "busy"
    shutil.copytree(out, busy)
    before = {p: p.stat().st_mtime_ns for p in busy.rglob("*") if p.is_file() and p.name != ".lock"}
    with held_elsewhere(busy, "recfl run"):
        assert main(["run", "--out", str(busy), "--config", str(_config(tmp))]) == 2
        err = capsys.readouterr().err
        assert err == f"recfl: error: {busy} is in use by another recfl run; wait for it to finish or use another --out\n"
    assert {p: p.stat().st_mtime_ns for p in busy.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert main(["run", "--out", str(busy), "--config", str(_config(tmp))]) == 0  # the lock died with its process


def test_a_run_of_seeds_holds_its_folder_from_the_first_seed_to_the_pooled_report(tmp_path, capsys):
    """Another process holding OUT stops ``--seeds`` before any seed folder exists."""
    out = tmp_path / "seeds"
    with held_elsewhere(out, "recfl run"):
        assert main(["run", "--out", str(out), "--config", str(_config(tmp_path)), "--seeds", "0", "1"]) == 2
        assert capsys.readouterr().err == (f"recfl: error: {out} is in use by another recfl run; "
                                           "wait for it to finish or use another --out\n")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_fine_tuning_mistakes_are_one_line_errors_before_anything_runs(finished, capsys):
    """Issue 12's settings: an unknown loss or weight group, a negative pull, or a pull SGD cannot follow."""
    tmp, _ = finished
    for setting, message in (("finetune.loss=\"listwise\"", "finetune.loss = 'listwise': choose one of pointwise"),
                             ("finetune.trainable=[\"heads\"]", "finetune.trainable: unknown ['heads']; choose from"),
                             ("finetune.trainable=[]", "finetune.trainable: unknown empty list"),
                             ("finetune.elastic=-1", "finetune.elastic = -1.0 must be >= 0"),
                             ("finetune.elastic=10", "finetune.elastic * finetune.learning_rate = 2 must be < 2"),
                             ("finetune.schedule=\"interleaved\"", "finetune.schedule = 'interleaved': choose one of"),
                             ("finetune.candidate_weight=-0.5", "finetune.candidate_weight = -0.5 must be in [0, 1000]"),
                             ("finetune.votes_from=\"pool\"", "finetune.votes_from = 'pool': choose one of received, kept")):
        assert main(["run", "--out", str(tmp / "never"), "--config", str(_config(tmp)), "--set", setting]) == 2
        err = capsys.readouterr().err
        assert err.startswith("recfl: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp / "never").exists()


def test_a_setting_reruns_only_the_stages_that_read_it(finished):
    """The filter is read by the coda arm alone, the candidate keys of [finetune] by the arms with candidates; the
    number of device worker processes changes no result."""
    _, rerun = _rerun_copy(finished, "filter", "filter.keep_fraction=0.3", "run.workers=1")
    assert rerun == ["arm-coda", "ab"]
    _, rerun = _rerun_copy(finished, "votes", "finetune.votes=2.0", "finetune.candidate_weight=0.5")
    assert rerun == ["arm-coda-nofilter", "arm-coda", "ab"]  # local has no candidates: it reads neither key


def test_personalized_arms_start_from_the_chosen_model(finished, capsys):
    """``run.personalize_from``: only the personalized arms (and the report) rerun, from the federated model."""
    tmp, out = finished
    copy, rerun = _rerun_copy(finished, "from-fedavg", "run.personalize_from=fedavg")
    assert rerun == ["arm-local", "arm-coda-nofilter", "arm-coda", "ab"]
    local_then = pd.read_parquet(out / "arm-local" / "local.parquet")["score"].to_numpy()
    local_now = pd.read_parquet(copy / "arm-local" / "local.parquet")["score"].to_numpy()
    assert not np.allclose(local_then, local_now)  # another starting model, other scores
    capsys.readouterr()
    assert main(["run", "--out", str(copy), "--config", str(_config(tmp)), "--set", "run.personalize_from=fedprox"]) == 2
    assert capsys.readouterr().err.strip() == ("recfl: error: run.personalize_from must be one of cloud_model, fedavg, "
                                               "fedsubavg, got 'fedprox'")


def test_seeds_run_once_each_on_the_same_data_and_pool_and_the_report_pools_them(finished, capsys):
    """``--seeds 0 1``: seed 0 (the defaults) is the finished run, skipped; seed 1 reruns only what reads a seed;
    ``OUT/ab`` pools both, as ``recfl ab evaluate --runs`` does; a rerun skips everything."""
    tmp, out = finished
    seeds = tmp / "seeds"
    shutil.copytree(out, seeds / "seed-0")
    before = _stage_times(seeds / "seed-0")
    args = ["run", "--out", str(seeds), "--config", str(_config(tmp)), "--seeds", "0", "1"]
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert _stage_times(seeds / "seed-0") == before
    stage = lambda seed, name: json.loads((seeds / f"seed-{seed}" / name / "stage.json").read_text())
    for name in ("data", "pool", "candidates"):  # copied from seed 0, where they ran once
        assert stage(1, name) == stage(0, name)
    assert stage(1, "cloud_model")["settings"]["train"]["seed"] == 1 and stage(1, "fedavg")["settings"]["federated"]["seed"] == 1
    assert stage(1, "arm-coda")["settings"]["filter"]["seed"] == 1 and stage(1, "arm-local")["settings"]["finetune"]["seed"] == 1
    scores = [pd.read_parquet(seeds / f"seed-{s}" / "arm-cloud" / "cloud.parquet") for s in (0, 1)]
    assert (scores[0][["user_id", "item_id"]].to_numpy() == scores[1][["user_id", "item_id"]].to_numpy()).all()
    assert not np.allclose(scores[0]["score"], scores[1]["score"])  # another cloud model on the same events
    primary = json.loads((seeds / "run.json").read_text())["stages"]["ab"]["primary"]
    assert primary["seeds"] == ["seed-0", "seed-1"] and 0 < primary["counted"] <= primary["users"] == 8
    for arm, lift in primary["lifts"].items():
        assert lift["lift"] == pytest.approx(np.mean(list(lift["per_seed"].values())))
        assert set(lift["per_seed"]) == {"seed-0", "seed-1"}
    assert printed.startswith(f"gauc (primary metric) on the device users' test events, mean over 2 seeds (seed-0, "
                              f"seed-1): {primary['counted']} of 8 users count")
    assert "95% bootstrap interval over seeds and users" in printed and "per seed" in printed
    assert "Lift per seed" in (seeds / "ab" / "report.md").read_text()

    pooled = (seeds / "ab" / "stage.json").stat().st_mtime
    times = {s: _stage_times(seeds / f"seed-{s}") for s in (0, 1)}
    assert main(args) == 0
    assert {s: _stage_times(seeds / f"seed-{s}") for s in (0, 1)} == times
    assert (seeds / "ab" / "stage.json").stat().st_mtime == pooled

    assert main(["ab", "evaluate", "--runs", str(seeds / "seed-0"), str(seeds / "seed-1"), "--control", "cloud",
                 "--out", str(tmp / "by-hand"), "--bootstrap", "100", "--users", str(seeds / "seed-0" / "data"),
                 "--metrics", "gauc,auc,logloss,hr@10,ndcg@10"]) == 0
    by_hand, report = (json.loads((d / "metrics.json").read_text()) for d in (tmp / "by-hand", seeds / "ab"))
    assert by_hand["comparisons"] == report["comparisons"] and by_hand["seeds"]["per_seed"] == report["seeds"]["per_seed"]


def test_seeds_mistakes_are_one_line_errors(finished, tmp_path, capsys):
    tmp, out = finished
    config = str(_config(tmp))
    fake = tmp_path / "fake"
    (fake / "seed-3").mkdir(parents=True)
    (fake / "seed-3" / "run.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    for args, message in [
        (["run", "--out", str(tmp_path / "x"), "--config", config, "--seeds", "0", "0"], "--seeds 0 0: give distinct"),
        (["run", "--out", str(out), "--config", config, "--seeds", "0", "1"], "holds a run of one seed"),
        (["run", "--out", str(fake), "--config", config], "holds runs of several seeds"),
        (["ab", "evaluate", "--runs", str(tmp_path / "none"), "--control", "cloud", "--out", str(tmp_path / "r")],
         "not a folder"),
        (["ab", "evaluate", "--runs", str(tmp_path / "empty"), "--control", "cloud", "--out", str(tmp_path / "r")],
         "no run.json and no predictions files"),
        (["ab", "evaluate", "--runs", str(out), str(out), "--control", "cloud", "--out", str(tmp_path / "r")],
         "given twice"),
        (["ab", "evaluate", "--runs", str(fake / "seed-3"), "--control", "cloud", "--out", str(tmp_path / "r")],
         "not a finished recfl run"),
        (["ab", "evaluate", str(out / "arm-cloud" / "cloud.parquet"), "--runs", str(out), "--control", "cloud",
          "--out", str(tmp_path / "r")], "one of the two"),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("recfl: error: ") and message in err and err.count("\n") == 1, err


def test_an_out_folder_of_another_data_set_is_refused_unless_forced(finished, capsys):
    tmp, out = finished
    other = tmp / "other"
    shutil.copytree(out, other)
    before = _stage_times(other)
    assert main(["run", "--out", str(other), "--config", str(_config(tmp)), "--set", "synthetic.users=100"]) == 2
    assert (f"recfl: error: --out {other} holds a run of another data set (synthetic.users: 120 -> 100): every stage "
            "of it would be replaced; give another --out, or --force to replace it") in capsys.readouterr().err
    assert _stage_times(other) == before

    # a run that stopped after its data stage (the pre-training check) holds no result: it is simply replaced
    stopped = tmp / "stopped"
    shutil.copytree(out / "data", stopped / "data")
    assert main(["run", "--out", str(stopped), "--config", str(_config(tmp)), "--set", "synthetic.users=100",
                 "--set", "pool.share_fraction=1.0"]) == 2  # no device user: the pre-training check stops it
    assert "recfl: error: no device user has test events" in capsys.readouterr().err
    assert json.loads((stopped / "data" / "stage.json").read_text())["settings"]["synthetic"]["users"] == 100

    foreign = tmp / "foreign"
    (foreign / "pool").mkdir(parents=True)
    (foreign / "pool" / "notes.txt").write_text("mine")
    assert main(["run", "--out", str(foreign), "--config", str(_config(tmp)), "--force"]) == 2
    assert f"{foreign}: pool was not written by recfl run" in capsys.readouterr().err
    assert (foreign / "pool" / "notes.txt").read_text() == "mine"
    kept = tmp / "foreign-kept"
    (kept / "arm-coda.previous").mkdir(parents=True)  # where a rerun keeps the arm's last outputs
    (kept / "arm-coda.previous" / "notes.txt").write_text("mine")
    assert main(["run", "--out", str(kept), "--config", str(_config(tmp))]) == 2
    assert f"{kept}: arm-coda.previous was not written by recfl run" in capsys.readouterr().err
    assert (kept / "arm-coda.previous" / "notes.txt").read_text() == "mine"


def _interrupt(cmd: list[str], ready, target: str) -> tuple[int, str]:
    """Start ``cmd`` in its own process group, wait for ``ready()``, send SIGINT as a terminal's Ctrl-C does (to the
    group) or to the command's process alone; returns its exit code and stderr once the whole group is gone."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "the command ended before it was interrupted"
    (os.killpg if target == "group" else os.kill)(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    for _ in range(600):  # the workers end with it (the multiprocessing resource tracker a moment later)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return proc.returncode, err
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"processes of the interrupted command are still running:\n{err}")


@pytest.mark.parametrize("target", ["group", pytest.param("parent", marks=pytest.mark.heavy)])
def test_ctrl_c_in_personalize_stops_its_workers_without_a_traceback(finished, tmp_path, target):
    tmp, out = finished
    predictions = tmp_path / "local.parquet"
    cmd = [sys.executable, "-m", "recfl", "personalize", "--data", str(out / "data"), "--model", str(out / "cloud_model"),
           "--pool", str(out / "pool"), "--arm", "local", "--out", str(predictions), "--workers", "2"]
    devices = tmp_path / "local.devices"
    code, err = _interrupt(cmd, lambda: devices.is_dir() and any(devices.glob("*.npz")), target)  # a device is done
    assert code == 130 and "Traceback" not in err and err.rstrip().endswith("recfl: interrupted"), err
    assert not predictions.exists()


def test_ctrl_c_in_run_after_force_leaves_no_stale_report(finished):
    """``--force`` replaces another data set's run: its outputs go before anything runs, so an interrupted
    replacement leaves no report of the old data behind."""
    tmp, out = finished
    replaced = tmp / "replaced"
    shutil.copytree(out, replaced)
    cmd = [sys.executable, "-m", "recfl", "run", "--out", str(replaced), "--config", str(_config(tmp)),
           "--set", "synthetic.users=100", "--force"]
    data_done = replaced / "data" / "stage.json"
    code, err = _interrupt(cmd, lambda: data_done.is_file() and '"users": 100' in data_done.read_text(), "group")
    assert code == 130 and "Traceback" not in err and err.rstrip().endswith("recfl: interrupted"), err
    assert not (replaced / "ab").exists() and not any((replaced / f"arm-{arm}").exists() for arm in ARMS)
    assert "ab" not in json.loads((replaced / "run.json").read_text())["stages"]


@pytest.mark.heavy
def test_the_core_count_changes_no_result(finished):
    """TensorFlow, TFF, BLAS, LightGBM and the device workers confined to one core: the same metrics.json."""
    tmp, out = finished
    one_core = tmp / "one-core"
    subprocess.run([sys.executable, "-m", "recfl", "run", "--out", str(one_core), "--config", str(_config(tmp))],
                   preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}), check=True,
                   capture_output=True)
    assert (one_core / "ab" / "metrics.json").read_bytes() == (out / "ab" / "metrics.json").read_bytes()


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
