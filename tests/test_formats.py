"""Loaders on small hand-made files, broken variants of them, and the real shared data sets."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import shared

from recfl.core.dataset import describe
from recfl.core.errors import DataFormatError, RecflError
from recfl.core.formats import load
from recfl.core.schema import EVENT_COLUMNS


def _check_canonical(data):
    assert list(data.events.columns) == list(EVENT_COLUMNS)
    assert {str(t) for t in data.events.dtypes} <= {"string", "int64", "int8"}
    assert data.events["event_id"].is_unique
    assert set(data.events["label"].unique()) <= {0, 1}


def test_movielens_100k_fixture(fixtures):
    data = load("movielens-100k", fixtures / "ml100k")
    _check_canonical(data)
    assert len(data.events) == 32 and data.events["user_id"].nunique() == 4
    rating = data.events["behavior"].str.removeprefix("rating:").astype(float)
    assert (data.events["label"] == (rating >= 4)).all()
    # genres are multi-valued and the first one is the event's category
    cats = data.items.set_index("item_id")["categories"]
    first = data.events.drop_duplicates("item_id").set_index("item_id")["category_id"]
    assert all(cats[i][0] == first[i] for i in first.index)
    assert max(len(c) for c in cats) >= 2


def test_movielens_100k_accepts_a_file_inside_the_folder(fixtures):
    assert len(load("movielens-100k", fixtures / "ml100k" / "u.data").events) == 32


def test_movielens_1m_fixture(fixtures):
    data = load("movielens-1m", fixtures / "ml1m")
    _check_canonical(data)
    assert len(data.events) == 18
    cats = data.items.set_index("item_id")["categories"]
    assert list(cats[1]) == [3, 4, 5]  # Animation, Children's, Comedy in u.genre numbering


def test_amazon_fixture_and_gzip(fixtures, tmp_path):
    data = load("amazon-5core", fixtures / "amazon.json")
    _check_canonical(data)
    assert len(data.events) == 15 and (data.events["category_id"] == -1).all()
    packed = tmp_path / "reviews.json.gz"
    packed.write_bytes(gzip.compress((fixtures / "amazon.json").read_bytes()))
    again = load("amazon-5core", packed)
    assert again.events["event_id"].tolist() == data.events["event_id"].tolist()


def test_taobao_fixture_drops_impossible_timestamp(fixtures):
    data = load("taobao", fixtures / "taobao.csv")
    _check_canonical(data)
    assert len(data.events) == 25 and data.dropped == {"timestamp_out_of_range": 1}
    positive = data.events["behavior"].isin(["cart", "fav", "buy"])
    assert (data.events["label"] == positive).all()


def test_event_ids_are_stable_across_reads(fixtures):
    a = load("taobao", fixtures / "taobao.csv").events["event_id"]
    b = load("taobao", fixtures / "taobao.csv").events["event_id"]
    assert a.tolist() == b.tolist()


BROKEN = [
    ("taobao", "t.csv", b"1,2,3,pv,1511658000\n1,2,3,pv\n", 2, "expected 5 fields"),
    ("taobao", "t.csv", b"1,2,3,pv,1511658000\n1,x2,3,pv,1511658001\n", 2, "'item_id' is not a number"),
    ("taobao", "t.csv", b"1,2,3,pv,1511658000\n1,2,3,click,1511658001\n", 2, "unknown behavior 'click'"),
    ("taobao", "t.csv", b"1,2,3,pv,1511658000\n1,2.5,3,pv,1511658001\n", 2, "must be an integer"),
    ("taobao", "t.csv", b"", None, "file is empty"),
    ("amazon-5core", "a.json", b'{"reviewerID": "A", "asin": "B", "overall": 5.0, "unixReviewTime": 1390000000}\n{"reviewerID": "A", "asin"',
     2, "not a JSON object"),
    ("amazon-5core", "a.json", b'{"reviewerID": "A", "asin": "B", "overall": 5.0}\n', 1, "'unixReviewTime' missing"),
    ("amazon-5core", "a.json", b'{"reviewerID": "A", "asin": "B", "overall": 5.0, "unixReviewTime": 1}\n{"x": "\xff\xfe"}\n', 2, "not valid utf-8"),
    ("amazon-5core", "a.json.gz", b"not gzip at all", None, "not a readable gzip file"),
]


@pytest.mark.parametrize("fmt,name,content,line,message", BROKEN)
def test_broken_files_name_file_and_line(tmp_path, fmt, name, content, line, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataFormatError) as err:
        load(fmt, path)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{path}:{line}:" if line else f"{path}:")
    assert err.value.line == line


def test_movielens_broken_rating_line(tmp_path, fixtures):
    (tmp_path / "u.item").write_bytes((fixtures / "ml100k" / "u.item").read_bytes())
    (tmp_path / "u.data").write_text("1\t1\t4\t880000000\n2\t1\tfive\t880000001\n")
    with pytest.raises(DataFormatError, match=r"u.data:2: field 'rating' is not a number"):
        load("movielens-100k", tmp_path)
    (tmp_path / "u.data").write_text("1\t1\t4\t880000000\n2\t1\t9\t880000001\n")
    with pytest.raises(DataFormatError, match=r"u.data:2: rating 9.0 is outside"):
        load("movielens-100k", tmp_path)


def test_movielens_1m_users_file_is_checked(tmp_path, fixtures):
    for name in ("movies.dat", "ratings.dat"):
        (tmp_path / name).write_bytes((fixtures / "ml1m" / name).read_bytes())
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")  # user 3 missing
    line = next(n for n, row in enumerate((tmp_path / "ratings.dat").read_text().splitlines(), 1) if row.startswith("3::"))
    with pytest.raises(DataFormatError, match=rf"ratings.dat:{line}: user 3 is not in users.dat"):
        load("movielens-1m", tmp_path)
    (tmp_path / "users.dat").write_text("1::F::1::10::48067\n2::M::old::16::70072\n")
    with pytest.raises(DataFormatError, match=r"users.dat:2: field 'age' is not a number"):
        load("movielens-1m", tmp_path)


def test_movielens_1m_wrong_separator(tmp_path, fixtures):
    (tmp_path / "movies.dat").write_bytes((fixtures / "ml1m" / "movies.dat").read_bytes())
    (tmp_path / "ratings.dat").write_text("1::1::4::978300100\n1,2,4,978300101\n")
    with pytest.raises(DataFormatError, match=r"ratings.dat:2: expected 4 fields .* separated by '::'"):
        load("movielens-1m", tmp_path)


def test_missing_paths_are_clear(tmp_path):
    with pytest.raises(RecflError, match="no such file"):
        load("taobao", tmp_path / "none.csv")
    with pytest.raises(RecflError, match="no such directory"):
        load("movielens-100k", tmp_path / "none")
    with pytest.raises(RecflError, match="u.data"):
        load("movielens-100k", tmp_path)
    with pytest.raises(RecflError, match="needs --path"):
        load("taobao", None)


@pytest.mark.shared_data
def test_describe_real_movielens_100k():
    stats = describe(load("movielens-100k", shared("ml-100k")))
    assert (stats["rows"], stats["users"], stats["items"]) == (100000, 943, 1682)
    assert stats["positives"] == 55375  # ratings >= 4
    assert (stats["min_timestamp"], stats["max_timestamp"]) == (874724710, 893286638)


@pytest.mark.shared_data
def test_describe_real_amazon():
    stats = describe(load("amazon-5core", shared("amazon-musical-instruments/reviews_Musical_Instruments_5.json")))
    assert (stats["rows"], stats["users"], stats["items"]) == (10261, 1429, 900)
    assert stats["positives"] == 9022


@pytest.mark.shared_data
def test_describe_real_taobao_slice_counts_the_dirty_row():
    stats = describe(load("taobao", shared("taobao-userbehavior/UserBehavior_slice.csv")))
    assert stats["rows"] == 96168 and stats["dropped"] == {"timestamp_out_of_range": 1}
    assert stats["users"] == 58732 and stats["positives"] == 2144 + 5292 + 2959
    head = describe(load("taobao", shared("taobao-userbehavior/UserBehavior_head.csv")))
    assert (head["rows"], head["users"]) == (4321, 43)
    assert np.isfinite(head["min_timestamp"])


def test_sequence_fixture_derives_an_order_preserving_time(fixtures):
    data = load("sequence", fixtures / "sequence.txt")
    _check_canonical(data)
    events = data.events
    assert len(events) == 24 and events["user_id"].nunique() == 5 and (events["label"] == 1).all()
    assert (events["category_id"] == -1).all() and data.items["categories"].map(len).eq(0).all()
    for user, line in zip((1, 3, 5), ([11, 12, 13, 14, 15], [18, 11, 19, 12, 20, 21, 22], [23, 11, 23, 24, 25, 26])):
        mine = events[events["user_id"] == user].sort_values("timestamp")
        assert mine["item_id"].tolist() == line  # time order is the line's order, repeats kept
        assert mine["timestamp"].diff().dropna().eq(1).all()
    assert "position" in data.time_rule


@pytest.mark.parametrize("text,message", [
    ("1 2 3\n2 4 x5\n", "sequence.txt:2: item id 'x5' is not a non-negative integer"),
    ("1 2 3\nu2 4 5\n", "sequence.txt:2: user id 'u2' is not a non-negative integer"),
    ("1 2 3\n2 4 -5\n", "sequence.txt:2: item id '-5'"),
    ("1 2 3\n2 4 5.0\n", "sequence.txt:2: item id '5.0'"),
    ("1 2 3\n2 4 1234567890123456789\n", "sequence.txt:2: item id '1234567890123456789'"),
    ("1 2 3\n\n7\n", "sequence.txt:3: user 7 has no items"),
    ("1 2 3\n2 4\n1 5\n", "sequence.txt:3: user 1 already has a line (line 1)"),
    ("\n \n", "sequence.txt: file is empty"),
])
def test_sequence_malformed_lines_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "sequence.txt"
    path.write_text(text)
    with pytest.raises(DataFormatError) as err:
        load("sequence", path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sequence_non_utf8_names_its_line(tmp_path):
    path = tmp_path / "sequence.txt"
    path.write_bytes(b"1 2 3\n2 4 5\n3 \xff 6\n")
    with pytest.raises(DataFormatError, match=r"sequence.txt:3: not valid utf-8"):
        load("sequence", path)
