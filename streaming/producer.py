"""Replay a data file as behaviour events: every row becomes one message, keyed by user id.

The strict loaders of :mod:`recfl.core.formats` refuse malformed files and drop
impossible rows; a replay must instead deliver the dirty rows too, so that
the consumer's validation and dead-letter path see them. Rows are therefore
read leniently here: a field that does not parse is sent as its original
text, and a line without the right number of fields (or not a JSON object)
is sent as ``{"raw": line}``. Rows the loader accepts become exactly the
loader's events (same ``event_id``, label, category), so a replay and a batch
load agree; the tests hold the two side by side.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from kafka import KafkaProducer
from kafka.errors import KafkaError
from tqdm import tqdm

from recfl.core.errors import RecflError
from recfl.core.formats import SyntheticSpec, load, taobao
from recfl.core.formats.base import require_file
from recfl.core.formats.movielens import genres_1m, genres_100k
from recfl.core.schema import NO_CATEGORY, assign_event_ids, stable_id
from streaming.events import SCHEMA_VERSION, encode
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic

Message = tuple[bytes | None, dict]  # (key, event)
Row = dict | None  # parsed fields of one line, None when the line has the wrong shape
_EVENT_FIELDS = ("user_id", "item_id", "category_id", "label", "timestamp", "behavior")


@dataclass(frozen=True)
class ProduceReport:
    """What a replay sent."""

    topic: str
    sent: int
    unparsed_rows: int
    partitions: int
    elapsed_s: float

    @property
    def events_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _number(text: str) -> int | str:
    """The integer a numeric field holds (``"12"``, ``"12.0"``), else the text itself."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if math.isfinite(value) and value == math.floor(value) else text


def _rating(value) -> tuple[int, str]:
    """Label and behaviour of a rating, as the MovieLens/Amazon loaders define them (label = rating >= 4)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return 0, f"rating:{value.strip()}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0, f"rating:{value}"
    return int(value >= 4), f"rating:{float(value):g}"


def _taobao_row(text: str, _context) -> Row:
    fields = text.split(",")
    if len(fields) != 5:
        return None
    behavior = fields[3].strip()
    return {
        "user_id": _number(fields[0]), "item_id": _number(fields[1]), "category_id": _number(fields[2]),
        "label": int(behavior in taobao.POSITIVE_BEHAVIORS), "timestamp": _number(fields[4]), "behavior": behavior,
    }


def _movielens_row(sep: str) -> Callable[[str, dict], Row]:
    def row(text: str, genres_of: dict) -> Row:
        fields = text.split(sep)
        if len(fields) != 4:
            return None
        item = _number(fields[1])
        genres = genres_of.get(item) if isinstance(item, int) else None
        label, behavior = _rating(fields[2])
        return {
            "user_id": _number(fields[0]), "item_id": item,
            "category_id": int(genres[0]) if genres is not None and genres.size else NO_CATEGORY,
            "label": label, "timestamp": _number(fields[3]), "behavior": behavior,
        }
    return row


def _amazon_row(text: str, _context) -> Row:
    try:
        review = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(review, dict):
        return None
    label, behavior = _rating(review.get("overall"))
    user, item = review.get("reviewerID"), review.get("asin")
    return {
        "user_id": stable_id(user) if isinstance(user, str) else user,
        "item_id": stable_id(item) if isinstance(item, str) else item,
        "category_id": NO_CATEGORY, "label": label, "timestamp": review.get("unixReviewTime"), "behavior": behavior,
    }


@dataclass(frozen=True)
class _RowFormat:
    """How to read one format's rows: id source name, data file, per-line parser and its context (genres)."""

    source: str
    data_file: Callable[[Path], Path]
    parse: Callable[[str, object], Row]
    context: Callable[[Path], object] = lambda root: None
    encoding: str = "utf-8"


def _in_folder(name: str, what: str) -> Callable[[Path], Path]:
    return lambda path: require_file((path.parent if path.is_file() else path) / name, what)


ROW_FORMATS: dict[str, _RowFormat] = {
    "taobao": _RowFormat("taobao", lambda p: require_file(p, "Taobao UserBehavior CSV"), _taobao_row),
    "movielens-100k": _RowFormat("movielens-100k", _in_folder("u.data", "MovieLens 100K ratings u.data"),
                                 _movielens_row("\t"), genres_100k),
    "movielens-1m": _RowFormat("movielens-1m", _in_folder("ratings.dat", "MovieLens 1M ratings.dat"),
                               _movielens_row("::"), genres_1m, encoding="latin-1"),
    "amazon-5core": _RowFormat("amazon", lambda p: require_file(p, "Amazon 5-core reviews, JSON lines"), _amazon_row),
}
REPLAY_FORMATS = (*ROW_FORMATS, "synthetic")


