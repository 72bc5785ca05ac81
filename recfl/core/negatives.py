"""Sampled negatives: items a user never interacted with, for data without (enough) real negatives.

A :class:`NegativeSampler` draws from the **universe**, the items with a
training vocabulary row (so every sampled item has an embedding), either
uniformly or in proportion to the item's training events (``popularity``).
An item the user has any event with (in train or test of the prepared set,
sampled test negatives included) is never drawn: a training negative never
reveals or contradicts a test item, and a test negative is never something
the user did. Every sampled event copies the user and timestamp of the
positive it was drawn for, has label 0, a null behavior, ``sampled = True``
and the content-derived id ``sampled:`` + a 64-bit hash of (user, item, timestamp); the items
drawn for the positives of one (user, timestamp) are distinct, so those ids
are unique and no two sampled events share (user, item, timestamp).

Randomness is counter-based: each draw is a splitmix64 hash of (seed,
stream, user, the draw's position among the user's draws, attempt). A user's
negatives therefore depend only on the seed, the stream (``"test"`` at
prepare time; e.g. ``("cloud", epoch)``, ``("federated", round)``,
``("device", 0)`` for the trainers) and that user's positives, never on the
other users in the call or on the process, and the whole draw is a few
vectorized passes (numpy's ``Generator`` would need one generator per user
for that). Rejected draws (an item the user touched, or a repeat within a
(user, timestamp)) are redrawn with the next attempt; the rare draws still
open after :data:`MAX_ROUNDS` attempts (a user who touched most of the
popularity mass) are drawn exactly from the user's remaining items.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from recfl.core.errors import RecflError
from recfl.core.schema import NO_CATEGORY, SAMPLED, SAMPLED_ID_PREFIX, SPLIT_COLUMNS
from recfl.core.vocab import Vocabulary

SAMPLINGS = ("uniform", "popularity")
MAX_ROUNDS = 32
TEST_STREAM = "test"
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _stream_key(seed: int, stream) -> np.uint64:
    digest = hashlib.blake2b(repr((int(seed), stream)).encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "big"))


def _uniform(base: np.ndarray, attempt: int) -> np.ndarray:
    """A uniform number in [0, 1) per draw (its ``base`` hash) and attempt."""
    return (_mix(base + np.uint64(attempt)) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _in_sorted(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Membership of ``values`` in the sorted array ``sorted_values``."""
    if not len(sorted_values):
        return np.zeros(len(values), bool)
    pos = np.searchsorted(sorted_values, values).clip(max=len(sorted_values) - 1)
    return sorted_values[pos] == values


