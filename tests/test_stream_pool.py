"""One pool: `recfl stream consume --pool POOLDIR` appends to the built pool that matching reads (real broker)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cloud_pool.profiles import pool_frequencies
from recfl.app.cli import main
from recfl.core.schema import EVENT_COLUMNS
from recfl.core.pool import assign_roles, check_pool, load_split, open_store, pool_config, pool_summary, shared_events
from recfl.core.store import PoolStore
from streaming.producer import produce
from streaming.settings import StreamConfig

MATCH = ["--set", "matching.top_m=8", "--set", "matching.min_budget=20"]


def stream(pool, events: pd.DataFrame, bootstrap: str, topic: str, capsys, *extra: str) -> dict:
    """Send ``events`` to ``topic`` and consume them into ``pool`` with the CLI; its report."""
    messages = [(str(e["user_id"]).encode(), {"schema": 1, **{k: v for k, v in e.items() if not pd.isna(v)}, "source": "test"})
                for e in events[list(EVENT_COLUMNS)].astype(object).to_dict("records")]
    produce(messages, StreamConfig(bootstrap_servers=bootstrap), topic)
    assert main(["stream", "consume", "--bootstrap-servers", bootstrap, "--topic", topic, "--group", topic,
                 "--pool", str(pool), "--idle-timeout", "3", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def new_users(first: int, share_fraction: float, salt: str) -> tuple[int, int]:
    """One unused user id whose salted hash makes it a sharing user, and one that makes it a device user."""
    split = assign_roles(np.arange(first, first + 100), share_fraction, salt)
    return int(split.sharing_users[0]), int(split.device_users[0])


def shared_items(pool, items: pd.DataFrame) -> tuple:
    """(category, item) frequencies of the pool's shared events."""
    with open_store(pool) as store:
        events = shared_events(store.read_table(), pool_config(check_pool(pool)))
    return pool_frequencies(events.column("item_id").to_numpy(), items)


def match(pool, data, out, capsys) -> pd.DataFrame:
    assert main(["pool", "match", "--data", str(data.root), "--pool", str(pool), "--out", str(out), *MATCH]) == 0
    return pd.read_parquet(json.loads(capsys.readouterr().out)["path"])


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recfl: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_streamed_events_of_existing_and_new_users_reach_matching(small_pool, kafka_broker, topic, tmp_path, capsys):
    data, pool = small_pool.data, tmp_path / "pool"
    shutil.copytree(small_pool.pool_dir, pool)
    before, roles = pool_summary(pool), pool_config(check_pool(pool))
    with open_store(pool) as store:
        stored_before = store.read()
    train = data.train
    local, tested = train["user_id"].value_counts(), set(data.test["user_id"])
    twin = next(int(u) for u in small_pool.split.device_users if local.get(u, 0) >= 3 and u in tested)
    sharer, device = new_users(int(train["user_id"].max()) + 1, roles.share_fraction, roles.salt)
    old_sharer = int(small_pool.split.sharing_users[0])
    hot = int(train["item_id"].iloc[0])
    late = int(train["timestamp"].max()) + 86_400

    def events(user: int, rows: pd.DataFrame, tag: str) -> pd.DataFrame:
        return rows.assign(user_id=user, event_id=[f"{tag}-{k}" for k in range(len(rows))],
                           timestamp=late + np.arange(len(rows)))

    twin_rows = train[train["user_id"] == twin]  # the device user whose events a new sharing user repeats
    sent = pd.concat([
        events(sharer, twin_rows, "new-sharer"),  # a new sharing user, the twin's profile exactly
        events(device, train.head(5), "new-device"),  # a new device user: stored, never handed out
        events(old_sharer, train.iloc[[0] * 7], "old-sharer"),  # an existing sharing user, one item 7 times
        events(twin, twin_rows.head(2), "old-device"),  # an existing device user's own new events
    ], ignore_index=True)
    report = stream(pool, sent, kafka_broker.bootstrap_servers, topic, capsys)
    assert (report["written"], report["dead_lettered"]) == (len(sent), 0)
    assert not (pool / "index.sqlite").exists()  # into the pool's store, not a bare store beside it

    # the pool's content: every event once, the new users with the roles their hashes give
    with open_store(pool) as store:
        stored = store.read()
    assert len(stored) == len(stored_before) + len(sent) and stored["event_id"].is_unique
    split = load_split(pool)
    assert sharer in split.sharing_users and device in split.device_users
    assert np.array_equal(np.setdiff1d(split.sharing_users, small_pool.split.sharing_users), [sharer])
    assert np.array_equal(np.setdiff1d(split.device_users, small_pool.split.device_users), [device])
    after = pool_summary(pool)
    assert after["pool_events"] == before["pool_events"] + len(sent)
    assert after["shared_events"] == before["shared_events"] + len(twin_rows) + 7
    assert (after["sharing_users"], after["device_users"]) == (before["sharing_users"] + 1, before["device_users"] + 1)

    # the pool's frequencies grew by the shared events only
    (cats_before, items_before), (cats_after, items_after) = shared_items(small_pool.pool_dir, data.items), shared_items(pool, data.items)
    grown = dict(zip(items_after.ids, items_after.counts))
    old = dict(zip(items_before.ids, items_before.counts))
    expected = pd.concat([twin_rows["item_id"], pd.Series([hot] * 7)]).value_counts()
    assert {item: grown[item] - old.get(item, 0) for item in grown if grown[item] != old.get(item, 0)} == expected.to_dict()
    assert cats_after.counts.sum() > cats_before.counts.sum()

    # matching sees them: the twin's best match is the new sharing user; unshared events never are candidates
    candidates = match(pool, data, tmp_path / "cand", capsys)
    mine = candidates[candidates["target_user_id"] == twin]
    assert mine["user_id"].iat[0] == sharer and mine["similarity"].iat[0] == pytest.approx(1.0)
    assert candidates["event_id"].str.startswith("new-sharer").any()
    assert candidates["user_id"].isin(split.sharing_users).all()
    assert not candidates["event_id"].str.startswith(("new-device", "old-device")).any()

    # the guard stays: a test event streamed in (of a device user, never shared) stops matching
    leaked = data.test[data.test["user_id"] == twin].head(1)
    assert stream(pool, leaked, kafka_broker.bootstrap_servers, f"{topic}-leak", capsys)["written"] == 1
    err = one_line_error(capsys, ["pool", "match", "--data", str(data.root), "--pool", str(pool),
                                  "--out", str(tmp_path / "c2")])
    assert f"holds 1 test event(s) of {data.root} (e.g. {leaked['event_id'].iat[0]})" in err


