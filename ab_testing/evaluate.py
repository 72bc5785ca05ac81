"""``evaluate``: arms' predictions in, every metric, lift, interval and guard out (one typed result).

The stage API of the A/B harness: :func:`evaluate` checks the inputs, splits
users by the design, computes each arm's metrics per segment, bootstraps them
over users and compares every treatment with the control; :mod:`ab_testing.report`
turns the :class:`AbResult` into report.md, report.html and metrics.json.
:func:`evaluate_seeds` does the same for several runs of the same arms that
differ only in their seeds: each value is the mean over the runs, and its
interval comes from a two-level bootstrap over runs and users.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ab_testing.bucketing import Assignment, assign
from ab_testing.metrics import ArmEstimator, Metric, parse_metrics
from ab_testing.predictions import (
    EVENT_KEY,
    Predictions,
    check_duplicates,
    check_paired,
    check_same_events,
    check_scores,
)
from ab_testing.segments import SEGMENTS, Segmenter
from ab_testing.stats import (
    CORRECTIONS,
    Lift,
    adjust_p_values,
    bootstrap,
    lift,
    percentile_interval,
    pool_runs,
    resample_counts,
)
from recfl.core.config import as_table, check_limits
from recfl.core.errors import RecflError

log = logging.getLogger(__name__)
DESIGNS = ("paired", "bucketed")


@dataclass(frozen=True)
class AbConfig:
    """The ``[ab]`` config section: design, metrics and statistics of ``recfl ab evaluate``."""

    design: str = "paired"  # paired: all arms on the same users; bucketed: users hashed into arms
    buckets: int = 100
    salt: str = "recfl-ab"
    metrics: tuple[str, ...] = ("auc", "gauc", "logloss", "hr@10", "ndcg@10")
    primary: str = "gauc"  # the headline metric of `recfl run` (evaluated even when not in metrics)
    bootstrap: int = 1000  # resamples of users
    seed: int = 0
    confidence: float = 0.95
    correction: str = "holm"  # holm | bh | none, over all treatment x metric comparisons
    srm_alpha: float = 0.001  # sample-ratio mismatch flagged below this chi-square p-value
    segment_bounds: tuple[int, ...] = ()  # [warm, hot] training-event bounds; empty: tertiles

    def __post_init__(self):
        """Refuse settings that cannot give a meaningful result, with one clear line."""
        if self.design not in DESIGNS:
            raise RecflError(f"unknown design {self.design!r}; choose one of {', '.join(DESIGNS)}")
        if self.correction not in CORRECTIONS:
            raise RecflError(f"unknown correction {self.correction!r}; choose one of {', '.join(CORRECTIONS)}")
        check_limits(self, "ab", bootstrap=">= 2", confidence="(0, 1)", buckets=">= 1", srm_alpha="(0, 1)", segment_bounds=">= 0")
        try:
            (primary,) = parse_metrics((self.primary,))
        except RecflError as exc:
            raise RecflError(f"config: ab.primary: {exc}") from None
        object.__setattr__(self, "primary", primary.name)

    @property
    def with_primary(self) -> "AbConfig":
        """This config with the primary metric first among the metrics (added if missing)."""
        names = [m.name for m in parse_metrics(self.metrics)]
        return replace(self, metrics=(self.primary, *[n for n in names if n != self.primary]))


@dataclass(frozen=True)
class ArmSummary:
    """What one arm was evaluated on."""

    arm: str
    source: str
    users: int
    events: int
    positives: int
    counted_users: dict[str, int]  # per ratio metric: users that count (gAUC: both classes; hr/ndcg: a positive)


@dataclass(frozen=True)
class MetricValue:
    """One arm's value of one metric in one segment, with its bootstrap interval."""

    arm: str
    segment: str
    metric: str
    value: float
    ci: tuple[float, float]
    users: int


@dataclass(frozen=True)
class Comparison:
    """A treatment against the control on one metric in one segment."""

    treatment: str
    segment: str
    metric: str
    lift: Lift
    p_adjusted: float
    significant: bool
    better: bool | None  # direction of a significant lift (lower logloss is better); None if not significant


