"""Behaviour events from Kafka into the cloud pool: validate, write durably, then commit.

Exactly-once into the pool from at-least-once delivery. A batch of messages
is made durable first (invalid ones acknowledged by the dead-letter topic,
valid ones appended to the :class:`~recfl.core.store.PoolStore`, which skips
event ids it already holds); only then are the batch's offsets committed. A
crash at any moment therefore re-delivers at most the uncommitted batches,
whose events the pool skips as duplicates. The same happens on a rebalance:
the listener makes the batch durable and commits before the partitions go.
An unreachable broker is waited for with exponential backoff, at start-up
as in mid-stream; :meth:`StreamConsumer.stop` (wired to SIGTERM/SIGINT by the
CLI) finishes and commits the current batch.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import (
    AsyncConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.errors import KafkaError

from recfl.core.errors import RecflError
from recfl.core.store import PoolStore
from streaming.events import SCHEMA_VERSION, InvalidEvent, decode
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic

log = logging.getLogger(__name__)
_LATENCY_SAMPLES = 1_000_000  # latencies kept for the percentiles (the most recent ones)


@dataclass
class ConsumeStats:
    """Counters of one consumer run; :meth:`report` is what ``recfl stream consume`` prints."""

    consumed: int = 0
    written: int = 0
    duplicates_skipped: int = 0
    dead_lettered: int = 0
    reasons: Counter = field(default_factory=Counter)
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    rebalances: int = 0
    connect_retries: int = 0
    lag: int | None = None
    assigned_partitions: list[int] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    first_record_at: float | None = None
    last_durable_at: float | None = None
    latencies_ms: deque = field(default_factory=deque)
    _latency_count: int = 0

    def record_latencies(self, values: np.ndarray) -> None:
        self.latencies_ms.append(values)
        self._latency_count += len(values)
        while self._latency_count > _LATENCY_SAMPLES and len(self.latencies_ms) > 1:
            self._latency_count -= len(self.latencies_ms.popleft())

    @property
    def events_per_s(self) -> float:
        """Messages per second from the first record received to the last batch made durable."""
        if self.first_record_at is None or self.last_durable_at is None or self.last_durable_at <= self.first_record_at:
            return 0.0
        return self.consumed / (self.last_durable_at - self.first_record_at)

    def latency_percentiles(self) -> dict[str, float] | None:
        """Produce -> durable-in-pool latency of valid events (ms, from the Kafka record timestamp)."""
        if not self.latencies_ms:
            return None
        values = np.concatenate(list(self.latencies_ms))
        p50, p99 = np.percentile(values, [50, 99])
        return {"p50": round(float(p50), 1), "p99": round(float(p99), 1), "max": round(float(values.max()), 1)}

    def report(self) -> dict:
        return {
            "consumed": self.consumed, "written": self.written, "duplicates_skipped": self.duplicates_skipped,
            "dead_lettered": self.dead_lettered, "reasons": dict(sorted(self.reasons.items())),
            "batches": self.batches, "commits": self.commits, "commit_failures": self.commit_failures,
            "rebalances": self.rebalances, "connect_retries": self.connect_retries, "lag": self.lag,
            "assigned_partitions": self.assigned_partitions,
            "elapsed_s": round(time.monotonic() - self.started_at, 3), "events_per_s": round(self.events_per_s, 1),
            "latency_ms": self.latency_percentiles(),
        }


@dataclass
class _Batch:
    """Messages read since the last durable write: valid rows, dead-letter sends in flight, next offsets."""

    rows: list[dict] = field(default_factory=list)
    created_ms: list[int] = field(default_factory=list)
    dead: list = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    opened_at: float | None = None

    def __len__(self) -> int:
        return len(self.rows) + len(self.dead)


def dead_letter(record, error: InvalidEvent, group: str, max_bytes: int) -> bytes:
    """The dead-letter message of a rejected record: reason, source offset and the (truncated) payload."""
    payload = record.value or b""
    return json.dumps({
        "schema": SCHEMA_VERSION,
        "reason": error.code,
        "detail": error.detail,
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                   "timestamp": record.timestamp, "key": record.key.decode("utf-8", "backslashreplace") if record.key else None},
        "group": group,
        "payload": payload[:max_bytes].decode("utf-8", "backslashreplace"),
        "payload_bytes": len(payload),
    }, separators=(",", ":")).encode()


class StreamConsumer:
    """One consumer-group member writing ``settings.topic`` into a pool directory."""

    def __init__(self, settings: StreamConfig, pool: str | Path):
        self.settings = settings
        self.pool_path = Path(pool)
        self.stats = ConsumeStats()
        self._rules = settings.rules
        self._stop = threading.Event()
        self._batch = _Batch()
        self._uncommitted: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._consumer: KafkaConsumer | None = None
        self._dlq: KafkaProducer | None = None
        self._pool: PoolStore | None = None

    def stop(self) -> None:
        """Ask the run loop to finish and commit the current batch, then return (safe from a signal handler)."""
        self._stop.set()

    def run(self, max_events: int | None = None, idle_timeout_s: float | None = None) -> ConsumeStats:
        """Consume until :meth:`stop`, ``max_events`` messages, or ``idle_timeout_s`` without a message.

        The idle clock runs only while partitions are assigned, so waiting for
        a broker or for a group join never counts as idle.
        """
        self._pool = PoolStore(self.pool_path)
        try:
            if not self._connect():
                return self.stats
            self._loop(max_events, idle_timeout_s)
            self._flush()
            self._commit()
            self._update_lag()
            return self.stats
        except KafkaError as exc:
            raise RecflError(f"stream consumer failed: {exc}") from None
        finally:
            self._close()
            self._pool.close()

    def _connect(self) -> bool:
        """Create the clients, retrying with exponential backoff while the broker is unreachable."""
        s = self.settings
        delay = s.backoff_s
        while not self._stop.is_set():
            try:
                self._ensure_dead_letter_topic()
                self._dlq = KafkaProducer(**s.client_kwargs(), acks="all", linger_ms=5)
                self._consumer = KafkaConsumer(**s.client_kwargs(), **s.group_kwargs())
                self._consumer.subscribe([s.topic], listener=_Rebalance(self))
                log.info("connected to %s; consuming %s as group %s into %s", s.bootstrap_servers, s.topic, s.group,
                         self.pool_path)
                return True
            except KafkaError as exc:
                self._close()
                if not getattr(exc, "retriable", False):
                    raise RecflError(f"cannot use the broker at {s.bootstrap_servers}: {exc}") from None
                self.stats.connect_retries += 1
                log.warning("broker %s unreachable (%s); retrying in %.1f s", s.bootstrap_servers, exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, s.backoff_max_s)
        return False

    def _ensure_dead_letter_topic(self) -> None:
        try:
            ensure_topic(self.settings, self.settings.dead_letters, 1)
        except KafkaError as exc:
            if getattr(exc, "retriable", False):
                raise
            log.warning("cannot create the dead-letter topic %s (%s); assuming it exists", self.settings.dead_letters, exc)

    def _loop(self, max_events: int | None, idle_timeout_s: float | None) -> None:
        s = self.settings
        idle_since = time.monotonic()
        next_progress = time.monotonic() + s.progress_interval_s
        while not self._stop.is_set():
            room = s.batch_size - len(self._batch)
            if max_events is not None:
                room = min(room, max_events - self.stats.consumed)
            wait = 0.5 if self._batch.opened_at is None else self._batch.opened_at + s.batch_max_wait_s - time.monotonic()
            records = self._consumer.poll(timeout_ms=int(1000 * min(0.5, max(0.0, wait))), max_records=max(1, room))
            now = time.monotonic()
            for tp, batch in records.items():
                self._take(tp, batch)
            if records or not self._consumer.assignment():
                idle_since = now
            if len(self._batch) >= s.batch_size or (self._batch.opened_at is not None and (
                    not records or now - self._batch.opened_at >= s.batch_max_wait_s)):
                self._flush()
                self._commit()
            if now >= next_progress:
                self._progress()
                next_progress = now + s.progress_interval_s
            if max_events is not None and self.stats.consumed >= max_events:
                break
            if idle_timeout_s is not None and now - idle_since >= idle_timeout_s:
                log.info("no message for %.1f s; stopping", idle_timeout_s)
                break

    def _take(self, tp: TopicPartition, records: list) -> None:
        """Validate records into the batch; invalid ones are sent to the dead-letter topic."""
        batch = self._batch
        if batch.opened_at is None:
            batch.opened_at = time.monotonic()
        if self.stats.first_record_at is None:
            self.stats.first_record_at = batch.opened_at
        for record in records:
            try:
                batch.rows.append(decode(record.value, self._rules))
                batch.created_ms.append(record.timestamp)
            except InvalidEvent as error:
                value = dead_letter(record, error, self.settings.group, self.settings.max_event_bytes)
                key = f"{record.topic}:{record.partition}:{record.offset}".encode()
                batch.dead.append(self._dlq.send(self.settings.dead_letters, key=key, value=value))
                self.stats.reasons[error.code] += 1
        self.stats.consumed += len(records)
        batch.offsets[tp] = records[-1].offset + 1
        self._positions[tp] = records[-1].offset + 1

    def _flush(self, pool: PoolStore | None = None) -> None:
        """Make the batch durable: dead letters acknowledged, valid events in ``pool`` (default: the run's store);
        its offsets become committable."""
        batch, self._batch = self._batch, _Batch()
        if not len(batch):
            return
        if batch.dead:
            self._dlq.flush()
            failed = [f.exception for f in batch.dead if f.failed()]
            if failed:
                raise RecflError(f"{len(failed)} dead-letter writes to {self.settings.dead_letters} failed "
                                 f"(first: {failed[0]}); offsets not committed")
            self.stats.dead_lettered += len(batch.dead)
        if batch.rows:
            result = (pool or self._pool).append(pd.DataFrame(batch.rows))
            self.stats.written += result.written
            self.stats.duplicates_skipped += result.duplicates
        durable = time.time()
        self.stats.last_durable_at = time.monotonic()
        self.stats.batches += 1
        self.stats.record_latencies(durable * 1000 - np.asarray(batch.created_ms, dtype=np.float64))
        self._uncommitted.update(batch.offsets)

    def _pending_commit(self) -> dict[TopicPartition, OffsetAndMetadata]:
        return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._uncommitted.items()}

    def _commit(self) -> None:
        """Commit the durable offsets; a failure keeps them for the next try (re-delivery is deduplicated)."""
        offsets = self._pending_commit()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=self.settings.request_timeout_ms)
        except KafkaError as exc:
            self._commit_failed(exc)
            return
        self._committed(offsets)

    def _committed(self, offsets: dict) -> None:
        for tp, meta in offsets.items():
            if self._uncommitted.get(tp) == meta.offset:
                del self._uncommitted[tp]
        self.stats.commits += 1

    def _commit_failed(self, exc: Exception) -> None:
        self.stats.commit_failures += 1
        if not getattr(exc, "retriable", False):  # the group moved on: the partitions' new owners re-read from there
            self._uncommitted.clear()
        log.warning("offset commit failed (%s); the events are durable and re-delivery will be skipped as duplicates",
                    exc)

    def _assigned(self, partitions) -> None:
        self.stats.rebalances += 1
        self.stats.assigned_partitions = sorted(tp.partition for tp in partitions)
        self._uncommitted = {tp: o for tp, o in self._uncommitted.items() if tp in partitions}
        self._positions = {tp: o for tp, o in self._positions.items() if tp in partitions}
        log.info("partitions assigned: %s", self.stats.assigned_partitions)

    def _update_lag(self) -> None:
        """Messages behind the high watermark on the assigned partitions (as of the last fetch)."""
        if self._consumer is None:
            return
        lag = None
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            position = self._positions.get(tp)
            if high is not None and position is not None:
                lag = (lag or 0) + max(0, high - position)
        self.stats.lag = lag

    def _progress(self) -> None:
        self._update_lag()
        st = self.stats
        log.info("consumed %d (%.0f ev/s), written %d, dead-lettered %d, duplicates skipped %d, lag %s",
                 st.consumed, st.events_per_s, st.written, st.dead_lettered, st.duplicates_skipped, st.lag)

    def _close(self) -> None:
        """Close the Kafka clients (leaving the group; the listener commits anything still durable)."""
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("closing the consumer: %s", exc)
            self._consumer = None
        if self._dlq is not None:
            self._dlq.close(timeout=self.settings.request_timeout_ms / 1000)
            self._dlq = None


class _Rebalance(AsyncConsumerRebalanceListener):
    """Before partitions move: make the batch durable and commit.

    Runs on kafka-python's IO thread while the run loop waits inside ``poll``
    (or ``close``), so the batch is never touched concurrently; the pool is
    opened afresh because an SQLite connection belongs to its thread.
    """

    def __init__(self, owner: StreamConsumer):
        self.owner = owner

    def _flush(self, why: str, partitions) -> None:
        pending = len(self.owner._batch)
        if pending:
            with PoolStore(self.owner.pool_path) as pool:
                self.owner._flush(pool)
        if partitions:
            log.info("partitions %s: %d pending messages made durable", why, pending)

    async def on_partitions_revoked(self, revoked):
        owner = self.owner
        self._flush("revoked", revoked)
        offsets = owner._pending_commit()
        if offsets:
            try:
                await owner._consumer.commit_async(offsets)
            except KafkaError as exc:
                owner._commit_failed(exc)
            else:
                owner._committed(offsets)

    async def on_partitions_lost(self, lost):
        self._flush("lost", lost)  # durable anyway: the new owner's copies will be skipped as duplicates
        self.owner._uncommitted.clear()

    async def on_partitions_assigned(self, assigned):
        self.owner._assigned(set(assigned))
