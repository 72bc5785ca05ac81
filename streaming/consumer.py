"""Behaviour events from Kafka into the cloud pool: validate, write durably, then commit.

The pool is a pool directory (:mod:`recfl.core.pool`): the consumer appends to
its store, and a path that does not exist yet becomes a new, empty pool with
the given ``[pool]`` roles; anything else there (a folder that is not a pool,
a store edited by hand) is refused with one line before the group is joined.

Exactly-once into the pool from at-least-once delivery. A batch of messages
is made durable first (invalid ones acknowledged by the dead-letter topic,
valid ones appended to the :class:`~recfl.core.store.PoolStore`, which skips
event ids it already holds); only then are the batch's offsets committed. A
crash at any moment therefore re-delivers at most the uncommitted batches,
whose events the pool skips as duplicates. The same happens on a rebalance:
the listener makes the pending batches durable and commits before the
partitions go. An unreachable broker is waited for with exponential backoff,
at start-up as in mid-stream; :meth:`StreamConsumer.stop` (wired to
SIGTERM/SIGINT by the CLI) finishes and commits the current batch.

Data never stops the stream: every message ends as a stored event, a skipped
duplicate or a dead letter. The pool reports an id stored with other content
(``conflict``); a message that fails in any unforeseen way, in decoding or in
the pool write, is dead-lettered as ``internal`` with the exception's type
(a failed batch is split in halves until the failing messages are alone).
Only the environment stops the consumer (:class:`EnvironmentFault`: disk
full, no permission, the broker refusing dead letters), as one line, without
committing anything not written.

The poll loop decodes; a writer process (:mod:`streaming.pool_writer`)
appends each batch to the pool while the next one is read. A batch is
durable once the writer has stored it and the broker has acknowledged its
dead letters; batches become durable, and their offsets committable, in the
order they were read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka import (
    AsyncConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.errors import KafkaError

from recfl.core.errors import EnvironmentFault, RecflError
from recfl.core.pool import PoolConfig, ensure_pool
from streaming.dead_letters import dead_letter, dead_letter_key
from streaming.events import Event, InvalidEvent, decode, decode_all
from streaming.pool_writer import PoolWriter, WriteResult
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic

log = logging.getLogger(__name__)
_LATENCY_SAMPLES = 1_000_000  # latencies kept for the percentiles (the most recent ones)
_GROWTH = 4  # a batch grows up to this many times batch_size while the writer is busy


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
        if not self._latency_count:
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
    """Messages read since the last hand-off: valid events with their records, dead letters in flight, next
    offsets; then what the writer did with it."""

    events: list[Event] = field(default_factory=list)
    records: list = field(default_factory=list)
    dead: list = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    consumed: int = 0
    opened_at: float | None = None
    result: WriteResult | None = None


class StreamConsumer:
    """One consumer-group member writing ``settings.topic`` into a pool directory (a new one gets ``roles``)."""

    def __init__(self, settings: StreamConfig, pool: str | Path, roles: PoolConfig = PoolConfig()):
        self.settings = settings
        self.pool_path = Path(pool)
        self.roles = roles
        self.stats = ConsumeStats()
        self._rules = settings.rules
        self._stop = threading.Event()
        self._batch = _Batch()
        self._uncommitted: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._consumer: KafkaConsumer | None = None
        self._dlq: KafkaProducer | None = None
        self._writer: PoolWriter | None = None
        self._in_flight: deque[_Batch] = deque()  # handed off, in reading order: written, then acknowledged
        self._failed = False

    def stop(self) -> None:
        """Ask the run loop to finish and commit the current batch, then return (safe from a signal handler)."""
        self._stop.set()

    def run(self, max_events: int | None = None, idle_timeout_s: float | None = None) -> ConsumeStats:
        """Consume until :meth:`stop`, ``max_events`` messages, or ``idle_timeout_s`` without a message.

        The idle clock runs only while partitions are assigned, so waiting for
        a broker or for a group join never counts as idle.
        """
        try:
            ensure_pool(self.pool_path, self.roles)
            self._writer = PoolWriter(self.pool_path / "store")  # starts while we connect and join the group
            if not self._connect():
                return self.stats
            self._loop(max_events, idle_timeout_s)
            self._make_durable()
            self._commit()
            self._update_lag()
            return self.stats
        except RecflError:
            self._failed = True
            raise
        except Exception as exc:  # a fault of the broker connection, or of recfl: one line all the same
            self._failed = True
            log.debug("stream consumer failed", exc_info=True)
            raise EnvironmentFault(f"stream consumer failed: {_describe(exc)}") from None
        finally:
            self._close_clients()
            if self._writer is not None:
                self._writer.close()
                self._writer = None

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
                self._close_clients()
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
        """Read batches and hand them to the writer. A batch is due at ``batch_size`` messages or after
        ``batch_max_wait_s``; while the writer still holds the previous one it grows, up to
        ``_GROWTH * batch_size``, so that a slow disk gets fewer, larger writes (group commit)."""
        s = self.settings
        idle_since = time.monotonic()
        next_progress = time.monotonic() + s.progress_interval_s
        while not self._stop.is_set():
            if self._collect():
                self._commit()
            batch, busy = self._batch, self._writer.in_flight > 0
            room = (_GROWTH if busy else 1) * s.batch_size - batch.consumed
            if max_events is not None:
                room = min(room, max_events - self.stats.consumed)
            if batch.opened_at is None:
                wait = 0.5
            elif busy:
                wait = 0.05  # a due batch waits for the writer: look again soon
            else:
                wait = batch.opened_at + s.batch_max_wait_s - time.monotonic()
            records = self._consumer.poll(timeout_ms=int(1000 * min(0.5, max(0.0, wait))), max_records=max(1, room))
            now = time.monotonic()
            for tp, polled in records.items():
                self._take(tp, polled)
            if records or not self._consumer.assignment():
                idle_since = now
            due = batch.consumed >= s.batch_size or (batch.opened_at is not None and (
                not records or now - batch.opened_at >= s.batch_max_wait_s))
            if due and (not self._writer.in_flight or batch.consumed >= _GROWTH * s.batch_size):
                self._hand_off()
            if now >= next_progress:
                self._progress()
                next_progress = now + s.progress_interval_s
            if max_events is not None and self.stats.consumed >= max_events:
                break
            if idle_timeout_s is not None and now - idle_since >= idle_timeout_s:
                log.info("no message for %.1f s; stopping", idle_timeout_s)
                break

    def _take(self, tp: TopicPartition, records: list) -> None:
        """Decode records into the batch; invalid ones are sent to the dead-letter topic."""
        batch = self._batch
        if batch.opened_at is None:
            batch.opened_at = time.monotonic()
        if self.stats.first_record_at is None:
            self.stats.first_record_at = batch.opened_at
        rules, events, kept = self._rules, batch.events, batch.records
        try:
            plain = decode_all([record.value for record in records], rules)
        except Exception:  # recfl's fault, not the stream's: the messages go one by one, each answered alone
            log.exception("decoding a poll at once failed; decoding its %d messages one by one", len(records))
            plain = None
        if plain is not None:
            events.extend(plain)
            kept.extend(records)
        for record in records if plain is None else ():
            try:
                events.append(decode(record.value, rules))
                kept.append(record)
            except InvalidEvent as error:
                batch.dead.append(self._send_dead_letter(record, error.code, error.detail))
                self.stats.reasons[error.code] += 1
            except Exception as exc:  # recfl's fault, not the stream's: this message only
                batch.dead.append(self._send_dead_letter(record, "internal", _describe(exc)))
                self.stats.reasons["internal"] += 1
        batch.consumed += len(records)
        self.stats.consumed += len(records)
        batch.offsets[tp] = records[-1].offset + 1
        self._positions[tp] = records[-1].offset + 1

    def _send_dead_letter(self, record, reason: str, detail: str):
        """Send one dead letter (thread-safe); its future resolves once the broker has it."""
        try:
            return self._dlq.send(self.settings.dead_letters, key=dead_letter_key(record),
                                  value=dead_letter(record, reason, detail, self.settings.group))
        except KafkaError as exc:
            raise EnvironmentFault(f"cannot send dead letters to {self.settings.dead_letters}: {exc}") from None

    def _hand_off(self) -> None:
        """Send the batch to the writer (waiting until it is done with the previous one) and start a new one."""
        batch, self._batch = self._batch, _Batch()
        if not batch.consumed:
            return
        while self._writer.in_flight:
            self._written(self._writer.receive())
        self._writer.submit(batch.events)
        self._in_flight.append(batch)

    def _make_durable(self) -> None:
        """Hand off the batch and wait until every batch handed off is durable."""
        self._hand_off()
        while self._writer.in_flight:
            self._written(self._writer.receive())
        self._collect(wait=True)

    def _written(self, result: WriteResult) -> None:
        """The writer stored the oldest batch not written yet: dead-letter its conflicts and failures."""
        batch = next(b for b in self._in_flight if b.result is None)
        batch.result = result
        for position in result.conflicts:
            event = batch.events[position]
            batch.dead.append(self._send_dead_letter(batch.records[position], "conflict",
                                                     f"event_id {event.event_id!r} is stored with other content"))
        for position, why in result.failed:
            batch.dead.append(self._send_dead_letter(batch.records[position], "internal", why))

    def _collect(self, wait: bool = False) -> bool:
        """Count the batches now durable (written, dead letters acknowledged), oldest first, and make their
        offsets committable; True if any. With ``wait``, wait for every batch handed off."""
        while self._writer.has_result():
            self._written(self._writer.receive())
        durable = 0
        while self._in_flight and self._in_flight[0].result is not None:
            batch = self._in_flight[0]
            if not wait and not all(f.is_done for f in batch.dead):
                break
            self._acknowledged(batch.dead)
            self._in_flight.popleft()
            self._durable(batch)
            durable += 1
        return bool(durable)

    def _acknowledged(self, futures: list) -> None:
        """Wait for the broker to acknowledge dead letters; one refused stops the consumer."""
        refused = []
        for future in futures:
            try:
                future.get()
            except KafkaError as exc:
                refused.append(exc)
        if refused:
            raise EnvironmentFault(f"the broker refused {len(refused)} dead letters for {self.settings.dead_letters} "
                                   f"(first: {refused[0]}); offsets not committed")

    def _durable(self, batch: _Batch) -> None:
        st, result = self.stats, batch.result
        st.written += result.written
        st.duplicates_skipped += result.duplicates
        st.dead_lettered += len(batch.dead)
        for reason, count in (("conflict", len(result.conflicts)), ("internal", len(result.failed))):
            if count:
                st.reasons[reason] += count
        st.batches += 1
        st.last_durable_at = time.monotonic()
        if batch.records:
            st.record_latencies(time.time() * 1000 - np.array([r.timestamp for r in batch.records], dtype=np.float64))
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

    def _close_clients(self) -> None:
        """Close the Kafka clients (leaving the group: the listener first makes pending batches durable and
        commits them)."""
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except KafkaError as exc:
                log.warning("closing the consumer: %s", exc)
            self._consumer = None
        if self._dlq is not None:
            self._dlq.close(timeout=self.settings.request_timeout_ms / 1000)
            self._dlq = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Rebalance(AsyncConsumerRebalanceListener):
    """Before partitions move: make the pending batches durable and commit.

    Runs on kafka-python's IO thread while the run loop waits inside ``poll``
    (or ``close``), so the batch is never touched concurrently. After a fault
    the consumer is stopping: it neither writes nor commits any more.
    """

    def __init__(self, owner: StreamConsumer):
        self.owner = owner

    def _settle(self, why: str, partitions) -> None:
        pending = self.owner._batch.consumed
        self.owner._make_durable()
        if partitions:
            log.info("partitions %s: %d pending messages made durable", why, pending)

    async def on_partitions_revoked(self, revoked):
        owner = self.owner
        if owner._failed or owner._writer is None:
            return
        self._settle("revoked", revoked)
        offsets = owner._pending_commit()
        if offsets:
            try:
                await owner._consumer.commit_async(offsets)
            except KafkaError as exc:
                owner._commit_failed(exc)
            else:
                owner._committed(offsets)

    async def on_partitions_lost(self, lost):
        owner = self.owner
        if owner._failed or owner._writer is None:
            return
        self._settle("lost", lost)  # durable anyway: the new owner's copies will be skipped as duplicates
        owner._uncommitted.clear()

    async def on_partitions_assigned(self, assigned):
        self.owner._assigned(set(assigned))
