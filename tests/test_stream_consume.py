"""produce -> consume against the real broker: valid events land once in the pool, invalid ones in the dead-letter topic."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pandas as pd
import pytest
from conftest import shared
from kafka import KafkaProducer
from kafka_fixtures import fetch_record, read_topic, wait_for_pool

from recfl.app.cli import main
from recfl.core.formats import SyntheticSpec, load
from recfl.core.pool import open_store
from streaming.events import encode
from streaming.producer import produce, replay_messages
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic


def run_cli(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def pool_events(path) -> pd.DataFrame:
    with open_store(path) as pool:
        return pool.read().sort_values("event_id").reset_index(drop=True)


def dead_letters(bootstrap: str, topic: str) -> list[dict]:
    return [json.loads(m.value) for m in read_topic(bootstrap, topic)]


@pytest.mark.shared_data
def test_taobao_slice_replay_lands_every_valid_event_once(kafka_broker, topic, tmp_path, capsys):
    path = shared("taobao-userbehavior/UserBehavior_slice.csv")
    bootstrap = kafka_broker.bootstrap_servers
    produced = run_cli(capsys, "stream", "produce", "--format", "taobao", "--path", str(path), "--topic", topic,
                       "--bootstrap-servers", bootstrap)
    assert (produced["sent"], produced["unparsed_rows"], produced["partitions"]) == (96_169, 0, 4)

    report = run_cli(capsys, "stream", "consume", "--bootstrap-servers", bootstrap, "--topic", topic, "--group", "replay",
                     "--pool", str(tmp_path / "pool"), "--idle-timeout", "3")
    print("replay counts:", {k: report[k] for k in ("consumed", "written", "dead_lettered", "duplicates_skipped", "lag")})
    assert report["consumed"] == 96_169
    assert (report["written"], report["dead_lettered"], report["duplicates_skipped"]) == (96_168, 1, 0)
    assert report["reasons"] == {"bad_timestamp": 1} and report["lag"] == 0
    assert report["assigned_partitions"] == [0, 1, 2, 3] and report["commit_failures"] == 0

    expected = load("taobao", path).events.sort_values("event_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(pool_events(tmp_path / "pool"), expected)

    (letter,) = dead_letters(bootstrap, f"{topic}.dlq")
    assert letter["reason"] == "bad_timestamp" and letter["detail"] == "timestamp 15 is outside 1990..2100"
    source = letter["source"]
    record = fetch_record(bootstrap, topic, source["partition"], source["offset"])
    assert record.value.decode() == letter["payload"] and json.loads(record.value)["timestamp"] == 15
    assert source["key"] == record.key.decode() == "301780"


BAD = [  # (payload, reason)
    (b"not json", "bad_json"),
    (b"\xff\x00", "bad_json"),
    (encode({"schema": 2, "event_id": "x"}), "schema_version"),
    (encode({"schema": 1, "event_id": "m", "user_id": 1}), "missing_field"),
    (encode({"schema": 1, "event_id": "t", "user_id": "u1", "item_id": 1, "category_id": 1, "label": 0,
             "timestamp": 1_511_658_000}), "bad_type"),
    (encode({"schema": 1, "event_id": "l", "user_id": 1, "item_id": 1, "category_id": 1, "label": 3,
             "timestamp": 1_511_658_000}), "bad_value"),
    (encode({"schema": 1, "event_id": "s", "user_id": 1, "item_id": 1, "category_id": 1, "label": 0,
             "timestamp": 15}), "bad_timestamp"),
    (encode({"schema": 1, "event_id": "b", "user_id": 1, "item_id": 1, "category_id": 1, "label": 0,
             "timestamp": 1_511_658_000, "behavior": "teleport"}), "unknown_behavior"),
    (b"{" + b" " * 20_000 + b"}", "oversized"),
]


def test_bad_messages_go_to_the_dead_letter_topic_and_never_stop_the_stream(kafka_broker, topic, tmp_path, capsys,
                                                                            fixtures):
    bootstrap = kafka_broker.bootstrap_servers
    run_cli(capsys, "stream", "produce", "--format", "taobao", "--path", str(fixtures / "taobao.csv"), "--topic", topic,
            "--bootstrap-servers", bootstrap, "--partitions", "1")
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    sent = [producer.send(topic, key=b"k", value=payload).get(30) for payload, _ in BAD]
    producer.close()
    run_cli(capsys, "stream", "produce", "--format", "movielens-100k", "--path", str(fixtures / "ml100k"), "--topic", topic,
            "--bootstrap-servers", bootstrap)

    pool = tmp_path / "pool"
    report = run_cli(capsys, "stream", "consume", "--bootstrap-servers", bootstrap, "--topic", topic, "--group", "g",
                     "--pool", str(pool), "--idle-timeout", "2", "--dead-letter-topic", f"{topic}.bad")
    assert report["consumed"] == 26 + len(BAD) + 32
    assert (report["written"], report["dead_lettered"]) == (25 + 32, 1 + len(BAD))
    assert report["reasons"] == Counter([reason for _, reason in BAD] + ["bad_timestamp"])
    assert len(pool_events(pool)) == 57  # events after the bad ones were not held up

    letters = {(d["source"]["partition"], d["source"]["offset"]): d for d in dead_letters(bootstrap, f"{topic}.bad")}
    assert len(letters) == 1 + len(BAD)
    for meta, (payload, reason) in zip(sent, BAD):
        letter = letters[(meta.partition, meta.offset)]
        assert letter["reason"] == reason and letter["payload_bytes"] == len(payload)
        assert letter["group"] == "g" and letter["source"]["topic"] == topic
    assert letters[(sent[-1].partition, sent[-1].offset)]["payload"] == "{" + " " * 16_383  # truncated at the limit

    # a second replay of the same files (a new topic, same pool) is skipped as duplicates, event by event
    again = f"{topic}-again"
    run_cli(capsys, "stream", "produce", "--format", "taobao", "--path", str(fixtures / "taobao.csv"), "--topic", again,
            "--bootstrap-servers", bootstrap)
    report = run_cli(capsys, "stream", "consume", "--bootstrap-servers", bootstrap, "--topic", again, "--group", "g",
                     "--pool", str(pool), "--idle-timeout", "2")
    assert (report["written"], report["duplicates_skipped"], report["dead_lettered"]) == (0, 25, 1)
    assert len(pool_events(pool)) == 57


def test_two_consumers_split_four_partitions_and_hand_over_cleanly(kafka_broker, topic, tmp_path, consumer_processes):
    """The second member joins mid-stream: the first commits its batch on revoke, so nothing is read twice."""
    bootstrap = kafka_broker.bootstrap_servers
    settings = StreamConfig(bootstrap_servers=bootstrap)
    assert ensure_topic(settings, topic, 4) == 4
    pool = tmp_path / "pool"
    messages = replay_messages("synthetic", None, SyntheticSpec(users=400, items=2000, days=1, seed=5))
    first = consumer_processes(bootstrap, topic, pool)
    first.wait_for_log("partitions assigned: [0, 1, 2, 3]")
    replay = threading.Thread(target=produce, args=(messages, settings, topic), kwargs={"rate": 1200}, daemon=True)
    replay.start()
    wait_for_pool(pool, len(messages) // 8, first)
    second = consumer_processes(bootstrap, topic, pool)
    second.wait_for_log("partitions assigned: [")
    assert replay.is_alive(), "the replay ended before the second member joined"
    replay.join()
    wait_for_pool(pool, len(messages), first)
    reports = [c.stop() for c in (first, second)]

    owned = [set(r["assigned_partitions"]) for r in reports]
    assert owned[0] | owned[1] == {0, 1, 2, 3} and not owned[0] & owned[1]
    assert reports[0]["rebalances"] >= 2 and reports[1]["written"] > 0
    assert sum(r["written"] for r in reports) == len(messages) and all(r["lag"] == 0 for r in reports)
    assert sum(r["duplicates_skipped"] for r in reports) == 0  # the hand-over re-delivered nothing
    stored = pool_events(pool)
    assert stored["event_id"].is_unique and len(stored) == len(messages)

    # keyed by user id: each user's events sit on one partition, in the order they were produced
    sequence = {event["event_id"]: i for i, (_, event) in enumerate(messages)}
    by_user: dict[bytes, list] = {}
    for record in read_topic(bootstrap, topic):
        by_user.setdefault(record.key, []).append((record.partition, record.offset, sequence[json.loads(record.value)["event_id"]]))
    for records in by_user.values():
        assert len({p for p, _, _ in records}) == 1
        assert [i for _, _, i in sorted(records)] == sorted(i for _, _, i in records)
