"""Nothing lost, nothing duplicated: consumers SIGKILLed mid-replay, a paused broker, a consumer older than its broker."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import pytest
from conftest import shared
from kafka_fixtures import pool_count, read_topic, wait_for_pool

from recfl.core.formats import SyntheticSpec
from recfl.core.pool import open_store
from streaming.broker import free_port
from streaming.events import InvalidEvent, decode, encode
from streaming.producer import produce, replay_messages
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic

# Tansu accepts a 3 s session (Apache Kafka's default minimum is 6 s), which makes a
# restarted member get its partitions ~3 s after a SIGKILL instead of ~13 s.
QUICK_GROUP = ("--set", "streaming.session_timeout_ms=3000", "--set", "streaming.heartbeat_interval_ms=500")
RULES = StreamConfig().rules


def valid_ids(messages) -> set[str]:
    ids = set()
    for _, event in messages:
        try:
            ids.add(decode(encode(event), RULES).event_id)
        except InvalidEvent:
            pass
    return ids


def dirty_synthetic(n_users: int, every: int = 97):
    """Synthetic events with every ``every``-th one broken (impossible timestamp or an unparsable row)."""
    messages = replay_messages("synthetic", None, SyntheticSpec(users=n_users, items=3000, days=1, seed=11))
    for i in range(0, len(messages), every):
        key, event = messages[i]
        messages[i] = (key, event | {"timestamp": 15}) if i % 2 else (None, {"schema": 1, "raw": f"row {i}"})
    return messages


class Replay(threading.Thread):
    """``produce`` at a steady rate in the background, as a live source would."""

    def __init__(self, messages, settings, topic, rate):
        super().__init__(daemon=True)
        self.args, self.error = (messages, settings, topic, rate), None

    def run(self):
        try:
            produce(*self.args[:3], rate=self.args[3])
        except Exception as exc:  # reported by the test
            self.error = exc


def check_exactly_once(pool, messages, bootstrap, topic) -> None:
    with open_store(pool) as store:
        stored = store.read(["event_id"])["event_id"]
    assert stored.is_unique, f"{stored.duplicated().sum()} events stored twice"
    assert set(stored) == valid_ids(messages)
    # every invalid message is in the dead-letter topic (a crash may repeat a dead letter, never lose one)
    invalid = set()
    for record in read_topic(bootstrap, topic):
        try:
            decode(record.value, RULES)
        except InvalidEvent:
            invalid.add((record.partition, record.offset))
    lettered = {(d["source"]["partition"], d["source"]["offset"])
                for d in (json.loads(m.value) for m in read_topic(bootstrap, f"{topic}.dlq"))}
    assert invalid and lettered == invalid


def replay_with_kills(bootstrap, topic, pool, messages, kills, rate, seed, consumer_processes) -> list[int]:
    """Replay at ``rate`` while consumers are SIGKILLed at ``kills`` random moments; returns the kill counts."""
    settings = StreamConfig(bootstrap_servers=bootstrap)
    ensure_topic(settings, topic, 4)
    replay = Replay(messages, settings, topic, rate)
    replay.start()
    rng = random.Random(seed)
    n_valid = len(valid_ids(messages))
    thresholds = sorted(rng.sample(range(n_valid // 20, n_valid * 4 // 5), kills))
    killed_at = []
    for threshold in thresholds:
        consumer = consumer_processes(bootstrap, topic, pool, *QUICK_GROUP, "--set", "streaming.batch_size=300")
        wait_for_pool(pool, max(threshold, pool_count(pool) + 1), consumer)  # each one writes before it dies
        time.sleep(rng.uniform(0, 0.4))
        consumer.process.kill()
        consumer.process.wait()
        killed_at.append(pool_count(pool))
    last = consumer_processes(bootstrap, topic, pool, *QUICK_GROUP, "--idle-timeout", "5")
    replay.join()
    assert replay.error is None, replay.error
    report = last.finish(timeout=300)
    assert report["lag"] == 0
    check_exactly_once(pool, messages, bootstrap, topic)
    return killed_at


def test_sigkilled_consumers_lose_and_duplicate_nothing(kafka_broker, topic, tmp_path, consumer_processes):
    messages = dirty_synthetic(200)
    assert len(messages) >= 10_000
    killed_at = replay_with_kills(kafka_broker.bootstrap_servers, topic, tmp_path / "pool", messages, kills=2,
                                  rate=700, seed=1, consumer_processes=consumer_processes)
    assert len(killed_at) == 2 and killed_at[0] < killed_at[1]


@pytest.mark.heavy
@pytest.mark.shared_data
def test_taobao_slice_replay_survives_five_sigkills(kafka_broker, topic, tmp_path, consumer_processes):
    messages = replay_messages("taobao", shared("taobao-userbehavior/UserBehavior_slice.csv"))
    killed_at = replay_with_kills(kafka_broker.bootstrap_servers, topic, tmp_path / "pool", messages, kills=5,
                                  rate=1500, seed=7, consumer_processes=consumer_processes)
    assert len(killed_at) == 5


def test_broker_paused_longer_than_the_session_recovers(own_broker, topic, tmp_path, consumer_processes):
    broker = own_broker()
    settings = StreamConfig(bootstrap_servers=broker.bootstrap_servers)
    ensure_topic(settings, topic, 4)
    messages = dirty_synthetic(60)
    pool = tmp_path / "pool"
    consumer = consumer_processes(broker.bootstrap_servers, topic, pool, *QUICK_GROUP)
    consumer.wait_for_log("partitions assigned: [")
    replay = Replay(messages, settings, topic, rate=500)
    replay.start()
    wait_for_pool(pool, len(messages) // 4, consumer)
    broker.process.send_signal(signal.SIGSTOP)  # unreachable: no answers, connections hang
    time.sleep(7)  # > 2x the 3 s session timeout
    during = pool_count(pool)
    broker.process.send_signal(signal.SIGCONT)
    replay.join()
    assert replay.error is None, replay.error
    wait_for_pool(pool, len(valid_ids(messages)), consumer)
    report = consumer.stop()  # SIGTERM: graceful, exit 0
    assert during < len(valid_ids(messages)) and report["written"] == len(valid_ids(messages))
    check_exactly_once(pool, messages, broker.bootstrap_servers, topic)


def test_consumer_started_before_its_broker_waits_and_recovers(own_broker, topic, tmp_path, consumer_processes):
    port = free_port()
    pool = tmp_path / "pool"
    consumer = consumer_processes(f"127.0.0.1:{port}", topic, pool, *QUICK_GROUP,
                                  "--set", "streaming.request_timeout_ms=1500", "--set", "streaming.backoff_s=0.2")
    consumer.wait_for_log("unreachable", timeout=60)
    broker = own_broker(port)
    messages = dirty_synthetic(20)
    produce(messages, StreamConfig(bootstrap_servers=broker.bootstrap_servers), topic)
    wait_for_pool(pool, len(valid_ids(messages)), consumer)
    report = consumer.stop()
    assert report["connect_retries"] >= 1 and report["written"] == len(valid_ids(messages))
    check_exactly_once(pool, messages, broker.bootstrap_servers, topic)
