"""Behaviour events on the wire: JSON schema v1, and validation with one reason per failure.

A v1 event is one UTF-8 JSON object per Kafka message, keyed by user id::

    {"schema": 1, "event_id": "taobao:9f2c...", "user_id": 543462, "item_id": 1715,
     "category_id": 1464116, "label": 0, "timestamp": 1511658000, "behavior": "pv"}

Required: ``schema`` (= 1), ``event_id`` (non-empty string; the pool dedupes on
it), ``user_id`` and ``item_id`` (integers >= 0), ``category_id`` (integer >= -1,
-1 = none), ``label`` (0 or 1), ``timestamp`` (integer unix seconds, 1990..2100 as
in :mod:`recfl.core.schema`). Optional: ``behavior`` (a known behaviour). Other keys
(the producer adds ``source`` and ``line``) are provenance and are ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from recfl.core.schema import MAX_TIMESTAMP, MIN_TIMESTAMP, NO_CATEGORY

SCHEMA_VERSION = 1
MAX_EVENT_ID_CHARS = 256
_INT64_LIMIT = 2**63
_RATING = re.compile(r"rating:(\d+(?:\.\d+)?)")
# Reason codes of a rejected event, in the order they are checked.
REASONS = ("oversized", "bad_json", "schema_version", "missing_field", "bad_type", "bad_value", "bad_timestamp",
           "unknown_behavior")


class InvalidEvent(Exception):
    """Why one message is not a valid event: a reason code from :data:`REASONS` and a one-line detail."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class EventRules:
    """What a valid event may look like beyond the schema: size limit and behaviour vocabulary.

    ``behaviors`` are the accepted behaviour strings; ``rating:<r>`` with
    0.5 <= r <= 5 (MovieLens, Amazon) is always accepted.
    """

    max_bytes: int
    behaviors: frozenset[str]

    def known_behavior(self, behavior: str) -> bool:
        if behavior in self.behaviors:
            return True
        match = _RATING.fullmatch(behavior)
        return match is not None and 0.5 <= float(match.group(1)) <= 5


def encode(event: dict) -> bytes:
    """Compact UTF-8 JSON of one event."""
    return json.dumps(event, separators=(",", ":")).encode("utf-8")


def decode(payload: bytes | None, rules: EventRules) -> dict:
    """The canonical fields of a valid event (``event_id`` ... ``behavior``), or :class:`InvalidEvent`."""
    if payload is None:
        raise InvalidEvent("bad_json", "empty message (no value)")
    if len(payload) > rules.max_bytes:
        raise InvalidEvent("oversized", f"payload of {len(payload)} bytes exceeds the {rules.max_bytes}-byte limit")
    try:
        event = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidEvent("bad_json", f"not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InvalidEvent("bad_json", f"not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(event, dict):
        raise InvalidEvent("bad_json", f"not a JSON object but {type(event).__name__}")
    version = event.get("schema")
    if version != SCHEMA_VERSION or not _is_int(version):
        raise InvalidEvent("schema_version", f"schema {version!r} is not the supported version {SCHEMA_VERSION}")
    missing = [k for k in ("event_id", "user_id", "item_id", "category_id", "label", "timestamp") if event.get(k) is None]
    if missing:
        raise InvalidEvent("missing_field", f"missing field(s) {', '.join(missing)}")
    event_id = event["event_id"]
    if not isinstance(event_id, str):
        raise InvalidEvent("bad_type", f"event_id must be a string, got {event_id!r}")
    for key in ("user_id", "item_id", "category_id", "label", "timestamp"):
        if not _is_int(event[key]):
            raise InvalidEvent("bad_type", f"{key} must be an integer, got {event[key]!r}")
    behavior = event.get("behavior")
    if behavior is not None and not isinstance(behavior, str):
        raise InvalidEvent("bad_type", f"behavior must be a string, got {behavior!r}")
    if not event_id or len(event_id) > MAX_EVENT_ID_CHARS:
        raise InvalidEvent("bad_value", f"event_id must have 1..{MAX_EVENT_ID_CHARS} characters, got {len(event_id)}")
    for key, low in (("user_id", 0), ("item_id", 0), ("category_id", NO_CATEGORY)):
        if not low <= event[key] < _INT64_LIMIT:
            raise InvalidEvent("bad_value", f"{key} {event[key]} is outside {low}..2^63-1")
    if event["label"] not in (0, 1):
        raise InvalidEvent("bad_value", f"label must be 0 or 1, got {event['label']}")
    if not MIN_TIMESTAMP <= event["timestamp"] <= MAX_TIMESTAMP:
        raise InvalidEvent("bad_timestamp", f"timestamp {event['timestamp']} is outside 1990..2100")
    if behavior is not None and not rules.known_behavior(behavior):
        raise InvalidEvent("unknown_behavior", f"unknown behavior {behavior!r}")
    return {
        "event_id": event_id, "user_id": event["user_id"], "item_id": event["item_id"],
        "category_id": event["category_id"], "label": event["label"], "timestamp": event["timestamp"],
        "behavior": behavior,
    }


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
