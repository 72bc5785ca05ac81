"""End to end on the real broker: hostile messages mixed into a valid stream never stop the consumer; every
valid event is stored once, every invalid one dead-lettered with its reason, a changed event as a conflict."""

from __future__ import annotations

import json
import random
from collections import Counter

from hostile_messages import REPORTED_NAMES, kinds, with_text
from kafka import KafkaProducer
from kafka_fixtures import read_topic

from recfl.core.formats import SyntheticSpec
from recfl.core.pool import open_store
from streaming.dead_letters import MAX_DEAD_LETTER_BYTES
from streaming.events import decode, encode
from streaming.producer import replay_messages
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic


def test_hostile_messages_never_stop_the_stream(kafka_broker, topic, tmp_path, consumer_processes):
    bootstrap = kafka_broker.bootstrap_servers
    ensure_topic(StreamConfig(bootstrap_servers=bootstrap), topic, 3)
    hostile = kinds(lambda name: f"hostile:{name}")
    assert len(hostile) - len(REPORTED_NAMES) >= 30 and {k.name for k in hostile} >= REPORTED_NAMES
    valid = replay_messages("synthetic", None, SyntheticSpec(users=40, items=500, days=1, seed=8))
    sends = [(key, encode(event), (), None) for key, event in valid]
    sends += [(k.key, k.payload, k.headers, k) for k in hostile]
    random.Random(3).shuffle(sends)
    # one event id twice with the same content (a duplicate), twice with other content (a conflict)
    sends += [(b"d", with_text("hostile:duplicate"), (), None)] * 2
    sends += [(b"c", with_text("hostile:conflict"), (), None), (b"c", with_text("hostile:conflict", label="0"), (), "conflict")]

    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=2_000_000, linger_ms=5)
    expected_letters, futures = {}, []
    for i, (key, payload, headers, kind) in enumerate(sends):
        partition = 2 if key in (b"d", b"c") else i % 3  # every partition gets hostile messages; pairs keep their order
        futures.append((producer.send(topic, key=key, value=payload, headers=list(headers), partition=partition), kind))
    producer.flush()
    for future, kind in futures:
        meta = future.get(30)
        reason = kind if isinstance(kind, str) else (kind.expected if kind is not None else None)
        if reason is not None:
            expected_letters[(meta.partition, meta.offset)] = reason
    producer.close()

    pool = tmp_path / "pool"
    report = consumer_processes(bootstrap, topic, pool, "--idle-timeout", "3").finish(timeout=300)
    stored_hostile = [k for k in hostile if k.expected is None]
    assert report["consumed"] == len(sends)
    assert report["reasons"] == dict(sorted(Counter(expected_letters.values()).items()))
    assert report["dead_lettered"] == len(expected_letters)
    assert report["written"] == len(valid) + len(stored_hostile) + 2 and report["duplicates_skipped"] == 1
    assert report["lag"] == 0

    with open_store(pool) as store:
        stored = store.read().set_index("event_id")
    assert stored.index.is_unique
    expected_ids = {event["event_id"] for _, event in valid} | {"hostile:duplicate", "hostile:conflict"}
    ids = {kind.name: decode(kind.payload, StreamConfig().rules).event_id for kind in stored_hostile}
    assert set(stored.index) == expected_ids | set(ids.values())
    for kind in stored_hostile:
        assert stored.loc[ids[kind.name], "label"] == kind.label, kind.name
    assert stored.loc["hostile:conflict", "label"] == 1  # the first version stays

    letters = read_topic(bootstrap, f"{topic}.dlq")
    assert all(len(m.value) <= MAX_DEAD_LETTER_BYTES for m in letters)
    bodies = [json.loads(m.value) for m in letters]
    assert {(b["source"]["partition"], b["source"]["offset"]): b["reason"] for b in bodies} == expected_letters
    assert len(bodies) == len(expected_letters)  # each once: the consumer never restarted
    big_key = next(b for b in bodies if b["source"]["key_bytes"] == 300_000)
    assert big_key["reason"] == "bad_json" and len(big_key["source"]["key"]) == 4 * 1024  # "\xff" escaped, cut