@dataclass(frozen=True)
class SeedLift:
    """One run's own lift of a treatment over the control (a seed of a pooled comparison); interval over users only."""

    seed: str
    treatment: str
    segment: str
    metric: str
    control_value: float
    treatment_value: float
    abs_lift: float
    abs_ci: tuple[float, float]


@dataclass
class AbResult:
    """Everything the report shows; :meth:`to_json` is metrics.json (``seconds`` stays out of it: the same
    predictions and settings give the same file byte for byte)."""

    config: AbConfig
    control: str
    treatments: tuple[str, ...]
    metrics: tuple[Metric, ...]
    arms: list[ArmSummary]
    values: list[MetricValue]
    comparisons: list[Comparison]
    segment_rule: str
    segment_users: dict[str, dict[str, int]]  # segment -> arm -> users
    assignment: Assignment | None
    warnings: list[str]
    per_user: dict[str, dict[str, np.ndarray]] = field(repr=False)  # arm -> metric -> per-user values (mean over runs)
    seconds: dict[str, float] = field(default_factory=dict)
    seeds: tuple[str, ...] = ()  # the runs a pooled comparison averages (empty: one run, intervals over users only)
    seed_lifts: list[SeedLift] = field(default_factory=list)

    def to_json(self) -> dict:
        srm = self.assignment.srm if self.assignment else None
        return {
            "config": as_table(self.config),
            "control": self.control,
            "treatments": list(self.treatments),
            "metrics": {m.name: m.description for m in self.metrics},
            "arms": [vars(a) for a in self.arms],
            "values": [vars(v) for v in self.values],
            "comparisons": [
                {"treatment": c.treatment, "control": self.control, "segment": c.segment, "metric": c.metric,
                 **vars(c.lift), "p_adjusted": c.p_adjusted, "significant": c.significant, "better": c.better}
                for c in self.comparisons
            ],
            "segments": {"rule": self.segment_rule, "users": self.segment_users},
            "assignment": None if self.assignment is None else {
                "buckets": self.assignment.ranges, "assigned_users": self.assignment.assigned,
                "users_without_predictions": self.assignment.missing,
                "srm": {**vars(srm), "mismatch": srm.mismatch},
            },
            "warnings": self.warnings,
            **({"seeds": {"runs": list(self.seeds), "count": len(self.seeds),
                          "per_seed": [vars(x) for x in self.seed_lifts]}} if self.seeds else {}),
        }


def evaluate(pred: Predictions, control: str, config: AbConfig = AbConfig(), activity: pd.Series | None = None,
             progress: bool = False) -> AbResult:
    """Compare every arm of ``pred`` with ``control`` under ``config``; ``activity`` (training events per user) adds segments."""
    return _evaluate([("", pred)], control, config, activity, progress, pooled=False)


def evaluate_seeds(runs: dict[str, Predictions], control: str, config: AbConfig = AbConfig(),
                   activity: pd.Series | None = None, progress: bool = False) -> AbResult:
    """Compare the arms pooled over ``runs`` (label -> predictions of one seed of the whole pipeline).

    The runs must score the same events per arm (one data set and split; only model randomness differs).
    Each value and lift is the mean over the runs. Its interval is a two-level bootstrap: a resample draws
    the runs with replacement and the users with replacement, the same user draw for every run (the runs
    score the same users, so a user's effect is shared by all of them; drawing users anew per run would
    shrink the user part of the variance by the number of runs). Per-user metrics are then the per-run
    ratios of the drawn users' sums, global AUC the exact AUC of the drawn users' events, averaged over
    the drawn runs. One run's own lift and its interval over users come with it (:class:`SeedLift`).
    """
    if not runs:
        raise RecflError("no runs given")
    return _evaluate(list(runs.items()), control, config, activity, progress, pooled=True)


