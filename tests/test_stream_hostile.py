"""Hostile payloads: every input gets an event or a reason, the fast and careful decoders agree, dead letters
stay bounded. Hypothesis properties over bytes, JSON documents, keys and headers, plus the cases a hostile
test found (each crashed the consumer before)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from hostile_messages import GOOD, kinds, raw
from streaming.dead_letters import KEY_EXCERPT_BYTES, MAX_DEAD_LETTER_BYTES, PAYLOAD_EXCERPT_BYTES, dead_letter
from streaming.events import REASONS, Event, InvalidEvent, decode, decode_all, decode_carefully, encode
from streaming.settings import StreamConfig

RULES = StreamConfig().rules
PROPERTY = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(decoder, payload):
    """The decoded event, or the reason code; any other exception fails the test."""
    try:
        event = decoder(payload, RULES)
    except InvalidEvent as error:
        assert error.code in REASONS and "\n" not in error.detail and len(error.detail) < 300
        return error.code
    assert isinstance(event, Event)
    return event


def check(payload: bytes | None):
    """decode answers with an event or a reason, and the careful path gives the same answer."""
    fast = outcome(decode, payload)
    if payload is not None:
        assert fast == outcome(decode_carefully, payload)
    return fast


@pytest.mark.parametrize("kind", kinds(), ids=lambda kind: kind.name)
def test_hostile_payloads_get_a_reason_never_an_exception(kind):
    """The reported ones crashed the consumer (a traceback on every restart) or passed validation although
    SQLite could not store them; the others are recfl's own."""
    result = check(kind.payload)
    if kind.expected is None:
        assert isinstance(result, Event), result
        assert result.label == kind.label and result.user_id == 5
    else:
        assert result == kind.expected


def test_a_huge_non_utf8_key_still_makes_a_bounded_dead_letter():
    """A 300 KB binary key on an invalid message: the dead letter grew to 1.5 MB and the broker refused it."""
    record = ConsumerRecord("t", 0, 0, 7, 1_700_000_000_000, 0, b"\xff" * 300_000, b"\xfe" * 300_000, [], None,
                            300_000, 300_000, -1)
    letter = dead_letter(record, "oversized", "x" * 10_000, "g")
    assert len(letter) <= MAX_DEAD_LETTER_BYTES < 1_000_000
    body = json.loads(letter)
    assert body["source"]["key_bytes"] == body["payload_bytes"] == 300_000
    assert body["source"]["key"] == "\\xff" * KEY_EXCERPT_BYTES and body["payload"] == "\\xfe" * PAYLOAD_EXCERPT_BYTES
    assert len(body["detail"]) == 500


JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(exclude_categories=()), max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12)
FIELD_NAMES = st.sampled_from([*GOOD, "behavior", "extra"])


@st.composite
def json_events(draw) -> bytes:
    """Events near the valid ones: fields changed or dropped, unknown fields added, any spelling of the text."""
    event = dict(GOOD)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(FIELD_NAMES)
        if draw(st.booleans()):
            event[name] = draw(JSON_VALUES)
        else:
            event.pop(name, None)
    text = json.dumps(event, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 0, 1])),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if draw(st.booleans()):  # a repeated key, a literal JSON does not allow, or a stray character
        position = draw(st.integers(1, len(text) - 1))
        text = text[:position] + draw(st.sampled_from(['"user_id":1,', "NaN", ",", "\\", '"', "[", "}", "\x00"])) \
            + text[position:]
    return raw(text)


@PROPERTY
@given(st.binary(max_size=200))
def test_any_bytes_get_an_event_or_a_reason(payload):
    check(payload)


@PROPERTY
@given(json_events())
def test_any_json_near_an_event_gets_the_same_answer_on_both_paths(payload):
    check(payload)


@PROPERTY
@given(st.binary(min_size=1, max_size=8), st.integers(0, len(encode(GOOD))))
def test_bytes_spliced_into_a_valid_event_get_an_event_or_a_reason(insert, position):
    payload = encode(GOOD)
    check(payload[:position] + insert + payload[position:])


