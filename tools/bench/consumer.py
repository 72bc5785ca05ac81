"""The stream consumer vs a raw kafka-python poll loop, on the same topic of one broker in the same run.

Throughput: synthetic events (one day, as a live stream, so a batch is one
pool file) are produced once into a 4-partition topic of a private bundled
broker. Each repeat reads the whole topic with a fresh consumer group,
alternating the raw loop (poll and count) and the full consumer (validate,
durable pool write, dead letters, commit); events/s run from the first
record received to the last one counted (raw) or made durable and
committed (full). Latency: events are produced at a steady rate below both
capacities while one consumer runs; per event, the time from the record's
producer timestamp to its receipt (raw) or to its durability in the pool
(full, with the default batching of at most ``batch_max_wait_s``).

The standard size reads 464,852 events (8,000 synthetic users) five times
per loop: at 119,000 a read lasted under a second, and one stall of the
raw loop moved a repeat's ratio anywhere from 0.33x to 1.60x.

The produced messages (a few hundred thousand Python objects of the bench's
own) are frozen out of the cyclic garbage collector before the loops run:
otherwise each loop's full collections scan them, a cost of the bench, not
of either loop (measured: 9.0-9.5 us of CPU per event in the full consumer
without the freeze, 7.3-7.9 with it; 6.2-7.2 and 5.5-6.0 in the raw loop).
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from recfl.core.formats import SyntheticSpec
from streaming.broker import start_broker
from streaming.consumer import StreamConsumer
from streaming.producer import produce, replay_messages
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic
from tools.bench import Figure

BENCH = "consumer"


def _raw_poll(settings, count: int, assigned: threading.Event | None = None) -> tuple[float, np.ndarray]:
    """Poll ``count`` records with a bare consumer-group member: (events/s, produce->receive latencies in ms)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(settings.topic, **settings.client_kwargs(), **settings.group_kwargs())
    seen, first, latencies = 0, None, []
    try:
        while seen < count:
            records = consumer.poll(timeout_ms=500)
            if assigned is not None and consumer.assignment():
                assigned.set()
            now_ms = time.time() * 1000
            for batch in records.values():
                first = first or time.monotonic()
                seen += len(batch)
                latencies.extend(now_ms - r.timestamp for r in batch)
        rate = seen / (time.monotonic() - first)
    finally:
        consumer.close(autocommit=False)
    return rate, np.asarray(latencies)


def _full(settings, count: int, pool: Path, assigned: threading.Event | None = None):
    consumer = StreamConsumer(settings, pool)
    if assigned is not None:
        def watch():
            while consumer.stats.rebalances == 0:
                time.sleep(0.05)
            assigned.set()
        threading.Thread(target=watch, daemon=True).start()
    return consumer.run(max_events=count)


def _latency(run_consumer, settings, messages, rate: float) -> np.ndarray:
    """Produce ``messages`` at ``rate`` while ``run_consumer(settings, assigned)`` consumes; its latencies."""

    ensure_topic(settings, settings.topic, settings.partitions)
    assigned, result = threading.Event(), {}
    worker = threading.Thread(target=lambda: result.update(value=run_consumer(settings, assigned)), daemon=True)
    worker.start()
    if not assigned.wait(120):
        raise RuntimeError("benchmark consumer never got its partitions")
    produce(messages, settings, settings.topic, rate=rate)
    worker.join()
    return result["value"]


def run(size: str) -> list[Figure]:
    quick = size == "quick"

    users, repeats = (400, 3) if quick else (8000, 5)
    rate, seconds = (1000.0, 5) if quick else (2000.0, 15)
    messages = replay_messages("synthetic", None, SyntheticSpec(users=users, items=20_000, days=1, seed=3))
    n = len(messages)
    broker = start_broker()
    try:
        base = StreamConfig(bootstrap_servers=broker.bootstrap_servers, topic="bench-throughput")
        produce(messages, base, base.topic)
        gc.freeze()
        raw_rates, full_rates = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats):
                raw_rates.append(_raw_poll(replace(base, group=f"raw-{i}"), n)[0])
                stats = _full(replace(base, group=f"full-{i}"), n, Path(tmp) / f"pool-{i}")
                full_rates.append(stats.events_per_s)

            live = messages[: int(rate * seconds)]
            raw_settings = replace(base, topic=f"bench-latency-raw-{uuid.uuid4().hex[:6]}", group="raw-latency")
            raw_latency = _latency(lambda s, a: _raw_poll(s, len(live), a)[1], raw_settings, live, rate)
            full_settings = replace(base, topic=f"bench-latency-full-{uuid.uuid4().hex[:6]}", group="full-latency")
            full_stats = _latency(lambda s, a: _full(s, len(live), Path(tmp) / "pool-latency", a), full_settings, live, rate)
            full_latency = np.concatenate(list(full_stats.latencies_ms))
    finally:
        gc.unfreeze()
        broker.stop()

    ratios = ", ".join(f"{f / r:.2f}x" for f, r in zip(full_rates, raw_rates))
    note = f"{n:,} synthetic events, 4 partitions, bundled broker; median of {repeats} (run by run: {ratios})"
    live_note = (f"{len(live):,} events produced at {rate:,.0f}/s; full consumer batches up to "
                 f"{base.batch_size} events or {base.batch_max_wait_s:g} s")
    figures = [Figure(BENCH, "events/s, full consumer (validate + durable pool write + commit)",
                      statistics.median(full_rates), "events/s", "raw kafka-python poll loop",
                      statistics.median(raw_rates), note)]
    for q in (50, 99):
        figures.append(Figure(BENCH, f"latency p{q}, produce -> durable in pool", float(np.percentile(full_latency, q)),
                              "ms", f"raw poll loop, produce -> received p{q}", float(np.percentile(raw_latency, q)),
                              live_note))
    return figures

