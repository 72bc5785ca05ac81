"""The replay reads every row, dirty ones included; the rows a loader accepts become exactly the loader's events."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest
from conftest import shared

from recfl.core.errors import RecflError
from recfl.core.formats import SyntheticSpec, load
from recfl.core.schema import EVENT_COLUMNS, conform, stable_id
from streaming.events import InvalidEvent, decode, encode
from streaming.producer import replay_messages
from streaming.settings import StreamConfig

RULES = StreamConfig().rules


def split(messages):
    """(valid events as a canonical table, {reason: [events]}) as the consumer would see them."""
    valid, invalid = [], {}
    for _key, event in messages:
        try:
            valid.append(decode(encode(event), RULES).fields())
        except InvalidEvent as err:
            invalid.setdefault(err.code, []).append(event)
    return conform(pd.DataFrame(valid, columns=list(EVENT_COLUMNS))), invalid


def same_events(a: pd.DataFrame, b: pd.DataFrame) -> None:
    order = lambda t: t.sort_values("event_id").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(order(a), order(b))


@pytest.mark.parametrize("fmt,path,lines", [
    ("taobao", "taobao.csv", 26), ("movielens-100k", "ml100k", 32), ("movielens-1m", "ml1m", 18),
    ("amazon-5core", "amazon.json", 15),
])
def test_replay_matches_the_loader_row_for_row(fixtures, fmt, path, lines):
    messages = replay_messages(fmt, fixtures / path)
    assert len(messages) == lines  # one message per non-blank line
    valid, invalid = split(messages)
    same_events(valid, load(fmt, fixtures / path).events)
    assert all(key == str(event["user_id"]).encode() for key, event in messages)
    assert sum(map(len, invalid.values())) == lines - len(valid)


def test_dirty_rows_become_events_that_fail_validation(tmp_path):
    rows = ["1,109,8,cart,1511658060", "9,101,7,pv,15", "x7,101,7,pv,1511658061", "2,101,7,like,1511658062",
            "3,101,7,pv", "4,101,7,pv,1511658063,extra", "5,101.0,7,buy,1511658064", "", "6,101,7,pv,1.5e9"]
    path = tmp_path / "dirty.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(RecflError):
        load("taobao", path)  # the strict loader refuses this file ...
    messages = replay_messages("taobao", path)  # ... the replay sends every row
    assert len(messages) == 8 and [e["line"] for _, e in messages] == [1, 2, 3, 4, 5, 6, 7, 9]
    valid, invalid = split(messages)
    assert sorted(valid["user_id"]) == [1, 5, 6]  # "101.0" and "1.5e9" are integral numbers, as for the loader
    assert {code: [e["line"] for e in events] for code, events in invalid.items()} == {
        "bad_timestamp": [2], "bad_type": [3], "unknown_behavior": [4], "missing_field": [5, 6]}
    assert messages[4] == (None, {"schema": 1, "source": "taobao", "line": 5, "raw": "3,101,7,pv"})


def test_amazon_lines_that_are_not_reviews(tmp_path):
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(gzip.compress('{"reviewerID": "A", "asin": "B", "overall": 5.0, "unixReviewTime": 1390000000}\n'
                    '{"reviewerID": "A", "asin": "C", "overall": "great", "unixReviewTime": 1390000001}\n'
                    '{"reviewerID": "A", "asin": "D", "overall": 2}\n[1]\nnot json\n'.encode()))
    messages = replay_messages("amazon-5core", path)
    valid, invalid = split(messages)
    assert len(valid) == 1 and valid["label"].iat[0] == 1
    assert {code: len(events) for code, events in invalid.items()} == {
        "unknown_behavior": 1, "missing_field": 3}
    assert [key for key, _ in messages] == [str(stable_id("A")).encode()] * 3 + [None, None]


def test_synthetic_replay_is_the_generated_table():
    spec = SyntheticSpec(users=30, items=100, seed=4)
    messages = replay_messages("synthetic", None, spec)
    valid, invalid = split(messages)
    assert not invalid
    same_events(valid, load("synthetic", None, spec).events)


def test_unknown_format_and_missing_path():
    with pytest.raises(RecflError, match="unknown format 'csv'"):
        replay_messages("csv", "x")
    with pytest.raises(RecflError, match="needs --path"):
        replay_messages("taobao", None)


@pytest.mark.shared_data
def test_taobao_slice_replay_keeps_the_dirty_row():
    path = shared("taobao-userbehavior/UserBehavior_slice.csv")
    messages = replay_messages("taobao", path)
    valid, invalid = split(messages)
    assert len(messages) == 96_169 and len(valid) == 96_168
    assert [(e["line"], e["timestamp"]) for e in invalid["bad_timestamp"]] == [(96_169, 15)]
    same_events(valid, load("taobao", path).events)