def _evaluate(runs: list[tuple[str, Predictions]], control: str, config: AbConfig, activity: pd.Series | None,
              progress: bool, pooled: bool) -> AbResult:
    """One run (``pooled`` False: intervals over users) or several runs of the same arms pooled (over runs and users)."""
    started = time.perf_counter()
    metrics = parse_metrics(config.metrics)
    arms = _check_arms(runs, control, pooled)
    for _, pred in runs:
        check_scores(pred, any(m.needs_probabilities for m in metrics))
        check_duplicates(pred)
    warnings: list[str] = []
    per_run = [_groups(pred, arms, config, warnings if i == 0 else []) for i, (_, pred) in enumerate(runs)]
    groups = [{arm: [run_groups[g][arm] for run_groups, _ in per_run] for arm in per_run[0][0][g]}
              for g in range(len(per_run[0][0]))]  # per resampling group: each arm's frame in every run
    labels = [label for label, _ in runs]
    for group in groups:  # the runs of one comparison differ in their seeds, never in the events they score
        for arm, frames in group.items():
            check_same_events((labels[0], frames[0]), dict(zip(labels[1:], frames[1:])), f"runs of arm {arm!r}", "run {}",
                              "run {}", "the runs of a pooled comparison differ only in seeds: one data set and split")
    if pooled and len(runs) < 3:
        warnings.append(f"pooled over {len(runs)} run(s): a claim of a lift needs at least 3 seeds of the whole pipeline")
    checked = time.perf_counter()
    evaluated = np.unique(np.concatenate([f[0]["user_id"].to_numpy() for g in groups for f in g.values()]))
    segmenter = Segmenter.fit(evaluated, activity, tuple(config.segment_bounds))
    if activity is not None and segmenter.unknown(evaluated):
        warnings.append(f"{segmenter.unknown(evaluated)} evaluated users are not in the users file; "
                        "they count as users with 0 training events (cold)")
    m = _measure(groups, {arm: ", ".join(pred.sources[arm] for _, pred in runs) for arm in arms}, metrics, segmenter,
                 config, progress)
    shown = [name for name in ("all", *SEGMENTS) if name in m.segment_users and sum(m.segment_users[name].values())]
    empty = [name for name in m.segment_users if name not in shown]
    if empty:
        warnings.append(f"segment(s) {', '.join(empty)} have no users under the rule ({segmenter.rule}) and are not shown")
    columns = [i for i, (segment, _) in enumerate(m.keys) if segment in shown]
    if pooled:  # the runs drawn per resample, shared by all arms (a stream of its own: the user draws stay as unpooled)
        drawn = resample_counts(np.random.default_rng(np.random.SeedSequence(config.seed).spawn(len(groups) + 1)[-1]),
                                len(runs), config.bootstrap)
        points = {arm: p.mean(axis=0) for arm, p in m.points.items()}
        samples = {arm: pool_runs(d, drawn) for arm, d in m.samples.items()}
    else:
        points = {arm: p[0] for arm, p in m.points.items()}
        samples = {arm: d[:, 0] for arm, d in m.samples.items()}
    values = [MetricValue(arm, m.keys[i][0], m.keys[i][1], float(points[arm][i]),
                          percentile_interval(samples[arm][:, i], config.confidence), m.segment_users[m.keys[i][0]][arm])
              for arm in arms for i in columns]
    comparisons = _compare(arms, metrics, m.keys, points, samples, columns, config, warnings)
    seed_lifts = [_seed_lift(label, t, m, s, i, config) for t in arms[1:] for i in columns
                  for s, label in enumerate(labels)] if pooled else []
    seconds = {"checks": checked - started, **m.seconds, "total": time.perf_counter() - started}
    log.info("evaluated %d arms in %.1f s (bootstrap %.1f s)", len(arms), seconds["total"], seconds["bootstrap"])
    return AbResult(config, control, arms[1:], metrics, m.summaries, values, comparisons, segmenter.rule,
                    {name: m.segment_users[name] for name in shown}, assignment=per_run[0][1], warnings=warnings,
                    per_user=m.per_user, seconds={k: round(v, 3) for k, v in seconds.items()},
                    seeds=tuple(labels) if pooled else (), seed_lifts=seed_lifts)