@PROPERTY
@given(st.text(st.characters(exclude_categories=()), min_size=1, max_size=300))
def test_any_event_id_is_stored_as_written_or_refused(event_id):
    result = check(raw(json.dumps(GOOD | {"event_id": event_id})))  # escaped: \\uXXXX for every non-ASCII character
    try:
        text = event_id.encode("utf-16-le", "surrogatepass").decode("utf-16-le")  # escaped pairs join up
    except UnicodeDecodeError:
        assert result == "bad_json"  # a lone surrogate
        return
    if len(text) > 256 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text):
        assert result == "bad_value"
    else:
        assert result.event_id == text


@PROPERTY
@given(key=st.none() | st.binary(max_size=64).map(lambda b: b * 5000), value=st.none() | st.binary(max_size=64).map(
    lambda b: b * 600), headers=st.lists(st.tuples(st.text(max_size=20), st.none() | st.binary(max_size=100)), max_size=5),
    reason=st.sampled_from(REASONS), detail=st.text(max_size=2000))
def test_any_record_makes_a_dead_letter_that_fits_a_kafka_message(key, value, headers, reason, detail):
    record = ConsumerRecord("t", 3, 0, 11, 1_700_000_000_000, 0, key, value, headers, None,
                            -1 if key is None else len(key), -1 if value is None else len(value), -1)
    outcome(decode, value)
    letter = dead_letter(record, reason, detail, "group")
    assert len(letter) <= MAX_DEAD_LETTER_BYTES
    body = json.loads(letter)
    assert body["payload_bytes"] == len(value or b"") and body["source"]["key_bytes"] == (None if key is None else len(key))
    assert body["reason"] == reason and (body["source"]["partition"], body["source"]["offset"]) == (3, 11)


@PROPERTY
@given(st.fixed_dictionaries({
    "event_id": st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=256),
    "user_id": st.integers(0, 2**63 - 1), "item_id": st.integers(0, 2**63 - 1),
    "category_id": st.integers(-1, 2**63 - 1), "label": st.integers(0, 1),
    "timestamp": st.integers(631_152_000, 4_102_444_800),
    "behavior": st.none() | st.sampled_from(sorted(RULES.behaviors)) | st.builds(
        lambda r: f"rating:{r:g}", st.floats(0.5, 5).filter(lambda r: "e" not in f"{r:g}"))}))
def test_every_valid_event_decodes_to_itself(fields):
    event = check(encode({"schema": 1, **fields}))
    assert isinstance(event, Event) and event.fields() == fields
    assert not math.isnan(event.timestamp)


ANY_PAYLOAD = st.none() | st.binary(max_size=120) | json_events() | st.sampled_from([kind.payload for kind in kinds()])


@PROPERTY
@given(st.lists(ANY_PAYLOAD | st.just(encode(GOOD)), max_size=6))
def test_a_whole_poll_decoded_at_once_gives_each_payload_its_own_answer_or_none(payloads):
    """decode_all answers a list only when every payload is an event on its own, and then with those events:
    payloads that join into events (one opening a brace another closes) must not."""
    answers = [outcome(decode, payload) for payload in payloads]
    together = decode_all(payloads, RULES)
    if together is not None:
        assert together == answers


def test_a_poll_of_plain_events_is_decoded_at_once_and_a_split_event_is_not():
    good = [encode(GOOD | {"event_id": f"e{i}", "behavior": behavior}) for i, behavior in enumerate(["pv", None, "rating:4"])]
    assert decode_all(good, RULES) == [decode(payload, RULES) for payload in good]
    head, tail = good[0][:20], good[0][20:]  # two halves of one event around a payload with two braces
    assert decode_all([head, good[1][:-1] + b',"x":{}}', tail], RULES) is None
    assert decode_all([good[0], good[1].replace(b'"e1"', b'"e\\u00011"')], RULES) is None  # a control character
