"""Bootstrap over users, lifts with intervals and p-values, multiple-comparison correction, SRM.

Users, not events, are the unit of resampling: a user's events are correlated,
and users are what an online experiment randomizes. A resample draws the n
users with replacement; it is represented by how often each user is drawn
(multinomial counts), so the per-user metrics of every arm and segment are
computed for a block of resamples with one matrix product, and global AUC
with a few vectorized passes over the sorted events per resample (see
:mod:`ab_testing.metrics`); nothing is regrouped per resample. In the paired
design all arms share the same counts (the difference is resampled jointly,
which removes the between-user variance); in the bucketed design each arm's
users are resampled on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from tqdm import tqdm

from recfl.core import interrupts

CORRECTIONS = ("holm", "bh", "none")
MEMORY_BUDGET = 256 * 2**20  # bytes of working memory per block of resamples


def resample_counts(rng: np.random.Generator, n_users: int, n: int) -> np.ndarray:
    """``[n, n_users]`` int32: how often each user is drawn in each of ``n`` resamples of ``n_users`` draws."""
    draws = rng.integers(0, n_users, size=(n, n_users), dtype=np.int64)
    draws += (np.arange(n, dtype=np.int64) * n_users)[:, None]
    return np.bincount(draws.ravel(), minlength=n * n_users).reshape(n, n_users).astype(np.int32)


def bootstrap(estimators: Sequence[Callable[[np.ndarray], np.ndarray]], n_users: int, n_resamples: int,
              rng: np.random.Generator, bytes_per_resample: int, progress: bool = False,
              desc: str = "bootstrap") -> list[np.ndarray]:
    """Each estimator's ``[n_resamples, k]`` values under the same resamples of ``n_users`` users.

    Resamples are drawn in blocks sized to :data:`MEMORY_BUDGET`; the draws are
    consumed from ``rng`` in order, so the numbers do not depend on the block size.
    """
    block = int(max(1, min(n_resamples, MEMORY_BUDGET // max(bytes_per_resample + 12 * n_users, 1))))
    parts: list[list[np.ndarray]] = [[] for _ in estimators]
    with tqdm(total=n_resamples, desc=desc, unit="resample", disable=not progress, leave=False) as bar:
        for lo in range(0, n_resamples, block):
            interrupts.check()
            counts = resample_counts(rng, n_users, min(block, n_resamples - lo))
            for part, estimator in zip(parts, estimators):
                part.append(estimator(counts))
            bar.update(len(counts))
    return [np.concatenate(p) if p else np.zeros((0, 0)) for p in parts]


def pool_runs(values: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """``[R, k]``: per resample, the mean of the drawn runs' values.

    ``values`` ``[R, runs, k]`` holds each run's values under resample r's user draw, ``drawn`` ``[R, runs]``
    how often resample r draws each run (:func:`resample_counts` over runs). A value is NaN where a drawn run's
    is (a run drawn 0 times does not count). NumPy's ``einsum`` loop, not BLAS: the same bits on every machine.
    """
    counted = drawn[:, :, None] > 0
    undefined = (~np.isfinite(values) & counted).any(axis=1)
    finite = np.where(np.isfinite(values), values, 0.0)
    out = np.einsum("rs,rsk->rk", drawn.astype(np.float64), finite, optimize=False) / drawn.shape[1]
    out[undefined] = np.nan
    return out


@dataclass(frozen=True)
class Lift:
    """Treatment vs control on one metric: point lifts, percentile intervals, p-value."""

    control_value: float
    treatment_value: float
    abs_lift: float
    abs_ci: tuple[float, float]
    rel_lift: float
    rel_ci: tuple[float, float]
    se: float
    p_value: float
    undefined: int  # resamples where either value was undefined (left out of the interval)


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of the finite ``samples`` (NaN if none)."""
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def lift(control: float, treatment: float, control_samples: np.ndarray, treatment_samples: np.ndarray,
         confidence: float) -> Lift:
    """Absolute and relative lift of ``treatment`` over ``control`` with bootstrap intervals and a p-value.

    The interval is the percentile interval of the resampled differences; the
    p-value (two-sided, H0: no difference) compares the difference with its
    bootstrap standard error on a normal scale, which stays informative below
    1 / n_resamples where a count of resamples could not.
    """
    ok = np.isfinite(control_samples) & np.isfinite(treatment_samples)
    diff = treatment_samples[ok] - control_samples[ok]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = treatment_samples[ok] / control_samples[ok] - 1
        rel_point = treatment / control - 1 if control != 0 else float("nan")
    abs_point = treatment - control
    se = float(np.std(diff, ddof=1)) if len(diff) > 1 else float("nan")
    if not np.isfinite(abs_point) or not np.isfinite(se):
        p = float("nan")
    elif se == 0:
        p = 1.0 if abs_point == 0 else 0.0
    else:
        p = float(2 * sps.norm.sf(abs(abs_point) / se))
    return Lift(control, treatment, abs_point, percentile_interval(diff, confidence), float(rel_point),
                percentile_interval(rel, confidence), se, p, int((~ok).sum()))


def adjust_p_values(p_values: Sequence[float], method: str) -> np.ndarray:
    """Holm (family-wise error) or Benjamini-Hochberg (false discovery rate) adjusted p-values; NaNs stay NaN."""
    p = np.asarray(p_values, np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if method == "none" or m == 0:
        out[ok] = p[ok]
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    elif method == "bh":
        adjusted = np.minimum.accumulate(np.minimum(1.0, m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}; choose one of {', '.join(CORRECTIONS)}")
    out[order] = adjusted
    return out


@dataclass(frozen=True)
class SrmCheck:
    """Sample-ratio mismatch: observed users per arm against the designed shares (chi-square test)."""

    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    alpha: float

    @property
    def mismatch(self) -> bool:
        return bool(self.p_value < self.alpha)


def srm_check(observed: dict[str, int], shares: dict[str, float], alpha: float) -> SrmCheck:
    """Chi-square goodness of fit of ``observed`` counts to ``shares`` (which sum to 1)."""
    arms = list(observed)
    counts = np.array([observed[a] for a in arms], np.float64)
    expected = counts.sum() * np.array([shares[a] for a in arms])
    chi2, p = sps.chisquare(counts, expected) if counts.sum() > 0 else (float("nan"), float("nan"))
    return SrmCheck(dict(observed), dict(zip(arms, expected.tolist())), float(chi2), float(p), alpha)
