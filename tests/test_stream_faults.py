"""Faults inside recfl cost one message (dead-lettered as ``internal``); faults of the environment stop the
consumer with one line and exit code 1, having committed nothing it did not write."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka_fixtures import REPO, read_topic

import streaming.consumer
from recfl.core.formats import SyntheticSpec, load
from recfl.core.pool import open_store
from recfl.core.store import PoolStore
from streaming.consumer import StreamConsumer
from streaming.events import decode, decode_all
from streaming.pool_writer import _write
from streaming.producer import produce, replay_messages
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic


def test_a_message_that_breaks_the_decoder_is_dead_lettered_as_internal(kafka_broker, topic, tmp_path, monkeypatch):
    """Any unforeseen failure on one message costs that message only (reason internal, with the exception type);
    one of the decoder of whole polls costs nothing (their messages are decoded one by one)."""
    def boom(payload) -> bool:
        return payload is not None and b'"synthetic-' in payload and payload.endswith(b'"boom"}')

    def failing(payload, rules):
        if boom(payload):
            raise RuntimeError("boom")
        return decode(payload, rules)

    def failing_all(payloads, rules):
        if any(map(boom, payloads)):
            raise RuntimeError("boom in a poll")
        return decode_all(payloads, rules)

    monkeypatch.setattr(streaming.consumer, "decode", failing)
    monkeypatch.setattr(streaming.consumer, "decode_all", failing_all)
    settings = StreamConfig(bootstrap_servers=kafka_broker.bootstrap_servers, topic=topic, group=topic)
    messages = replay_messages("synthetic", None, SyntheticSpec(users=10, items=100, days=1, seed=2))
    broken = {i: (key, event | {"source": "boom"}) for i, (key, event) in enumerate(messages) if i % 50 == 7}
    produce([broken.get(i, m) for i, m in enumerate(messages)], settings, topic)

    stats = StreamConsumer(settings, tmp_path / "pool").run(idle_timeout_s=3)
    assert stats.reasons == {"internal": len(broken)} and stats.written == len(messages) - len(broken)
    letters = [json.loads(m.value) for m in read_topic(settings.bootstrap_servers, settings.dead_letters)]
    assert {letter["detail"] for letter in letters} == {"RuntimeError: boom"}
    assert {json.loads(letter["payload"])["event_id"] for letter in letters} == {e["event_id"] for _, e in broken.values()}


def test_a_batch_the_pool_refuses_is_split_until_the_failing_events_are_alone(tmp_path, monkeypatch):
    events = load("synthetic", None, SyntheticSpec(users=20, items=100, seed=1)).events.iloc[:100]
    batch = [decode(json.dumps({"schema": 1, **e}).encode(), StreamConfig().rules)
             for e in events.astype(object).to_dict("records")]
    poison = {batch[13].event_id, batch[71].event_id}
    append = PoolStore.append_table

    def refusing(store, table):
        if poison & set(table["event_id"].to_pylist()):
            raise TypeError("cannot store this one")
        return append(store, table)

    monkeypatch.setattr(PoolStore, "append_table", refusing)
    with PoolStore(tmp_path / "pool") as store:
        result = _write(store, batch)
        assert result.failed == [(13, "TypeError: cannot store this one"), (71, "TypeError: cannot store this one")]
        assert (result.written, result.duplicates, result.conflicts) == (98, 0, [])
        assert set(store.read(["event_id"])["event_id"]) == {e.event_id for e in batch} - poison


def test_a_full_disk_stops_the_consumer_with_one_line_and_commits_nothing_unwritten(kafka_broker, topic, tmp_path,
                                                                                     consumer_processes):
    """Disk full at the SQLite commit gave a traceback (`cannot rollback - no transaction is active`)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small private tmpfs")
    bootstrap = kafka_broker.bootstrap_servers
    settings = StreamConfig(bootstrap_servers=bootstrap)
    ensure_topic(settings, topic, 2)
    messages = replay_messages("synthetic", None, SyntheticSpec(users=200, items=2000, days=1, seed=12))
    produce(messages, settings, topic)
    pool, copy, err = tmp_path / "pool", tmp_path / "copy", tmp_path / "stderr"
    pool.mkdir()
    consume = (f"{sys.executable} -m recfl stream consume --bootstrap-servers {bootstrap} --topic {topic} --group {topic} "
               f"--pool {pool} --idle-timeout 5 --set streaming.batch_size=1000 2>{err}")
    script = f"mount -t tmpfs -o size=300k tmpfs {pool} || exit 99; {consume}; code=$?; cp -a {pool} {copy}; exit $code"
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    if done.returncode == 99:
        pytest.skip(f"cannot mount a private tmpfs here: {done.stderr.strip()}")
    stderr = err.read_text()
    assert done.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "rollback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"recfl: error: cannot write the pool at {pool / 'store'}: ")
    assert "No space left on device" in last or "disk is full" in last

    with open_store(copy) as store:
        stored = set(store.read(["event_id"])["event_id"])
    group = KafkaConsumer(bootstrap_servers=bootstrap, group_id=topic, enable_auto_commit=False)
    committed = {p: group.committed(TopicPartition(topic, p)) or 0 for p in (0, 1)}
    group.close()
    below = [json.loads(r.value)["event_id"] for r in read_topic(bootstrap, topic) if r.offset < committed[r.partition]]
    assert 0 < len(stored) < len(messages) and below
    assert set(below) <= stored  # every committed offset was written first

    # on a disk with room, the same group carries on: every event once
    consumer_processes(bootstrap, topic, copy, "--idle-timeout", "3").finish()
    with open_store(copy) as store:
        ids = store.read(["event_id"])["event_id"]
    assert ids.is_unique and set(ids) == {event["event_id"] for _, event in messages}
