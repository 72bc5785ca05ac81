"""Bucketing: stable across runs and platforms, changed by the salt, balanced; SRM fires on a skewed assignment."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
from scipy import stats

from ab_testing.bucketing import allocation, assign, buckets_of
from ab_testing.evaluate import AbConfig, evaluate
from ab_testing.predictions import from_frame
from tools.ab_simulate import SimArm, simulate

USERS = np.array([0, 1, 2, 12345, 2**40, 987654321])


def test_bucket_is_the_documented_salted_blake2b_hash():
    # the contract, recomputed independently: floor(blake2b("salt:id") top 53 bits / 2**53 * buckets)
    expected = [(int.from_bytes(hashlib.blake2b(f"exp-7:{u}".encode(), digest_size=8).digest(), "big") >> 11) * 100 >> 53
                for u in USERS.tolist()]
    assert buckets_of(USERS, "exp-7", 100).tolist() == expected


def test_buckets_are_stable_across_processes_and_hash_seeds():
    code = ("import numpy as np; from ab_testing.bucketing import buckets_of; "
            f"print(buckets_of(np.array({USERS.tolist()}), 'exp-7', 100).tolist())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("0", "123")}
    assert runs == {f"{buckets_of(USERS, 'exp-7', 100).tolist()}\n"}


def test_a_new_salt_reshuffles_users_and_buckets_are_balanced():
    users = np.arange(100_000)
    a, b = buckets_of(users, "exp-1", 100), buckets_of(users, "exp-2", 100)
    assert 0.98 < (a != b).mean() < 1.0  # independent assignments agree 1% of the time
    assert stats.chisquare(np.bincount(a, minlength=100)).pvalue > 0.001
    assert a.min() == 0 and a.max() == 99


def test_allocation_splits_buckets_into_contiguous_near_equal_ranges():
    assert allocation(("c", "t1", "t2"), 100) == {"c": (0, 33), "t1": (33, 66), "t2": (66, 100)}
    assert allocation(("c", "t"), 2) == {"c": (0, 1), "t": (1, 2)}


def test_each_user_is_evaluated_in_exactly_one_arm():
    pred = from_frame(simulate(3000, [SimArm("c", 1.0), SimArm("t", 0.8)], seed=1))
    assignment = assign(pred, ("c", "t"), "s", 100, 0.001)
    users_c, users_t = (set(assignment.frames[a]["user_id"]) for a in ("c", "t"))
    assert not users_c & users_t and len(users_c | users_t) == 3000
    assert not assignment.srm.mismatch and assignment.missing == {"c": 0, "t": 0}


def test_srm_fires_when_an_arm_lacks_predictions_for_some_of_its_users():
    frame = simulate(4000, [SimArm("c", 1.0), SimArm("t", 0.8)], seed=2)
    balanced = evaluate(from_frame(frame), "c", AbConfig(design="bucketed", bootstrap=50, metrics=("auc",)))
    assert not balanced.assignment.srm.mismatch and not balanced.warnings
    # skewed: the treatment failed to score 15% of the users (e.g. the ones with the most events)
    heavy = frame.groupby("user_id").size().sort_values().index[-600:]
    skewed = frame[~((frame["arm"] == "t") & frame["user_id"].isin(heavy))]
    result = evaluate(from_frame(skewed), "c", AbConfig(design="bucketed", bootstrap=50, metrics=("auc",)))
    srm = result.assignment.srm
    assert srm.mismatch and srm.p_value < srm.alpha and result.assignment.missing["c"] == 0
    assert result.assignment.missing["t"] == result.assignment.assigned["t"] - srm.observed["t"] > 250
    assert result.warnings[0].startswith("SAMPLE RATIO MISMATCH")
