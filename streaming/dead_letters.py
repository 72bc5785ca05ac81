"""Dead-letter messages: why a record was rejected, where it came from, and a bounded excerpt of it.

A dead letter must always fit in a Kafka message (1 MB by default) whatever
the record held: the key and the payload are cut to :data:`KEY_EXCERPT_BYTES`
and :data:`PAYLOAD_EXCERPT_BYTES` before escaping, their original sizes are
recorded, and the detail is one short line, so a dead letter stays under
:data:`MAX_DEAD_LETTER_BYTES`.
"""

from __future__ import annotations

import json

from streaming.events import SCHEMA_VERSION

KEY_EXCERPT_BYTES = 1024
PAYLOAD_EXCERPT_BYTES = 16384
DETAIL_CHARS = 500
# Escaping turns a byte into at most 6 characters ("\u0001"); 4 KiB covers the fixed fields.
MAX_DEAD_LETTER_BYTES = 6 * (KEY_EXCERPT_BYTES + PAYLOAD_EXCERPT_BYTES + DETAIL_CHARS) + 4096


def dead_letter(record, reason: str, detail: str, group: str) -> bytes:
    """The dead-letter message of a rejected record (a kafka-python ``ConsumerRecord``)."""
    key, payload = record.key, record.value or b""
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 3] + "..."
    return json.dumps({
        "schema": SCHEMA_VERSION,
        "reason": reason,
        "detail": detail,
        "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                   "timestamp": record.timestamp, "key": _excerpt(key, KEY_EXCERPT_BYTES),
                   "key_bytes": None if key is None else len(key)},
        "group": group,
        "payload": _excerpt(payload, PAYLOAD_EXCERPT_BYTES),
        "payload_bytes": len(payload),
    }, separators=(",", ":")).encode()


def dead_letter_key(record) -> bytes:
    """Dead letters are keyed by their source: ``topic:partition:offset``."""
    return f"{record.topic}:{record.partition}:{record.offset}".encode()


def _excerpt(data: bytes | None, limit: int) -> str | None:
    """The first ``limit`` bytes as text; bytes that are not UTF-8 become ``\\xNN`` escapes."""
    if data is None:
        return None
    return data[:limit].decode("utf-8", "backslashreplace")
