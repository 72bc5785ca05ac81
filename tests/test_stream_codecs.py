"""Every compression codec real producers use reaches the pool: batches from a librdkafka client
(confluent-kafka) and from kafka-python's producer, none/gzip/snappy/lz4/zstd mixed on one topic."""

from __future__ import annotations

import json

from confluent_kafka import Producer
from kafka import KafkaProducer

from recfl.app.cli import main
from recfl.core.formats import SyntheticSpec
from recfl.core.pool import open_store
from streaming.events import encode
from streaming.producer import replay_messages
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def librdkafka_send(bootstrap: str, topic: str, codec: str, messages) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 50, "acks": "all"})
    errors = []
    for key, event in messages:
        producer.produce(topic, key=key, value=encode(event), on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert producer.flush(60) == 0 and not errors, errors[:1]


def kafka_python_send(bootstrap: str, topic: str, codec: str, messages) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type=None if codec == "none" else codec,
                             linger_ms=50, acks="all")
    futures = [producer.send(topic, key=key, value=encode(event)) for key, event in messages]
    producer.flush()
    for future in futures:
        future.get(30)
    producer.close()


def test_every_codec_from_both_clients_is_consumed(kafka_broker, topic, tmp_path, capsys):
    """Snappy, lz4 and zstd batches stopped the consumer (UnsupportedCodecError, exit 2), the uncompressed
    partitions with them."""
    bootstrap = kafka_broker.bootstrap_servers
    ensure_topic(StreamConfig(bootstrap_servers=bootstrap), topic, 2)
    messages = replay_messages("synthetic", None, SyntheticSpec(users=30, items=300, days=1, seed=4))
    senders = [(send, codec) for codec in CODECS for send in (librdkafka_send, kafka_python_send)]
    share = len(messages) // len(senders)
    for i, (send, codec) in enumerate(senders):
        send(bootstrap, topic, codec, messages[i * share : (i + 1) * share])
    sent = messages[: share * len(senders)]

    assert main(["stream", "consume", "--bootstrap-servers", bootstrap, "--topic", topic, "--group", "codecs",
                 "--pool", str(tmp_path / "pool"), "--idle-timeout", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["consumed"], report["written"], report["dead_lettered"]) == (len(sent), len(sent), 0)
    with open_store(tmp_path / "pool") as pool:
        assert set(pool.read(["event_id"])["event_id"]) == {event["event_id"] for _, event in sent}
