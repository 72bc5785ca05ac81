"""The A/B metrics: their names, and the per-user parts a bootstrap over users reweights.

Every metric but global AUC is a ratio of per-user sums, ``sum_u num_u / sum_u den_u``
(gAUC: num = events * user AUC, den = events for users with both classes; logloss:
num = summed event losses, den = events; ...). A bootstrap resample repeats user u
``w_u`` times, so its value is ``(w @ num) / (w @ den)`` for a whole matrix of
resamples at once. Global AUC compares events across users and is not such a
ratio; :class:`AucResampler` computes it exactly for many weight vectors at once.
The per-user values come from :mod:`recfl.core.metrics` (one definition of each metric).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from recfl.core.errors import RecflError
from recfl.core.metrics import event_logloss, per_user_auc, per_user_topk

KINDS = {
    "auc": "global AUC over all events (ties count half)",
    "gauc": "impression-weighted mean of per-user AUC (users with one class excluded)",
    "logloss": "mean binary cross-entropy of the scores as click probabilities (lower is better)",
    "hr": "hit rate@K: share of users with a positive among their K top-scored test events (users without positives excluded)",
    "ndcg": "NDCG@K of each user's test events ranked by score, averaged over users with a positive",
    "ctr": "clicks per exposure when each user is shown their K top-scored events",
    "uctr": "share of all users with a click among their K top-scored events",
}
RANKED = ("hr", "ndcg", "ctr", "uctr")


@dataclass(frozen=True)
class Metric:
    """One metric by name (``auc``, ``gauc``, ``logloss``, ``hr@10``, ``ndcg@10``, ``ctr@10``, ``uctr@10``)."""

    name: str
    kind: str
    k: int | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "logloss"

    @property
    def needs_probabilities(self) -> bool:
        return self.kind == "logloss"

    @property
    def description(self) -> str:
        return KINDS[self.kind].replace("K", str(self.k)) if self.k else KINDS[self.kind]


def parse_metrics(names: Iterable[str]) -> tuple[Metric, ...]:
    """Metrics from names like ``auc`` or ``ndcg@10``; unknown names are one clear error."""
    out: list[Metric] = []
    for raw in names:
        name = raw.strip().lower()
        match = re.fullmatch(r"([a-z]+)(?:@(\d+))?", name)
        kind, k = (match.group(1), match.group(2)) if match else (None, None)
        if kind not in KINDS or (kind in RANKED) != (k is not None) or (k is not None and int(k) < 1):
            known = ", ".join(f"{k}@K" if k in RANKED else k for k in KINDS)
            raise RecflError(f"unknown metric {raw!r}; known: {known} (K a positive integer, e.g. ndcg@10)")
        metric = Metric(name, kind, int(k) if k else None)
        if metric not in out:
            out.append(metric)
    if not out:
        raise RecflError("no metrics given")
    return tuple(out)


def ratio_parts(metrics: tuple[Metric, ...], user_pos: np.ndarray, n_users: int, labels: np.ndarray,
                scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-user numerators and denominators ``[n_users, len(metrics)]`` of the ratio metrics.

    ``user_pos`` numbers each event's user in ``0 .. n_users - 1``; users without
    events get 0 / 0 (they count nowhere). ``auc`` is not a ratio: its column stays 0.
    """
    num = np.zeros((n_users, len(metrics)))
    den = np.zeros((n_users, len(metrics)))
    if len(user_pos) == 0:
        return num, den
    topk = {}
    for j, m in enumerate(metrics):
        if m.kind == "gauc":
            table = per_user_auc(user_pos, labels, scores)
            both = table["auc"].notna().to_numpy()
            rows = table["user_id"].to_numpy()
            num[rows, j] = np.where(both, table["events"] * table["auc"].fillna(0.0), 0.0)
            den[rows, j] = np.where(both, table["events"], 0.0)
        elif m.kind == "logloss":
            num[:, j] = np.bincount(user_pos, event_logloss(labels, scores), minlength=n_users)
            den[:, j] = np.bincount(user_pos, minlength=n_users)
        elif m.kind in RANKED:
            if m.k not in topk:
                topk[m.k] = per_user_topk(user_pos, labels, scores, m.k)
            t = topk[m.k]
            rows, has_pos = t["user_id"].to_numpy(), (t["positives"] > 0).to_numpy(np.float64)
            if m.kind == "hr":
                num[rows, j], den[rows, j] = t["hit"] * has_pos, has_pos
            elif m.kind == "ndcg":
                num[rows, j], den[rows, j] = np.where(has_pos > 0, t["dcg"] / np.maximum(t["idcg"], 1e-300), 0.0), has_pos
            elif m.kind == "ctr":
                num[rows, j], den[rows, j] = t["clicks"], t["shown"]
            else:  # uctr
                num[rows, j], den[rows, j] = t["hit"], 1.0
    return num, den