def test_a_new_path_becomes_a_pool_that_the_other_commands_accept(small_pool, kafka_broker, topic, tmp_path, capsys):
    data, pool = small_pool.data, tmp_path / "deploy" / "pool"
    first = int(data.train["user_id"].max()) + 1
    sent = data.train.head(60).assign(user_id=first + np.arange(60) % 12,
                                      event_id=[f"live-{k}" for k in range(60)])
    report = stream(pool, sent, kafka_broker.bootstrap_servers, topic, capsys, "--set", "pool.share_fraction=0.3")
    assert report["written"] == 60
    summary = pool_summary(pool)
    assert (summary["share_fraction"], summary["data"], summary["pool_events"]) == (0.3, None, 60)
    expected = assign_roles(first + np.arange(12), 0.3, "recfl-pool")
    split = load_split(pool)
    assert np.array_equal(split.sharing_users, expected.sharing_users)
    assert np.array_equal(split.device_users, expected.device_users)
    candidates = match(pool, data, tmp_path / "cand", capsys)  # accepted; its device users have no data-set events
    assert candidates.empty
    # a second stream appends to it and keeps its roles, whatever [pool] says now
    more = data.train.iloc[60:70].assign(user_id=first, event_id=[f"more-{k}" for k in range(10)])
    assert stream(pool, more, kafka_broker.bootstrap_servers, f"{topic}-more", capsys)["written"] == 10
    assert pool_summary(pool)["share_fraction"] == 0.3 and pool_summary(pool)["pool_events"] == 70


def test_a_folder_that_is_not_a_pool_is_refused_with_one_line(kafka_broker, topic, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("not a pool\n")
    bare = tmp_path / "bare"
    PoolStore(bare).close()  # what `stream consume --pool` used to write
    consume = ["stream", "consume", "--bootstrap-servers", kafka_broker.bootstrap_servers, "--topic", topic,
               "--idle-timeout", "1", "--pool"]
    assert f"{notes}: not a cloud pool (no pool.json)" in one_line_error(capsys, [*consume, str(notes)])
    assert f"{bare}: a bare event store, not a pool" in one_line_error(capsys, [*consume, str(bare)])
    assert sorted(p.name for p in notes.iterdir()) == ["todo.txt"]  # nothing written into someone's folder


def _drop_index(pool):
    (pool / "store" / "index.sqlite").unlink()


def _garble_the_index(pool):
    (pool / "store" / "index.sqlite").write_bytes(b"not sqlite " * 100)


def _copy_a_data_file(pool):
    first = next((pool / "store" / "data").glob("day=*/*.parquet"))
    shutil.copy(first, first.with_name("copied.parquet"))


def _delete_a_data_file(pool):
    next((pool / "store" / "data").glob("day=*/*.parquet")).unlink()


def _raise_the_recorded_count(pool):
    manifest = json.loads((pool / "pool.json").read_text())
    (pool / "pool.json").write_text(json.dumps({**manifest, "pool_events": manifest["pool_events"] + 1}))


def _flip_a_role(pool):
    users = pd.read_parquet(pool / "users.parquet")
    users.loc[0, "role"] = "sharing" if users.loc[0, "role"] == "device" else "device"
    users.to_parquet(pool / "users.parquet", index=False)


@pytest.mark.parametrize("edit,message", [
    (_drop_index, "edited by hand (store/index.sqlite is missing)"),
    (_garble_the_index, "store/index.sqlite: not a pool index (file is not a database)"),
    (_copy_a_data_file, "edited by hand (1 data file(s) not in its index, e.g. data/day="),
    (_delete_a_data_file, "edited by hand (1 data file(s) listed in its index are missing, e.g. data/day="),
    (_raise_the_recorded_count, "edited by hand (it holds"),
    (_flip_a_role, "users.parquet: roles disagree with pool.json's share fraction and salt"),
])
def test_a_pool_edited_by_hand_is_refused_with_one_line(small_pool, kafka_broker, topic, tmp_path, capsys, edit,
                                                          message):
    pool = tmp_path / "pool"
    shutil.copytree(small_pool.pool_dir, pool)
    edit(pool)
    consume = ["stream", "consume", "--bootstrap-servers", kafka_broker.bootstrap_servers, "--topic", topic,
               "--idle-timeout", "1", "--pool", str(pool)]
    assert message in one_line_error(capsys, consume)
    match_args = ["pool", "match", "--data", str(small_pool.data.root), "--pool", str(pool), "--out", str(tmp_path / "c")]
    assert message in one_line_error(capsys, match_args)