class NegativeSampler:
    """Draws negatives for positives of a prepared data set (see the module doc for the rule)."""

    def __init__(self, interactions: pd.DataFrame, item_vocab: Vocabulary, items: pd.DataFrame,
                 sampling: str = "uniform", seed: int = 0):
        """``interactions``: every (user_id, item_id) event whose item a user must never get as a negative."""
        if sampling not in SAMPLINGS:
            raise RecflError(f"unknown negative sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        self.sampling, self.seed = sampling, int(seed)
        order = np.argsort(item_vocab.ids, kind="stable")
        self.universe = item_vocab.ids[order]
        self._counts = item_vocab.counts[order].astype(np.float64)
        self._cdf = np.cumsum(self._counts)
        users = interactions["user_id"].to_numpy(np.int64)
        item_pos = self._positions(interactions["item_id"].to_numpy(np.int64))
        self._users = np.unique(users)
        known = item_pos >= 0
        self._taken = np.unique(np.searchsorted(self._users, users[known]) * self.size + item_pos[known])
        self._taken_per_user = np.bincount(self._taken // max(self.size, 1), minlength=len(self._users))
        self._category = np.full(self.size, NO_CATEGORY, np.int64)
        by_id = items.sort_values("item_id", kind="stable")
        ids = by_id["item_id"].to_numpy(np.int64)
        if len(ids) and self.size:
            at = np.searchsorted(ids, self.universe).clip(max=len(ids) - 1)
            hit = np.flatnonzero(ids[at] == self.universe)
            cats = by_id["categories"].to_numpy()
            self._category[hit] = [cats[a][0] if len(cats[a]) else NO_CATEGORY for a in at[hit]]

    @property
    def size(self) -> int:
        """Items in the universe."""
        return len(self.universe)

    def _positions(self, item_ids: np.ndarray) -> np.ndarray:
        """Position of each item in the universe, -1 outside it."""
        if not self.size:
            return np.full(len(item_ids), -1, np.int64)
        pos = np.searchsorted(self.universe, item_ids).clip(max=self.size - 1)
        return np.where(self.universe[pos] == item_ids, pos, -1)

    def _user_index(self, user_ids: np.ndarray) -> np.ndarray:
        """Row of each user among the interactions, -1 for a user without any."""
        if not len(self._users):
            return np.full(len(user_ids), -1, np.int64)
        pos = np.searchsorted(self._users, user_ids).clip(max=len(self._users) - 1)
        return np.where(self._users[pos] == user_ids, pos, -1)

    def available(self, user_ids: np.ndarray) -> np.ndarray:
        """How many universe items each user has no event with (the most negatives one timestamp can get)."""
        index = self._user_index(np.asarray(user_ids, np.int64))
        return self.size - np.where(index >= 0, self._taken_per_user[index.clip(min=0)], 0)

    def sample(self, positives: pd.DataFrame, per_positive: int, stream=TEST_STREAM,
               setting: str = "the number of negatives") -> pd.DataFrame:
        """``per_positive`` sampled negatives for each row of ``positives`` (``user_id``, ``timestamp``).

        Returns events in the prepared split layout (:data:`recfl.core.schema.SPLIT_COLUMNS`),
        one block of ``per_positive`` rows per positive, positives in (user, timestamp) order;
        which block goes with which of a user's positives at one timestamp is immaterial (they
        share every column but the item). A user who cannot get that many distinct items at
        one timestamp is one :class:`RecflError` naming ``setting``.
        """
        users, stamps, group, first = self._groups(positives)
        n = int(per_positive)
        if n <= 0 or not len(users):
            return _events(*(np.zeros(0, np.int64),) * 4)
        self._check(users[first], stamps[first], n * np.bincount(group), n, setting)
        slot_user = np.repeat(users, n)
        starts = np.flatnonzero(np.r_[True, slot_user[1:] != slot_user[:-1]])
        slot_rank = np.arange(len(slot_user)) - np.repeat(starts, np.diff(np.r_[starts, len(slot_user)]))
        base = _mix(_mix(_stream_key(self.seed, stream) ^ slot_user.view(np.uint64)) ^ slot_rank.astype(np.uint64))
        chosen = self._draw(base, self._user_index(slot_user), np.repeat(group, n))
        return _events(slot_user, self.universe[chosen], np.repeat(stamps, n), self._category[chosen])

    def check_capacity(self, positives: pd.DataFrame, per_positive: int, setting: str = "the number of negatives") -> None:
        """The error :meth:`sample` would raise for these positives, without drawing."""
        users, stamps, group, first = self._groups(positives)
        if per_positive > 0 and len(users):
            self._check(users[first], stamps[first], per_positive * np.bincount(group), per_positive, setting)

    @staticmethod
    def _groups(positives: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Users and timestamps sorted, each positive's (user, timestamp) group and the first row of each group."""
        users, stamps = positives["user_id"].to_numpy(np.int64), positives["timestamp"].to_numpy(np.int64)
        order = np.lexsort((stamps, users))
        users, stamps = users[order], stamps[order]
        first = np.r_[True, (users[1:] != users[:-1]) | (stamps[1:] != stamps[:-1])] if len(users) else np.zeros(0, bool)
        return users, stamps, np.cumsum(first) - 1, first

    def _check(self, users: np.ndarray, stamps: np.ndarray, need: np.ndarray, n: int, setting: str) -> None:
        available = self.available(users)
        short = np.flatnonzero(need > available)
        if short.size:
            k = short[0]
            at = f" for its {need[k] // n} positives at timestamp {stamps[k]}" if need[k] > n else ""
            raise RecflError(
                f"{setting} = {n} is more than the {available[k]} items user {users[k]} has not interacted with{at} "
                f"(of the {self.size} items with a training vocabulary row; {len(short)} user-timestamps are short); "
                f"lower {setting}")

    def _pick(self, x: np.ndarray, cdf: np.ndarray) -> np.ndarray:
        """Positions among ``len(cdf)`` items drawn by uniform numbers ``x``: uniformly, or along the popularity ``cdf``."""
        if self.sampling == "uniform":
            return np.minimum((x * len(cdf)).astype(np.int64), len(cdf) - 1)
        return np.searchsorted(cdf, x * cdf[-1], side="right").clip(max=len(cdf) - 1)

    def _draw(self, base: np.ndarray, user_index: np.ndarray, group: np.ndarray) -> np.ndarray:
        """Universe position of every draw: rejection rounds, then the exact remainder."""
        m = self.size
        chosen = np.full(len(base), -1, np.int64)
        # group * m + position of every accepted draw, sorted: the first round's (most draws), then the later ones'
        used, later = np.zeros(0, np.int64), np.zeros(0, np.int64)
        pending = np.arange(len(base))
        for attempt in range(MAX_ROUNDS):
            pick = self._pick(_uniform(base[pending], attempt), self._cdf)
            user = user_index[pending]
            key = group[pending] * m + pick
            ok = ~((user >= 0) & _in_sorted(self._taken, user * m + pick)) & ~_in_sorted(used, key) & ~_in_sorted(later, key)
            fresh, first = np.unique(key[ok], return_index=True)  # first draw of each item in a group wins
            chosen[pending[ok][first]] = pick[ok][first]
            if attempt:
                later = np.union1d(later, fresh)
            else:
                used = fresh
            pending = pending[chosen[pending] < 0]
            if not len(pending):
                return chosen
        for g in np.unique(group[pending]):  # exact: draw among the items the user and the group left
            slots = pending[group[pending] == g]
            user = user_index[slots[0]]
            taken = self._taken[np.searchsorted(self._taken, user * m):np.searchsorted(self._taken, (user + 1) * m)] - user * m \
                if user >= 0 else np.zeros(0, np.int64)
            free = np.setdiff1d(np.arange(m), np.union1d(taken, chosen[group == g]))
            for slot in slots:
                at = self._pick(_uniform(base[slot:slot + 1], MAX_ROUNDS), np.cumsum(self._counts[free]))[0]
                chosen[slot] = free[at]
                free = np.delete(free, at)
        return chosen


def event_ids(users: np.ndarray, items: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """``sampled:`` + 16 hex digits of a 64-bit hash of (user, item, timestamp), vectorized (str formatting of
    a million ids in Python would cost seconds per epoch)."""
    h = _mix(_mix(_mix(users.astype(np.int64).view(np.uint64)) ^ items.astype(np.int64).view(np.uint64))
             ^ stamps.astype(np.int64).view(np.uint64))
    nibbles = (h[:, None] >> (np.uint64(4) * np.arange(15, -1, -1, dtype=np.uint64))) & np.uint64(15)
    text = np.empty((len(h), len(SAMPLED_ID_PREFIX) + 16), np.uint8)
    text[:, : len(SAMPLED_ID_PREFIX)] = np.frombuffer(SAMPLED_ID_PREFIX.encode(), np.uint8)
    text[:, len(SAMPLED_ID_PREFIX):] = np.frombuffer(b"0123456789abcdef", np.uint8)[nibbles.astype(np.intp)]
    return text.view(f"S{text.shape[1]}").ravel().astype(str)


def _events(users: np.ndarray, items: np.ndarray, stamps: np.ndarray, categories: np.ndarray) -> pd.DataFrame:
    """Sampled negatives in the prepared split layout."""
    return pd.DataFrame({
        "event_id": event_ids(users, items, stamps), "user_id": users, "item_id": items, "category_id": categories,
        "label": np.zeros(len(users), np.int8), "timestamp": stamps, "behavior": np.full(len(users), None, object),
        SAMPLED: np.ones(len(users), bool),
    }).astype(SPLIT_COLUMNS)


__all__ = ["MAX_ROUNDS", "SAMPLINGS", "TEST_STREAM", "NegativeSampler"]