class AucResampler:
    """Global AUC of one arm's events under many per-user weight vectors at once.

    With every event of user u repeated ``w_u`` times, AUC = sum over (positive i,
    negative j) of ``w_i w_j [s_i > s_j]`` (ties 1/2) over ``W_pos * W_neg``. Negatives
    are sorted by score once; per resample, a cumulative sum of their integer
    weights gives at each positive the weight of negatives below it. Integer
    arithmetic keeps the result exact (Python ints for the products' totals)
    and the cumulative sum fast.
    """

    def __init__(self, user_pos: np.ndarray, labels: np.ndarray, scores: np.ndarray):
        y = np.asarray(labels) > 0.5
        s = np.asarray(scores, np.float64)
        user_pos = np.asarray(user_pos, np.intp)
        neg_order = np.argsort(s[~y], kind="stable")
        pos_order = np.argsort(s[y], kind="stable")
        neg_scores = s[~y][neg_order]
        self.neg_users = user_pos[~y][neg_order]
        self.pos_users = user_pos[y][pos_order]
        pos_scores = s[y][pos_order]
        self.below = np.searchsorted(neg_scores, pos_scores, "left")  # negatives strictly below, per positive
        upto = np.searchsorted(neg_scores, pos_scores, "right")
        tied = np.flatnonzero(upto > self.below)
        self.tied, self.tied_below, self.tied_upto = tied, self.below[tied], upto[tied]
        self.max_user_negatives = int(np.bincount(self.neg_users).max(initial=0)) if len(self.neg_users) else 0

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """AUC per row of ``counts`` (``[R, n_users]`` integer weights); NaN where a class has no weight.

        One row at a time: a row's gathers and cumulative sum stay in the CPU
        cache, which measured 2-4x faster than the same operations on a whole
        block of rows (memory-bound); each row is a few vectorized passes.
        """
        counts = np.asarray(counts)
        out = np.full(len(counts), np.nan)
        if not len(self.neg_users) or not len(self.pos_users):
            return out
        # total negative weight <= (sum of a row) * (most negatives of a user): int32 is exact below 2**31
        wide = int(counts.sum(axis=1).max(initial=0)) * self.max_user_negatives >= 2**31
        cum = np.zeros(len(self.neg_users) + 1, np.int64 if wide else np.int32)
        for r, w in enumerate(counts):
            np.cumsum(w[self.neg_users], out=cum[1:])  # weight of the negatives up to each sorted position
            pos_w = w[self.pos_users]
            twice = 2 * int(np.einsum("i,i->", pos_w, cum[self.below], dtype=np.int64))
            if len(self.tied):  # tied negatives count half: + w_i * (negatives at or below s_i - strictly below)
                gap = cum[self.tied_upto].astype(np.int64) - cum[self.tied_below]
                twice += int(np.einsum("i,i->", pos_w[self.tied], gap, dtype=np.int64))
            total_pos, total_neg = int(pos_w.sum(dtype=np.int64)), int(cum[-1])
            if total_pos and total_neg:
                out[r] = twice / (2.0 * total_pos * total_neg)
        return out


@dataclass
class ArmEstimator:
    """Every (segment, metric) value of one arm as a function of per-user resample counts.

    ``segments`` maps a segment name to a boolean mask over the users (``"all"``
    included); ratio metrics of all segments are one matrix product, AUC one
    :class:`AucResampler` per segment.
    """

    keys: list[tuple[str, str]]  # (segment, metric) of each output column
    num: np.ndarray  # [n_users, ratio columns] per-user numerators, zero outside the column's segment
    den: np.ndarray  # [n_users, ratio columns] per-user denominators
    auc_columns: list[tuple[int, AucResampler]]  # output column of each segment's global AUC
    ratio_columns: np.ndarray  # output column of each num/den column

    @classmethod
    def build(cls, metrics: tuple[Metric, ...], user_pos: np.ndarray, n_users: int, labels: np.ndarray,
              scores: np.ndarray, segments: dict[str, np.ndarray]) -> "ArmEstimator":
        num, den = ratio_parts(metrics, user_pos, n_users, labels, scores)
        keys, nums, dens, auc_columns, ratio_columns = [], [], [], [], []
        for segment, mask in segments.items():
            in_segment = mask[user_pos]
            for j, m in enumerate(metrics):
                if m.kind == "auc":
                    auc_columns.append((len(keys), AucResampler(user_pos[in_segment], labels[in_segment], scores[in_segment])))
                else:
                    ratio_columns.append(len(keys))
                    nums.append(num[:, j] * mask)
                    dens.append(den[:, j] * mask)
                keys.append((segment, m.name))
        stack = (lambda cols: np.stack(cols, axis=1) if cols else np.zeros((n_users, 0)))
        return cls(keys, stack(nums), stack(dens), auc_columns, np.asarray(ratio_columns, np.intp))

    @property
    def bytes_per_resample(self) -> int:
        """Working memory of one resample row in a block (float weights and the ratio products)."""
        return 8 * (self.num.shape[0] + 3 * self.num.shape[1])

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """``[R, len(keys)]`` values for ``counts`` ``[R, n_users]`` (NaN where a metric is undefined).

        The weighted sums are NumPy's own loop (``einsum``), not BLAS: OpenBLAS adds in an order that
        depends on its thread count and the CPU's kernels, which changed the last bits of metrics.json
        between machines; this loop adds in one order everywhere (a few % slower over a whole bootstrap).
        """
        out = np.empty((len(counts), len(self.keys)))
        weights = counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (np.einsum("ru,uc->rc", weights, self.num, optimize=False)
                     / np.einsum("ru,uc->rc", weights, self.den, optimize=False))
        out[:, self.ratio_columns] = np.where(np.isfinite(ratio), ratio, np.nan)
        for column, resampler in self.auc_columns:
            out[:, column] = resampler(counts)
        return out

    def counted_users(self) -> dict[str, int]:
        """Per ratio metric, the users who count overall (gAUC: both classes; hr/ndcg: a positive)."""
        return {self.keys[key][1]: int((self.den[:, column] > 0).sum())
                for column, key in enumerate(self.ratio_columns) if self.keys[key][0] == "all"}

    def per_user(self) -> dict[str, np.ndarray]:
        """Each ratio metric's per-user value over all users (NaN where the user does not count)."""
        out = {}
        for column, key in enumerate(self.ratio_columns):
            segment, name = self.keys[key]
            if segment == "all":
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[name] = np.where(self.den[:, column] > 0, self.num[:, column] / self.den[:, column], np.nan)
        return out
