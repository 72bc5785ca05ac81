"""A real Kafka-compatible broker (the bundled Tansu) for tests, and helpers around it.

``kafka_broker`` is one broker for the whole session on a free loopback
port (tests use their own topics, see ``topic``); ``own_broker`` starts
brokers a test may pause, stop or start late. ``consumer_processes`` runs
``recfl stream consume`` as real processes that a test can signal or kill.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from streaming.broker import Broker, start_broker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory) -> Broker:
    broker = start_broker(log_file=tmp_path_factory.mktemp("broker") / "tansu.log")
    yield broker
    broker.stop()


@pytest.fixture
def own_broker(tmp_path) -> Callable[..., Broker]:
    """``own_broker(port=None)`` starts a private broker; all are stopped after the test."""
    started: list[Broker] = []

    def start(port: int | None = None) -> Broker:
        broker = start_broker(port, log_file=tmp_path / f"tansu-{len(started)}.log")
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def topic(request) -> str:
    """A topic name no other test uses."""
    return f"{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"


@dataclass
class ConsumerProcess:
    """A ``recfl stream consume`` process; stderr goes to ``log``, the JSON report to ``out``."""

    process: subprocess.Popen
    log: Path
    out: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if self.process.poll() is not None:
                raise AssertionError(f"consumer exited ({self.process.returncode}) before logging {text!r}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"consumer did not log {text!r} within {timeout:g} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def finish(self, timeout: float = 60.0) -> dict:
        """Wait for a clean exit and return the printed report."""
        code = self.process.wait(timeout)
        assert code == 0, f"consumer exit code {code}:\n{self.log_text()[-3000:]}"
        return json.loads(self.out.read_text())

    def stop(self, timeout: float = 60.0) -> dict:
        """SIGTERM (graceful: the current batch is finished and committed), then the report."""
        self.process.send_signal(signal.SIGTERM)
        return self.finish(timeout)


@pytest.fixture
def consumer_processes(tmp_path) -> Callable[..., ConsumerProcess]:
    """``start(bootstrap, topic, pool, *extra_args, group=topic)``; processes still running after the test are killed."""
    started: list[ConsumerProcess] = []

    def start(bootstrap: str, topic: str, pool: Path, *extra: str, group: str | None = None) -> ConsumerProcess:
        n = len(started)
        log, out = tmp_path / f"consumer-{n}.log", tmp_path / f"consumer-{n}.json"
        command = [sys.executable, "-m", "recfl", "stream", "consume", "--bootstrap-servers", bootstrap,
                   "--topic", topic, "--group", group or topic, "--pool", str(pool), *extra]
        with open(log, "wb") as err, open(out, "wb") as stdout:
            process = subprocess.Popen(command, stdout=stdout, stderr=err, cwd=REPO)
        started.append(ConsumerProcess(process, log, out))
        return started[-1]

    yield start
    for consumer in started:
        if consumer.process.poll() is None:
            consumer.process.kill()
            consumer.process.wait()


def read_topic(bootstrap: str, topic: str, idle_s: float = 2.0, timeout: float = 60.0) -> list:
    """Every message of ``topic`` (all partitions, from the start), read without a consumer group."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        messages, last, deadline = [], time.monotonic(), time.monotonic() + timeout
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
                last = time.monotonic()
        return messages
    finally:
        consumer.close()


def fetch_record(bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 30.0):
    """The message at ``offset`` of ``topic``'s ``partition``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=200).get(tp, []):
                if record.offset == offset:
                    return record
        raise AssertionError(f"no message at {topic}:{partition}:{offset}")
    finally:
        consumer.close()


def pool_count(pool: Path) -> int:
    """Events stored in the pool at ``pool`` so far (0 before it exists)."""
    from recfl.core.pool import open_store

    if not (pool / "pool.json").exists():
        return 0
    with open_store(pool) as store:
        return store.count()


def wait_for_pool(pool: Path, count: int, consumer: ConsumerProcess | None = None, timeout: float = 180.0) -> None:
    """Block until the pool holds at least ``count`` events (failing early, with its log, if ``consumer`` exits)."""
    deadline = time.monotonic() + timeout
    while pool_count(pool) < count:
        if consumer is not None and consumer.process.poll() is not None:
            raise AssertionError(f"consumer exited ({consumer.process.returncode}):\n{consumer.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            log = consumer.log_text()[-3000:] if consumer is not None else ""
            raise AssertionError(f"the pool holds {pool_count(pool)} events, not {count}, after {timeout:g} s\n{log}")
        time.sleep(0.2)
