"""Hostile Kafka messages for the stream tests, each with the outcome it must get: stored, or a dead-letter reason.

``REPORTED`` are the four that crashed the consumer on every restart (a hostile test found them);
:func:`kinds` adds recfl's own, near-valid and malformed. Stored kinds carry the event id they are given,
so many can share one pool.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from streaming.events import MAX_DEPTH

GOOD = {"schema": 1, "event_id": "taobao:1", "user_id": 5, "item_id": 7, "category_id": 9, "label": 1,
        "timestamp": 1_511_658_000, "behavior": "cart", "source": "taobao", "line": 3}


@dataclass(frozen=True)
class Kind:
    """One hostile message: ``expected`` is a reason, or None when the event must be stored (with ``label``)."""

    name: str
    payload: bytes | None
    expected: str | None
    key: bytes | None = b"5"
    headers: tuple = ()
    label: int = 1


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def with_text(event_id: str = "taobao:1", /, **fields) -> bytes:
    """GOOD with id ``event_id`` and fields replaced by raw JSON text (which json.dumps would never write)."""
    members = {k: json.dumps(v) for k, v in (GOOD | {"event_id": event_id}).items()} | fields
    return raw("{" + ",".join(f'"{k}":{v}' for k, v in members.items()) + "}")


REPORTED_NAMES = {"integer of 5,000 digits", "nested 1,500 deep", "lone surrogate in event_id",
                  "300 KB non-UTF-8 key, invalid message"}


def reported(event_id: str = "taobao:1") -> list[Kind]:
    return [
        Kind("integer of 5,000 digits", with_text(event_id, user_id="9" * 5000), "bad_value"),
        Kind("nested 1,500 deep", b"[" * 1500 + b"]" * 1500, "bad_json"),
        Kind("lone surrogate in event_id", with_text(event_id, event_id='"\\ud800"'), "bad_json"),
        Kind("300 KB non-UTF-8 key, invalid message", b"\xff\xfe" * 500, "bad_json", key=b"\xff" * 300_000),
    ]


def kinds(event_id: Callable[[str], str] = lambda name: "taobao:1") -> list[Kind]:
    """The reported kinds and recfl's own; ``event_id(name)`` is the id of each kind's event."""
    own = [
        ("giant negative category", dict(category_id="-" + "9" * 5000), "bad_value"),
        ("giant integer in an unknown field", dict(extra="9" * 5000), None),
        ("nested too deep in an unknown field", dict(extra="[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)), "bad_json"),
        ("nested as deep as allowed", dict(extra="[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)), None),
        ("lone low surrogate escape elsewhere", dict(extra='"x\\udc00"'), "bad_json"),
        ("encoded surrogate bytes in event_id", dict(event_id='"a\ud800"'), "bad_json"),
        ("encoded surrogate bytes in an unknown field", dict(extra='"\udfff"'), "bad_json"),
        ("NaN", dict(timestamp="NaN"), "bad_json"),
        ("Infinity in an unknown field", dict(extra="Infinity"), "bad_json"),
        ("-Infinity", dict(label="-Infinity"), "bad_json"),
        ("full-width digit in a rating", dict(behavior='"rating:\uff14"'), "unknown_behavior"),
        ("Arabic-Indic digit in a rating", dict(behavior='"rating:\u0663"'), "unknown_behavior"),
        ("NUL in event_id", dict(event_id='"a\\u0000b"'), "bad_value"),
        ("newline in event_id", dict(event_id='"a\\nb"'), "bad_value"),
        ("C1 control in event_id", dict(event_id='"a\\u0085"'), "bad_value"),
        ("number beyond float range", dict(timestamp="1e999"), "bad_type"),
        ("event_id of 257 characters", dict(event_id=json.dumps("x" * 257)), "bad_value"),
        ("string schema", dict(schema='"1"'), "schema_version"),
        ("float id", dict(user_id="5.0"), "bad_type"),
        ("exponent id", dict(user_id="5e0"), "bad_type"),
        ("boolean label", dict(label="true"), "bad_type"),
        ("null timestamp", dict(timestamp="null"), "missing_field"),
        ("timestamp a second before 1990", dict(timestamp="631151999"), "bad_timestamp"),
        ("timestamp on 1990-01-01", dict(timestamp="631152000"), None),
        ("negative zero label", dict(label="-0"), None),
    ]
    found = [Kind(name, with_text(event_id(name), **fields), reason, label=0 if name == "negative zero label" else 1)
             for name, fields, reason in own]
    found += [
        Kind("repeated field: the last counts", with_text(event_id("repeated last"), label="0")[:-1] + b',"label":1}',
             None),
        Kind("repeated field, last invalid", with_text(event_id("repeated invalid"))[:-1] + b',"label":7}',
             "bad_value"),
        Kind("repeated field spelled with an escape", with_text(event_id("repeated escaped"))[:-1]
             + b',"user\\u005fid":-6}', "bad_value"),
        Kind("surrogate pair escape", with_text(event_id("pair"), source='"\\ud83d\\ude00"'), None),
        Kind("emoji in event_id", with_text(event_id("emoji"), event_id=json.dumps(event_id("emoji") + "\U0001f600")), None),
        Kind("exactly the size limit", _padded(with_text(event_id("at the limit"), extra='""'), 16384), None),
        Kind("byte-order mark", b"\xef\xbb\xbf" + with_text(event_id("bom")), "bad_json"),
        Kind("UTF-16 text", json.dumps(GOOD | {"event_id": event_id("utf16")}).encode("utf-16"), "bad_json"),
        Kind("empty payload", b"", "bad_json"),
        Kind("tombstone (no value)", None, "bad_json"),
        Kind("whitespace only", b" \n\t ", "bad_json"),
        Kind("trailing garbage", with_text(event_id("garbage")) + b" x", "bad_json"),
        Kind("two objects", with_text(event_id("two")) * 2, "bad_json"),
        Kind("array of events", b"[" + with_text(event_id("array")) + b"]", "bad_json"),
        Kind("oversized", with_text(event_id("oversized"), extra=json.dumps("x" * 20_000)), "oversized"),
        Kind("no key", with_text(event_id("no key")), None, key=None),
        Kind("binary key of 300 KB", with_text(event_id("big key")), None, key=b"\x00\xff" * 150_000),
        Kind("many binary headers", with_text(event_id("headers")), None,
             headers=tuple((f"h{i}", bytes([i % 256]) * 1000) for i in range(50))),
    ]
    return reported(event_id("reported")) + found


def _padded(payload: bytes, size: int) -> bytes:
    """``payload`` (ending in ``"extra":""}``) with the extra string filled up to ``size`` bytes in all."""
    return payload[:-2] + b"x" * (size - len(payload)) + payload[-2:]