def replay_messages(fmt: str, path: str | Path | None, synthetic: SyntheticSpec | None = None) -> list[Message]:
    """Every row of the file as a (key, event) message, in file order."""
    if fmt == "synthetic":
        events = load("synthetic", None, synthetic).events
        return [(str(e["user_id"]).encode(), _event(e, "synthetic", None)) for e in _records(events)]
    if fmt not in ROW_FORMATS:
        raise RecflError(f"unknown format {fmt!r}; choose one of {', '.join(REPLAY_FORMATS)}")
    if path is None:
        raise RecflError(f"format {fmt!r} needs --path")
    spec = ROW_FORMATS[fmt]
    data_file = spec.data_file(Path(path))
    context = spec.context(data_file.parent)
    lines = [(n, text) for n, text in _lines(data_file, spec.encoding)]
    rows = [spec.parse(text, context) for _, text in lines]
    parsed = [i for i, row in enumerate(rows) if row is not None]
    table = pd.DataFrame([rows[i] for i in parsed], columns=list(_EVENT_FIELDS), dtype=object)
    ids = iter(assign_event_ids(table, spec.source)["event_id"].tolist()) if parsed else iter(())
    messages = []
    for (n, text), row in zip(lines, rows):
        if row is None:
            messages.append((None, {"schema": SCHEMA_VERSION, "source": fmt, "line": n, "raw": text}))
        else:
            row["event_id"] = next(ids)
            key = None if row["user_id"] is None else str(row["user_id"]).encode()
            messages.append((key, _event(row, fmt, n)))
    return messages


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines (of a ``.gz`` file too) with 1-based numbers; undecodable bytes become escapes, never an error."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise RecflError(f"{path}: not a readable gzip file ({exc})") from None
    for n, raw in enumerate(data.split(b"\n"), start=1):
        text = raw.rstrip(b"\r").decode(encoding, "backslashreplace")
        if text.strip():
            yield n, text


def _records(events: pd.DataFrame) -> Iterator[dict]:
    columns = ["event_id", *_EVENT_FIELDS]
    for values in zip(*(events[c].tolist() for c in columns)):
        yield dict(zip(columns, values))


def _event(row: dict, source: str, line: int | None) -> dict:
    event = {"schema": SCHEMA_VERSION, "event_id": row["event_id"]}
    event.update((k, row[k]) for k in _EVENT_FIELDS if row.get(k) is not None)
    event["source"] = source
    if line is not None:
        event["line"] = line
    return event


def produce(messages: Sequence[Message], settings: StreamConfig, topic: str, rate: float | None = None) -> ProduceReport:
    """Send the messages to ``topic`` (created with ``settings.partitions`` if missing), at most ``rate`` per second.

    Returns once every message is acknowledged by the broker (acks=all); a
    message the broker refused raises :class:`RecflError`.
    """
    if rate is not None and rate <= 0:
        raise RecflError(f"--rate must be positive, got {rate:g}")
    try:
        partitions = ensure_topic(settings, topic, settings.partitions)
        producer = KafkaProducer(**settings.client_kwargs(), acks="all", linger_ms=10, batch_size=256 * 1024)
    except KafkaError as exc:
        raise RecflError(f"cannot reach the broker at {settings.bootstrap_servers} ({exc})") from None
    failures: list[Exception] = []
    sent = unparsed = 0
    start = time.monotonic()
    try:
        for key, event in tqdm(messages, unit="ev", desc=f"produce {topic}", mininterval=2, leave=False):
            if rate is not None:
                ahead = start + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            producer.send(topic, key=key, value=encode(event)).add_errback(failures.append)
            sent += 1
            unparsed += "raw" in event
        producer.flush()
    except KafkaError as exc:
        raise RecflError(f"producing to {topic} at {settings.bootstrap_servers} failed: {exc}") from None
    finally:
        producer.close()
    if failures:
        raise RecflError(f"{len(failures)} of {sent} messages were refused by the broker (first: {failures[0]})")
    return ProduceReport(topic, sent, unparsed, partitions, time.monotonic() - start)