def _check_arms(runs: list[tuple[str, Predictions]], control: str, pooled: bool) -> tuple[str, ...]:
    """The arms, control first; every run needs the control, another arm, and the first run's arms."""
    first_label, first = runs[0]
    for label, pred in runs:
        where = f" of run {label}" if pooled else ""
        if control not in pred.arms:
            raise RecflError(f"control arm {control!r} is not in the predictions{where} (arms: {', '.join(pred.arms)})")
        if len(pred.arms) < 2:
            raise RecflError(f"only one arm ({control!r}) in the predictions{where}; an A/B comparison needs at least two")
        if set(pred.arms) != set(first.arms):
            raise RecflError(f"run {label} has arms {', '.join(sorted(pred.arms))} but run {first_label} has "
                             f"{', '.join(sorted(first.arms))}; every run of a pooled comparison needs the same arms")
    return (control, *[a for a in first.arms if a != control])


def _seed_lift(label: str, treatment: str, m: "_Measured", run: int, column: int, config: AbConfig) -> SeedLift:
    control = next(iter(m.points))
    one = lift(m.points[control][run, column], m.points[treatment][run, column], m.samples[control][:, run, column],
               m.samples[treatment][:, run, column], config.confidence)
    return SeedLift(label, treatment, *m.keys[column], one.control_value, one.treatment_value, one.abs_lift, one.abs_ci)


def _groups(pred: Predictions, arms: tuple[str, ...], config: AbConfig,
            warnings: list[str]) -> tuple[list[dict[str, pd.DataFrame]], Assignment | None]:
    """The arms' rows in resampling groups: one group of all arms (paired) or one group per arm (bucketed)."""
    if config.design == "paired":
        check_paired(pred, arms[0])
        return [{arm: pred.of(arm) for arm in arms}], None
    assignment = assign(pred, arms, config.salt, config.buckets, config.srm_alpha)
    empty = [arm for arm in arms if not len(assignment.frames[arm])]
    if empty:
        raise RecflError(f"bucketed design: no predictions for the users assigned to {', '.join(map(repr, empty))}")
    srm = assignment.srm
    lacking = {arm: n for arm, n in assignment.missing.items() if n}
    if srm.mismatch:
        warnings.append(
            f"SAMPLE RATIO MISMATCH: users per arm {srm.observed} differ from the designed split "
            f"{ {a: round(e, 1) for a, e in srm.expected.items()} } (chi-square {srm.chi2:.1f}, p = {srm.p_value:.2g} "
            f"< {srm.alpha}); some arms lack predictions for their users {assignment.missing}, so the arms no "
            "longer compare like with like: find the cause before trusting any lift")
    elif lacking:
        warnings.append(f"users hashed to an arm without predictions in it are not evaluated: {lacking}")
    return [{arm: assignment.frames[arm]} for arm in arms], assignment


@dataclass
class _Measured:
    """Point values ``[runs, k]`` and bootstrap draws ``[resamples, runs, k]`` of every arm (control first), keyed
    like ``keys`` ((segment, metric) per column)."""

    keys: list[tuple[str, str]]
    points: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    summaries: list[ArmSummary]
    per_user: dict[str, dict[str, np.ndarray]]
    segment_users: dict[str, dict[str, int]]
    seconds: dict[str, float]


