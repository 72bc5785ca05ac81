"""Seed-pooled comparison: lifts averaged over runs, intervals from a bootstrap over runs and users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ab_testing.evaluate import AbConfig, evaluate, evaluate_seeds
from ab_testing.predictions import from_frame
from ab_testing.stats import pool_runs, resample_counts
from recfl.core.errors import RecflError
from tools.ab_simulate import SimArm, simulate


def _runs(frame: pd.DataFrame, pairs: dict[str, tuple[str, str]]) -> dict:
    """Runs ``label -> predictions`` of arms ``cloud`` and ``coda`` taken from the simulated arms ``pairs[label]``."""
    out = {}
    for label, (control, treatment) in pairs.items():
        part = frame[frame["arm"].isin([control, treatment])].copy()
        part["arm"] = part["arm"].map({control: "cloud", treatment: "coda"})
        out[label] = from_frame(part, label)
    return out


def _comparison(result, metric: str):
    return next(c for c in result.comparisons if c.segment == "all" and c.metric == metric)


def _pair_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC by comparing every positive with every negative (ties half): the textbook definition."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def _reference(runs: dict, metric: str, resamples: int, seed: int):
    """The pooled lift per resample by brute force: rebuild each drawn run's table with every drawn user's events
    copied once per draw (each copy a user of its own), compute the metric on it, average over the drawn runs."""
    frames = {label: pred.frame for label, pred in runs.items()}
    users = np.unique(next(iter(frames.values()))["user_id"])
    user_draws = resample_counts(np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]), len(users), resamples)
    run_draws = resample_counts(np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1]), len(runs), resamples)

    def value(frame: pd.DataFrame, arm: str, draw: np.ndarray) -> float:
        rows = frame[frame["arm"] == arm]
        copies = [rows[rows["user_id"] == u].assign(copy=f"{u}:{c}") for u, n in zip(users, draw) for c in range(n)]
        table = pd.concat(copies)
        if metric == "auc":
            return _pair_auc(table["label"].to_numpy(), table["score"].to_numpy())
        per_user = [(len(g), _pair_auc(g["label"].to_numpy(), g["score"].to_numpy())) for _, g in table.groupby("copy")]
        counted = [(n, a) for n, a in per_user if np.isfinite(a)]
        return sum(n * a for n, a in counted) / sum(n for n, _ in counted)

    lifts = []
    for r in range(resamples):
        per_run = [value(f, "coda", user_draws[r]) - value(f, "cloud", user_draws[r]) for f in frames.values()]
        lifts.append(sum(n * d for n, d in zip(run_draws[r], per_run)) / len(runs))
    ones = np.ones(len(users), np.int64)
    point = np.mean([value(f, "coda", ones) - value(f, "cloud", ones) for f in frames.values()])
    return point, np.percentile(lifts, [2.5, 97.5])


@pytest.mark.parametrize("metric", ["gauc", "auc"])
def test_pooled_interval_equals_a_brute_force_two_level_bootstrap(metric):
    frame = simulate(14, [SimArm(f"c{s}", 1.0) for s in range(3)] + [SimArm(f"t{s}", 0.4 + 0.3 * s) for s in range(3)],
                     events_per_user=7, seed=3)
    runs = _runs(frame, {f"seed-{s}": (f"c{s}", f"t{s}") for s in range(3)})
    result = evaluate_seeds(runs, "cloud", AbConfig(metrics=(metric,), bootstrap=60, seed=11))
    point, ci = _reference(runs, metric, 60, 11)
    c = _comparison(result, metric)
    assert c.lift.abs_lift == pytest.approx(point, abs=1e-12)
    assert c.lift.abs_ci == pytest.approx(tuple(ci), abs=1e-12)
    assert result.seeds == ("seed-0", "seed-1", "seed-2")
    own = [x for x in result.seed_lifts if x.segment == "all" and x.metric == metric]
    assert np.mean([x.abs_lift for x in own]) == pytest.approx(point, abs=1e-12)


def test_disagreeing_seeds_widen_the_interval_beyond_any_single_seed():
    """Seeds that disagree (the treatment helps a lot in one, not at all in another) must widen the pooled interval;
    an interval over users alone would shrink with the number of runs and claim a precision the seeds do not have."""
    arms = [SimArm(f"c{s}", 1.0) for s in range(3)] + [SimArm("t0", 0.3), SimArm("t1", 1.0), SimArm("t2", 0.6)]
    frame = simulate(400, arms, events_per_user=12, seed=5)
    runs = _runs(frame, {f"seed-{s}": (f"c{s}", f"t{s}") for s in range(3)})
    config = AbConfig(metrics=("gauc", "auc"), bootstrap=400, seed=2)
    pooled = evaluate_seeds(runs, "cloud", config)
    for metric in ("gauc", "auc"):
        c = _comparison(pooled, metric)
        own = [x for x in pooled.seed_lifts if x.segment == "all" and x.metric == metric]
        assert len({np.sign(x.abs_lift - c.lift.abs_lift) for x in own}) == 2  # seeds on both sides of the mean
        widest_single = max(x.abs_ci[1] - x.abs_ci[0] for x in own)
        assert c.lift.abs_ci[1] - c.lift.abs_ci[0] > 1.2 * widest_single
        assert c.lift.abs_lift == pytest.approx(np.mean([x.abs_lift for x in own]))
        single = _comparison(evaluate(runs["seed-0"], "cloud", config), metric)  # the unpooled path agrees on one run
        assert (own[0].abs_lift, *own[0].abs_ci) == pytest.approx((single.lift.abs_lift, *single.lift.abs_ci))


def test_identical_runs_pool_to_the_single_run():
    frame = simulate(200, [SimArm("c", 1.0), SimArm("t", 0.7)], events_per_user=10, seed=1)
    one = _runs(frame, {"a": ("c", "t")})["a"]
    config = AbConfig(metrics=("gauc", "ndcg@10", "logloss"), bootstrap=200)
    pooled, single = evaluate_seeds({"a": one, "b": one, "c": one}, "cloud", config), evaluate(one, "cloud", config)
    for p, s in zip(pooled.comparisons, single.comparisons):
        assert (p.metric, p.lift.abs_lift) == (s.metric, pytest.approx(s.lift.abs_lift, abs=1e-12))
        assert p.lift.abs_ci == pytest.approx(s.lift.abs_ci, abs=1e-12)
    assert pooled.to_json()["seeds"]["count"] == 3 and "seeds" not in single.to_json()


def test_pool_runs_ignores_undrawn_runs_and_propagates_undefined_ones():
    values = np.array([[[1.0], [np.nan], [4.0]], [[1.0], [np.nan], [4.0]]])
    out = pool_runs(values, np.array([[2, 0, 1], [1, 1, 1]]))
    assert out[0, 0] == pytest.approx(2.0) and np.isnan(out[1, 0])


def test_runs_that_score_other_events_or_arms_are_refused():
    frame = simulate(50, [SimArm("c0", 1.0), SimArm("t0", 0.7), SimArm("c1", 1.0), SimArm("t1", 0.7)], seed=4)
    runs = _runs(frame, {"s0": ("c0", "t0"), "s1": ("c1", "t1")})
    fewer = runs["s1"].frame[runs["s1"].frame["user_id"] >= 3]
    with pytest.raises(RecflError, match=r"runs of arm 'cloud': run 's1' and run 's0' do not score the same events: "
                                         r"0 events of 0 users only in 's1', \d+ events of 3 users only in 's0'"):
        evaluate_seeds({"s0": runs["s0"], "s1": from_frame(fewer, "s1")}, "cloud")
    renamed = runs["s1"].frame.assign(arm=runs["s1"].frame["arm"].replace("coda", "local"))
    with pytest.raises(RecflError, match="run s1 has arms cloud, local but run s0 has cloud, coda"):
        evaluate_seeds({"s0": runs["s0"], "s1": from_frame(renamed, "s1")}, "cloud")
    with pytest.raises(RecflError, match="control arm 'x' is not in the predictions of run s0"):
        evaluate_seeds(runs, "x")
