"""Event schema v1: valid events decode to canonical fields; every kind of bad message gets its reason."""

from __future__ import annotations

import json

import pytest

from streaming.events import REASONS, InvalidEvent, decode, encode
from streaming.settings import StreamConfig

RULES = StreamConfig().rules
GOOD = {"schema": 1, "event_id": "taobao:1", "user_id": 5, "item_id": 7, "category_id": 9, "label": 1,
        "timestamp": 1_511_658_000, "behavior": "cart", "source": "taobao", "line": 3}


def test_valid_event_decodes_to_canonical_fields():
    assert decode(encode(GOOD), RULES).fields() == {
        "event_id": "taobao:1", "user_id": 5, "item_id": 7, "category_id": 9, "label": 1,
        "timestamp": 1_511_658_000, "behavior": "cart"}
    without_behavior = {k: v for k, v in GOOD.items() if k != "behavior"} | {"category_id": -1}
    assert decode(encode(without_behavior), RULES).behavior is None


@pytest.mark.parametrize("behavior", ["pv", "buy", "click", "view", "rating:4", "rating:0.5", "rating:5"])
def test_known_behaviors(behavior):
    assert decode(encode(GOOD | {"behavior": behavior}), RULES).behavior == behavior


def _with(**changes):
    return encode({k: v for k, v in (GOOD | changes).items() if v is not ...})


@pytest.mark.parametrize("payload,code,detail", [
    (b"x" * 20_000, "oversized", "20000 bytes exceeds the 16384-byte limit"),
    (None, "bad_json", "empty message"),
    (b"{\"schema\": 1, \"event_id\": \"a\"", "bad_json", "not JSON"),
    (b"\xff\xfe{}", "bad_json", "not UTF-8"),
    (b"[1, 2]", "bad_json", "not a JSON object but array"),
    (_with(schema=2), "schema_version", "schema 2 is not the supported version 1"),
    (_with(schema=...), "schema_version", "schema None"),
    (_with(schema=True), "schema_version", "schema True"),
    (_with(user_id=..., timestamp=None), "missing_field", "missing field(s) user_id, timestamp"),
    (_with(event_id=17), "bad_type", "event_id must be a string"),
    (_with(user_id="543462x"), "bad_type", "user_id must be an integer, got '543462x'"),
    (_with(label=True), "bad_type", "label must be an integer, got True"),
    (_with(timestamp=1.5e9), "bad_type", "timestamp must be an integer"),
    (_with(behavior=4), "bad_type", "behavior must be a string"),
    (_with(event_id=""), "bad_value", "event_id must have 1..256 characters"),
    (_with(item_id=-3), "bad_value", "item_id -3 is outside 0..2^63-1"),
    (_with(user_id=2**63), "bad_value", "user_id 9223372036854775808 is outside"),
    (_with(category_id=-2), "bad_value", "category_id -2 is outside -1..2^63-1"),
    (_with(label=2), "bad_value", "label must be 0 or 1, got 2"),
    (_with(timestamp=15), "bad_timestamp", "timestamp 15 is outside 1990..2100"),
    (_with(timestamp=5_000_000_000), "bad_timestamp", "outside 1990..2100"),
    (_with(behavior="like"), "unknown_behavior", "unknown behavior 'like'"),
    (_with(behavior="rating:7"), "unknown_behavior", "unknown behavior 'rating:7'"),
])
def test_every_bad_message_gets_its_reason(payload, code, detail):
    with pytest.raises(InvalidEvent) as err:
        decode(payload, RULES)
    assert err.value.code == code and code in REASONS
    assert detail in err.value.detail and "\n" not in err.value.detail


def test_size_limit_and_behaviors_are_settings():
    rules = StreamConfig(max_event_bytes=200, behaviors=("like",)).rules
    assert decode(_with(behavior="like"), rules).behavior == "like"
    with pytest.raises(InvalidEvent, match="unknown behavior 'pv'"):
        decode(_with(behavior="pv"), rules)
    with pytest.raises(InvalidEvent, match="oversized"):
        decode(encode(GOOD | {"source": "x" * 60}), rules)


def test_encoding_is_compact_json():
    assert json.loads(encode(GOOD)) == GOOD and b" " not in encode(GOOD)


def test_security_settings_reach_every_kafka_client_as_its_own_keys(tmp_path):
    """SASL/SSL keys from [streaming] pass to kafka-python under names each client accepts."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    from recfl.core import config

    path = tmp_path / "kafka.toml"
    path.write_text('[streaming]\nbootstrap_servers = "b1:9093,b2:9093"\nsecurity_protocol = "SASL_SSL"\n'
                    'sasl_mechanism = "SCRAM-SHA-512"\nsasl_plain_username = "recfl"\nsasl_plain_password = "secret"\n'
                    'ssl_cafile = "/etc/ca.pem"\nssl_check_hostname = false\n')
    kwargs = config.section(StreamConfig, config.load(path), "streaming").client_kwargs()
    assert kwargs["bootstrap_servers"] == ["b1:9093", "b2:9093"] and kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("SCRAM-SHA-512", "recfl", "secret")
    assert kwargs["ssl_cafile"] == "/etc/ca.pem" and kwargs["ssl_check_hostname"] is False
    assert "ssl_certfile" not in kwargs  # empty settings stay kafka-python's defaults
    for client in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        assert set(kwargs) <= set(client.DEFAULT_CONFIG), client.__name__
    assert set(StreamConfig().group_kwargs()) <= set(KafkaConsumer.DEFAULT_CONFIG)
