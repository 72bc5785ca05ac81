"""``evaluate``: arms' predictions in, every metric, lift, interval and guard out (one typed result).

The stage API of the A/B harness: :func:`evaluate` checks the inputs, splits
users by the design, computes each arm's metrics per segment, bootstraps them
over users and compares every treatment with the control; :mod:`ab_testing.report`
turns the :class:`AbResult` into report.md, report.html and metrics.json.
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
    Predictions,
    check_duplicates,
    check_paired,
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


@dataclass
class AbResult:
    """Everything the report shows; :meth:`to_json` is metrics.json."""

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
    per_user: dict[str, dict[str, np.ndarray]] = field(repr=False)  # arm -> metric -> per-user values
    seconds: dict[str, float] = field(default_factory=dict)

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
            "seconds": self.seconds,
        }


def evaluate(pred: Predictions, control: str, config: AbConfig = AbConfig(), activity: pd.Series | None = None,
             progress: bool = False) -> AbResult:
    """Compare every arm of ``pred`` with ``control`` under ``config``; ``activity`` (training events per user) adds segments."""
    started = time.perf_counter()
    metrics = parse_metrics(config.metrics)
    if control not in pred.arms:
        raise RecflError(f"control arm {control!r} is not in the predictions (arms: {', '.join(pred.arms)})")
    if len(pred.arms) < 2:
        raise RecflError(f"only one arm ({control!r}) in the predictions; an A/B comparison needs at least two")
    arms = (control, *[a for a in pred.arms if a != control])
    check_scores(pred, any(m.needs_probabilities for m in metrics))
    check_duplicates(pred)
    warnings: list[str] = []
    groups, assignment = _groups(pred, arms, config, warnings)
    checked = time.perf_counter()
    evaluated = np.unique(np.concatenate([f["user_id"].to_numpy() for g in groups for f in g.values()]))
    segmenter = Segmenter.fit(evaluated, activity, tuple(config.segment_bounds))
    if activity is not None and segmenter.unknown(evaluated):
        warnings.append(f"{segmenter.unknown(evaluated)} evaluated users are not in the users file; "
                        "they count as users with 0 training events (cold)")
    m = _measure(groups, pred, metrics, segmenter, config, progress)
    shown = [name for name in ("all", *SEGMENTS) if name in m.segment_users and sum(m.segment_users[name].values())]
    empty = [name for name in m.segment_users if name not in shown]
    if empty:
        warnings.append(f"segment(s) {', '.join(empty)} have no users under the rule ({segmenter.rule}) and are not shown")
    columns = [i for i, (segment, _) in enumerate(m.keys) if segment in shown]
    values = [MetricValue(arm, m.keys[i][0], m.keys[i][1], float(m.points[arm][i]),
                          percentile_interval(m.samples[arm][:, i], config.confidence), m.segment_users[m.keys[i][0]][arm])
              for arm in arms for i in columns]
    comparisons = _compare(arms, metrics, m, columns, config, warnings)
    seconds = {"checks": checked - started, **m.seconds, "total": time.perf_counter() - started}
    log.info("evaluated %d arms in %.1f s (bootstrap %.1f s)", len(arms), seconds["total"], seconds["bootstrap"])
    return AbResult(config, control, arms[1:], metrics, m.summaries, values, comparisons, segmenter.rule,
                    {name: m.segment_users[name] for name in shown}, assignment, warnings, m.per_user,
                    {k: round(v, 3) for k, v in seconds.items()})


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
    """Point values and bootstrap draws of every arm, keyed like ``keys`` ((segment, metric) per column)."""

    keys: list[tuple[str, str]]
    points: dict[str, np.ndarray]
    samples: dict[str, np.ndarray]
    summaries: list[ArmSummary]
    per_user: dict[str, dict[str, np.ndarray]]
    segment_users: dict[str, dict[str, int]]
    seconds: dict[str, float]


def _measure(groups: list[dict[str, pd.DataFrame]], pred: Predictions, metrics: tuple[Metric, ...],
             segmenter: Segmenter, config: AbConfig, progress: bool) -> _Measured:
    """Per-user metric parts of each arm, its point values, and the bootstrap draws of each group."""
    m = _Measured([], {}, {}, [], {}, {}, {"per_user_metrics": 0.0, "bootstrap": 0.0})
    for group, seed in zip(groups, np.random.SeedSequence(config.seed).spawn(len(groups))):
        started = time.perf_counter()
        users = np.unique(np.concatenate([f["user_id"].to_numpy() for f in group.values()]))
        masks = segmenter.masks(users)
        estimators = {}
        for arm, frame in group.items():
            pos = np.searchsorted(users, frame["user_id"].to_numpy())
            labels, scores = frame["label"].to_numpy(), frame["score"].to_numpy(np.float64)
            est = estimators[arm] = ArmEstimator.build(metrics, pos, len(users), labels, scores, masks)
            m.keys = est.keys
            m.points[arm] = est(np.ones((1, len(users)), np.int32))[0]
            m.per_user[arm] = est.per_user()
            m.summaries.append(ArmSummary(arm, pred.sources[arm], int(frame["user_id"].nunique()), int(len(frame)),
                                          int(labels.sum()), est.counted_users()))
            for name, mask in masks.items():  # every arm of a group has predictions for all its users
                m.segment_users.setdefault(name, {})[arm] = int(mask.sum())
        drawn = time.perf_counter()
        draws = bootstrap(list(estimators.values()), len(users), config.bootstrap, np.random.default_rng(seed),
                          sum(e.bytes_per_resample for e in estimators.values()), progress,
                          desc=f"bootstrap {'/'.join(group)}")
        m.samples.update(zip(estimators, draws))
        m.seconds["per_user_metrics"] += drawn - started
        m.seconds["bootstrap"] += time.perf_counter() - drawn
    return m


def _compare(arms: tuple[str, ...], metrics: tuple[Metric, ...], m: _Measured, columns: list[int], config: AbConfig,
             warnings: list[str]) -> list[Comparison]:
    """Every treatment against the control on every shown (segment, metric), with corrected p-values."""
    control = arms[0]
    lifts = [(t, i, lift(m.points[control][i], m.points[t][i], m.samples[control][:, i], m.samples[t][:, i],
                         config.confidence)) for t in arms[1:] for i in columns]
    adjusted = np.full(len(lifts), np.nan)
    for overall in (True, False):  # the overall comparisons, then the segment breakdown, each its own family
        members = [j for j, (_, i, _) in enumerate(lifts) if (m.keys[i][0] == "all") == overall]
        adjusted[members] = adjust_p_values([lifts[j][2].p_value for j in members], config.correction)
    by_name = {metric.name: metric for metric in metrics}
    comparisons = []
    for (t, i, result), p_adj in zip(lifts, adjusted):
        segment, name = m.keys[i]
        significant = bool(np.isfinite(p_adj) and p_adj < 1 - config.confidence)
        better = bool((result.abs_lift > 0) == by_name[name].higher_is_better) if significant else None
        comparisons.append(Comparison(t, segment, name, result, float(p_adj), significant, better))
        if result.undefined > 0.01 * config.bootstrap:
            warnings.append(f"{t} vs {control}, {name} ({segment}): undefined in {result.undefined} of "
                            f"{config.bootstrap} resamples (too few users with both classes or a positive); "
                            "its interval uses the others")
    return comparisons