def _measure(groups: list[dict[str, list[pd.DataFrame]]], sources: dict[str, str], metrics: tuple[Metric, ...],
             segmenter: Segmenter, config: AbConfig, progress: bool) -> _Measured:
    """Per-user metric parts of each arm in each run, its point values, and the bootstrap draws of each group
    (one draw of the group's users per resample, shared by every arm and run of the group)."""
    m = _Measured([], {}, {}, [], {}, {}, {"per_user_metrics": 0.0, "bootstrap": 0.0})
    for group, seed in zip(groups, np.random.SeedSequence(config.seed).spawn(len(groups))):
        started = time.perf_counter()
        users = np.unique(np.concatenate([f[0]["user_id"].to_numpy() for f in group.values()]))
        masks = segmenter.masks(users)
        estimators: dict[str, list[ArmEstimator]] = {}
        for arm, frames in group.items():
            pos = np.searchsorted(users, frames[0]["user_id"].to_numpy())
            labels = frames[0]["label"].to_numpy()
            runs = estimators[arm] = [ArmEstimator.build(metrics, pos, len(users), labels, scores, masks)
                                      for scores in _aligned_scores(frames)]
            m.keys = runs[0].keys
            m.points[arm] = np.stack([est(np.ones((1, len(users)), np.int32))[0] for est in runs])
            m.per_user[arm] = {name: _mean_over_runs([est.per_user()[name] for est in runs]) for name in runs[0].per_user()}
            m.summaries.append(ArmSummary(arm, sources[arm], int(frames[0]["user_id"].nunique()), int(len(frames[0])),
                                          int(labels.sum()), runs[0].counted_users()))
            for name, mask in masks.items():  # every arm of a group has predictions for all its users
                m.segment_users.setdefault(name, {})[arm] = int(mask.sum())
        drawn = time.perf_counter()
        flat = [est for runs in estimators.values() for est in runs]
        draws = iter(bootstrap(flat, len(users), config.bootstrap, np.random.default_rng(seed),
                               sum(e.bytes_per_resample for e in flat), progress, desc=f"bootstrap {'/'.join(group)}"))
        for arm, runs in estimators.items():
            m.samples[arm] = np.stack([next(draws) for _ in runs], axis=1)
        m.seconds["per_user_metrics"] += drawn - started
        m.seconds["bootstrap"] += time.perf_counter() - drawn
    return m


def _aligned_scores(frames: list[pd.DataFrame]) -> list[np.ndarray]:
    """Each run's scores in the row order of the first run (the runs score the same events: checked)."""
    first = frames[0][EVENT_KEY]
    return [frames[0]["score"].to_numpy(np.float64)] + [
        first.merge(f[EVENT_KEY + ["score"]], on=EVENT_KEY, how="left")["score"].to_numpy(np.float64) for f in frames[1:]]


def _mean_over_runs(values: list[np.ndarray]) -> np.ndarray:
    """Per user, the mean of the runs' finite values (NaN where the user counts in no run)."""
    if len(values) == 1:
        return values[0]
    stacked = np.stack(values)
    finite = np.isfinite(stacked)
    with np.errstate(invalid="ignore"):
        return np.where(finite, stacked, 0.0).sum(axis=0) / finite.sum(axis=0)


def _compare(arms: tuple[str, ...], metrics: tuple[Metric, ...], keys: list[tuple[str, str]], points: dict[str, np.ndarray],
             samples: dict[str, np.ndarray], columns: list[int], config: AbConfig, warnings: list[str]) -> list[Comparison]:
    """Every treatment against the control on every shown (segment, metric), with corrected p-values."""
    control = arms[0]
    lifts = [(t, i, lift(points[control][i], points[t][i], samples[control][:, i], samples[t][:, i], config.confidence))
             for t in arms[1:] for i in columns]
    adjusted = np.full(len(lifts), np.nan)
    for overall in (True, False):  # the overall comparisons, then the segment breakdown, each its own family
        members = [j for j, (_, i, _) in enumerate(lifts) if (keys[i][0] == "all") == overall]
        adjusted[members] = adjust_p_values([lifts[j][2].p_value for j in members], config.correction)
    by_name = {metric.name: metric for metric in metrics}
    comparisons = []
    for (t, i, result), p_adj in zip(lifts, adjusted):
        segment, name = keys[i]
        significant = bool(np.isfinite(p_adj) and p_adj < 1 - config.confidence)
        better = bool((result.abs_lift > 0) == by_name[name].higher_is_better) if significant else None
        comparisons.append(Comparison(t, segment, name, result, float(p_adj), significant, better))
        if result.undefined > 0.01 * config.bootstrap:
            warnings.append(f"{t} vs {control}, {name} ({segment}): undefined in {result.undefined} of "
                            f"{config.bootstrap} resamples (too few users with both classes or a positive); "
                            "its interval uses the others")
    return comparisons
