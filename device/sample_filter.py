"""The device's fine-grained sample filter: which matched cloud samples look like this user's own data.

A LightGBM binary classifier learns local training samples (class 1) against
the coarse-matched candidates (class 0). Every sample is scored **out of
fold**: candidates and local samples are each dealt into ``folds`` folds
(seeded permutation), the model of fold ``k`` trains on every sample not in
fold ``k`` (both classes) and scores only fold ``k``. So a candidate's score
never comes from a model that saw it, and the reported AUC (local vs
candidates, over all out-of-fold scores) is honest; a high AUC means the
candidates are easy to tell apart from the user's data. Classes are weighted
to equal total weight, so a score of 0.5 means "as likely local as not".

Features (``features``, any of :data:`FEATURES`): item, category and
behaviour (categorical; ids as vocabulary rows), hour of day, day of week,
label, item popularity (log training count), the cloud model's item
embedding, ``affinity``: the cosine between the item's cloud embedding and
the user's taste (the mean embedding of the user's own positive items),
``category_share``: the share of the user's own events in the sample's
category, ``time_gap``: log days between the sample and the median time of
the user's own events, ``context``: the cosine between the sample's
clicked history (mean embedding; whose context it comes from) and the
user's taste, and ``history``: the mean cloud embedding of the sample's
clicked-history items (whose context the sample comes from). The context
features tell whose sample it is rather than whether it resembles the
user's data: on MovieLens hour and weekday identify the user's rating
sessions (out-of-fold AUC 1.0) and the history the owner (AUC 0.98), and a
raw item id is anti-signal (a user rates a movie once, so a held-out local
item was only ever seen among the candidates); see the README. Taste and
category share leave out the user's own events of the sample's item, for a
local sample and a candidate alike, and are cross-fitted twice: for the
model of fold ``k``, a sample of fold ``j`` is compared with the user's
local events outside folds ``j`` and ``k`` (:func:`user_context`). A
feature that treated the two classes differently (a local sample is a
member of the user's events, a candidate is not) would separate them by
that treatment alone. The default features are the ones whose "looks like
my data" generalizes across a user's items (label, popularity, affinity,
category share, context).

Keep rule: the top ``keep_fraction`` of candidates by score, or every
candidate scoring at least ``threshold``. With ``weighting = "odds"`` the
classifier is also a density-ratio estimator: a kept candidate's loss
weight is its odds ``s / (1 - s)`` (an estimate of p_local(x) / p_cand(x),
since the classes are weighted to equal totals), clipped to
``weight_clip`` and normalized to mean 1 over the kept candidates, as in
covariate-shift correction. Fallback: with fewer than
``min_local`` local samples, or fewer candidates or local samples than
``folds``, no classifier is trained; ``fallback = "similarity"`` keeps the top
``keep_fraction`` by coarse-matching similarity (ties keep table order),
``fallback = "all"`` keeps every candidate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recfl.core.config import check_limits
from recfl.core.errors import RecflError
from recfl.core.metrics import auc
from recfl.core.vocab import Vocabulary

if TYPE_CHECKING:
    from device.gbdt import NativeBooster

CLASSIFIER, FALLBACK, NO_CANDIDATES = "classifier", "fallback", "no_candidates"
CATEGORICAL = ("item", "category", "behavior")
FEATURES = (*CATEGORICAL, "hour", "weekday", "label", "popularity", "affinity", "category_share", "time_gap", "context",
            "embedding", "history")
USER_CONTEXT = ("affinity", "category_share", "time_gap", "context")  # measured against the user's own events
WEIGHTINGS = ("none", "odds")


@dataclass(frozen=True)
class FilterConfig:
    """The ``[filter]`` config section: the on-device LightGBM sample filter."""

    folds: int = 3
    rule: str = "top_fraction"  # top_fraction | threshold
    keep_fraction: float = 0.1  # tuned on a MovieLens 100K validation split (README)
    threshold: float = 0.5
    min_local: int = 10  # fewer local training samples -> fallback
    fallback: str = "similarity"  # similarity | all
    # any of FEATURES; these generalize across a user's items (out-of-fold AUC 0.72 on a MovieLens 100K validation split, README)
    features: tuple[str, ...] = ("label", "popularity", "affinity", "category_share", "context")
    rounds: int = 20  # a small, strongly regularized model: as accurate out of fold as a larger one, at a fraction of the cost
    num_leaves: int = 4
    learning_rate: float = 0.1
    min_data_in_leaf: int = 20
    weighting: str = "none"  # none | odds: kept candidates weighted by the classifier's odds (density ratio)
    weight_clip: float = 5.0  # odds weights are clipped to at most this before normalizing
    seed: int = 0

    def __post_init__(self):
        if self.weighting not in WEIGHTINGS:
            raise RecflError(f"filter.weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.rule not in ("top_fraction", "threshold"):
            raise RecflError(f"filter.rule must be top_fraction or threshold, got {self.rule!r}")
        if self.fallback not in ("similarity", "all"):
            raise RecflError(f"filter.fallback must be similarity or all, got {self.fallback!r}")
        check_limits(self, "filter", folds=">= 2", keep_fraction="[0, 1]", threshold="[0, 1]", min_local=">= 0",
                     rounds=">= 1", num_leaves=">= 2", learning_rate="> 0", min_data_in_leaf=">= 1", weight_clip=">= 1")
        unknown = sorted(set(self.features) - set(FEATURES))
        if unknown or not self.features:
            raise RecflError(f"filter.features: unknown {unknown or 'empty list'}; choose from {', '.join(FEATURES)}")
        context = [name for name in self.features if name in USER_CONTEXT]
        if context and self.folds < 3:
            raise RecflError(f"filter.folds must be >= 3 with the user-context features ({', '.join(context)}), got "
                             f"{self.folds}: with 2 folds the model of one fold has no local events left to measure its "
                             "training samples against (they are cross-fitted twice)")


@dataclass(frozen=True)
class ItemKnowledge:
    """What the device knows about items from the cloud: vocabularies, counts, model embeddings."""

    item_vocab: Vocabulary
    category_vocab: Vocabulary
    item_embeddings: np.ndarray | None  # [item rows, d]: the cloud model's item table (None if it has none)

    def popularity(self, rows: np.ndarray) -> np.ndarray:
        """log(1 + training count) of each item row (PAD/OOV count 0)."""
        counts = np.concatenate([[0, 0], self.item_vocab.counts]).astype(np.float64)
        return np.log1p(counts[rows])


@dataclass(frozen=True, eq=False)
class FilterResult:
    """The decision on each candidate, with what it was based on (per candidate, in table order)."""

    keep: np.ndarray  # bool
    weight: np.ndarray  # loss weight of each candidate (ones unless weighting = "odds"; 0 for dropped ones)
    score: np.ndarray  # out-of-fold local-likeness in [0, 1]; NaN without a classifier
    fold: np.ndarray  # fold of each candidate (its score comes from the model that left this fold out); -1 without
    local_fold: np.ndarray  # fold of each local sample; -1 without
    path: str  # classifier | fallback | no_candidates
    auc: float  # out-of-fold AUC, local (1) vs candidates (0); NaN without a classifier
    seconds: float

    def report(self) -> dict:
        n = len(self.keep)
        return {"candidates": n, "kept": int(self.keep.sum()), "kept_fraction": float(self.keep.mean()) if n else float("nan"),
                "filter_auc": self.auc, "filter_path": self.path, "filter_seconds": round(self.seconds, 4)}


def _same_item(local_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[len(rows), len(local_rows)]``: whether each local event is of each sample's item."""
    return rows[:, None] == local_rows[None, :]


def features(events: pd.DataFrame, items: ItemKnowledge, names: tuple[str, ...], behaviors: pd.Index,
             history_mean: np.ndarray | None = None, context: dict | None = None) -> np.ndarray:
    """The classifier's feature matrix of canonical events: the ``names`` scalar columns in :data:`FEATURES`
    order (categorical codes first), then the item embedding and the history embedding if asked for.
    ``history_mean`` is each event's mean clicked-history embedding (:func:`history_means`); ``context`` what the user's own
    events say about each event (see :func:`user_context`)."""
    if items.item_embeddings is None and {"embedding", "history", "affinity", "context"} & set(names):
        raise RecflError("filter.features 'embedding', 'affinity', 'context' and 'history' need a model with a table over "
                         "the item vocabulary")
    rows = items.item_vocab.lookup(events["item_id"].to_numpy(np.int64))
    ts = events["timestamp"].to_numpy(np.int64)
    column = {
        "item": lambda: rows,
        "category": lambda: items.category_vocab.lookup(events["category_id"].to_numpy(np.int64)),
        "behavior": lambda: behaviors.get_indexer(_behavior(events)).clip(min=0),
        "hour": lambda: (ts % 86400) // 3600,
        "weekday": lambda: (ts // 86400 + 3) % 7,  # 1970-01-01 was a Thursday: 0 = Monday
        "label": lambda: events["label"].to_numpy(np.float64),
        "popularity": lambda: items.popularity(rows),
        "affinity": lambda: _cosine(items.item_embeddings[rows].astype(np.float64), context["taste"]),
        "category_share": lambda: context["share"],
        "time_gap": lambda: np.log1p(np.abs(ts - context["median_time"]) / 86400.0),
        "context": lambda: _cosine(_needed(history_mean), context["taste"]),
    }
    scalars = [column[name]() for name in FEATURES if name in names and name in column]
    matrix = np.column_stack(scalars).astype(np.float64) if scalars else np.zeros((len(events), 0))
    if "embedding" in names:
        matrix = np.hstack([matrix, items.item_embeddings[rows].astype(np.float64)])
    if "history" in names:
        matrix = np.hstack([matrix, _needed(history_mean)])
    return matrix


def _needed(history_mean: np.ndarray | None) -> np.ndarray:
    if history_mean is None:
        raise ValueError("the history and context features need the samples' history rows")
    return history_mean


def history_means(items: ItemKnowledge, history: np.ndarray | None) -> np.ndarray | None:
    """The mean cloud embedding of each sample's clicked-history items (zeros for an empty history); None without rows."""
    if history is None or items.item_embeddings is None:
        return None
    mask = (history != 0)[..., None]
    return (items.item_embeddings[history] * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)


def fit_classifier(x: np.ndarray, y: np.ndarray, config: FilterConfig) -> NativeBooster:
    """A LightGBM booster on ``x``/``y`` with classes weighted to equal totals (deterministic, one thread)."""
    from device.gbdt import NativeBooster  # imports lightgbm: only devices that train a classifier pay for it

    n_pos, n_neg = float((y == 1).sum()), float((y == 0).sum())
    weight = np.where(y == 1, 0.5 / n_pos, 0.5 / n_neg) * len(y)
    params = {
        "objective": "binary", "num_leaves": config.num_leaves, "learning_rate": config.learning_rate,
        "min_data_in_leaf": config.min_data_in_leaf, "min_sum_hessian_in_leaf": 1e-3, "min_data_per_group": config.min_data_in_leaf,
        "cat_smooth": 10.0, "seed": config.seed, "deterministic": True, "force_row_wise": True, "num_threads": 1, "verbose": -1,
    }
    categorical = [k for k, name in enumerate(n for n in FEATURES if n in config.features) if name in CATEGORICAL]
    if categorical:
        params["categorical_feature"] = categorical
    # LightGBM's C API, not lgb.Dataset/lgb.Booster: the wrapper's Python costs more than the fit here (device/gbdt.py)
    return NativeBooster(x, y, weight, params, config.rounds)


def assign_folds(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold ``0..folds-1`` of each of ``n`` samples, sizes differing by at most one, in random order."""
    fold = np.empty(n, dtype=np.int64)
    fold[rng.permutation(n)] = np.arange(n) % folds
    return fold


def keep_top(values: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``ceil(fraction * n)`` highest values (ties keep the earlier index)."""
    keep = np.zeros(len(values), dtype=bool)
    keep[np.argsort(-np.asarray(values, np.float64), kind="stable")[: int(np.ceil(fraction * len(values)))]] = True
    return keep


def filter_candidates(local: pd.DataFrame, candidates: pd.DataFrame, items: ItemKnowledge,
                      config: FilterConfig = FilterConfig(), local_history: np.ndarray | None = None,
                      candidate_history: np.ndarray | None = None) -> FilterResult:
    """Score ``candidates`` out of fold against the user's ``local`` training events and apply the keep rule.

    ``*_history`` are the samples' history item rows, needed by the ``history`` feature only.
    """
    started = time.perf_counter()
    n_local, n_cand = len(local), len(candidates)
    none = np.full(n_cand, -1, dtype=np.int64)
    if n_cand == 0:
        return FilterResult(np.zeros(0, bool), np.zeros(0), np.zeros(0), none, np.full(n_local, -1), NO_CANDIDATES,
                            float("nan"), time.perf_counter() - started)
    if n_local < max(config.min_local, config.folds) or n_cand < config.folds:
        if config.fallback == "all":
            keep = np.ones(n_cand, dtype=bool)
        else:
            keep = keep_top(candidates["similarity"].to_numpy(np.float64), config.keep_fraction)
        return FilterResult(keep, keep.astype(np.float64), np.full(n_cand, np.nan), none, np.full(n_local, -1), FALLBACK,
                            float("nan"), time.perf_counter() - started)

    behaviors = (pd.Index(sorted(set(_behavior(local)) | set(_behavior(candidates)))) if "behavior" in config.features
                 else pd.Index([]))  # the behaviour codes, only when a feature uses them
    rng = np.random.default_rng(config.seed)
    local_fold, cand_fold = assign_folds(n_local, config.folds, rng), assign_folds(n_cand, config.folds, rng)
    context = bool(set(USER_CONTEXT) & set(config.features))
    local_mean, candidate_mean = history_means(items, local_history), history_means(items, candidate_history)  # once, not per fold

    if context:  # the sums per fold once; each model's features add up the folds it may use
        local_parts, cand_parts = (FoldParts.of(local, local_fold, events, items, config.folds) for events in (local, candidates))
        medians = median_times(local, local_fold, config.folds)

    def matrices(k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every sample's features for the model of fold ``k`` (see :func:`user_context`)."""
        return (features(local, items, config.features, behaviors, local_mean,
                         user_context(local_parts, local_fold, medians, k) if context else None),
                features(candidates, items, config.features, behaviors, candidate_mean,
                         user_context(cand_parts, cand_fold, medians, k) if context else None))

    score, local_score = np.empty(n_cand), np.empty(n_local)
    for k in range(config.folds):
        if k == 0 or context:  # without user-context features every fold's model sees the same matrices
            x_local, x_cand = matrices(k)
        train_x = np.vstack([x_local[local_fold != k], x_cand[cand_fold != k]])
        train_y = np.r_[np.ones((local_fold != k).sum()), np.zeros((cand_fold != k).sum())]
        booster = fit_classifier(train_x, train_y, config)
        held_out = (cand_fold == k).sum()
        # one call on one thread: LightGBM's default thread pool costs more than scoring a fold (13 ms a call)
        scored = booster.predict(np.vstack([x_cand[cand_fold == k], x_local[local_fold == k]]))
        booster.close()
        score[cand_fold == k], local_score[local_fold == k] = scored[:held_out], scored[held_out:]
    if config.rule == "top_fraction":
        keep = keep_top(score, config.keep_fraction)
    else:
        keep = score >= config.threshold
    oof_auc = auc(np.r_[np.ones(n_local), np.zeros(n_cand)], np.r_[local_score, score])
    weight = odds_weights(score, keep, config.weight_clip) if config.weighting == "odds" else keep.astype(np.float64)
    return FilterResult(keep, weight, score, cand_fold, local_fold, CLASSIFIER, oof_auc, time.perf_counter() - started)


@dataclass(frozen=True, eq=False)
class FoldParts:
    """What each fold of the user's local events says about each sample, leaving out the events of the sample's
    own item: the sums :func:`user_context` adds over the folds a model may use. Computed once per device, so the
    twice cross-fitted context costs one pass over the local events instead of one per pair of folds."""

    taste_sum: np.ndarray  # [samples, folds, d]: summed cloud embeddings of the fold's positive items
    positives: np.ndarray  # [samples, folds]: how many positives that is
    same_category: np.ndarray  # [samples, folds]: the fold's events in the sample's category
    events: np.ndarray  # [samples, folds]: the fold's events

    @classmethod
    def of(cls, local: pd.DataFrame, local_fold: np.ndarray, events: pd.DataFrame, items: ItemKnowledge,
           folds: int) -> FoldParts:
        local_rows = items.item_vocab.lookup(local["item_id"].to_numpy(np.int64))
        rows = items.item_vocab.lookup(events["item_id"].to_numpy(np.int64))
        # [samples, local] masks stay boolean: only one fold's slice at a time becomes float, for its matrix product
        other = ~_same_item(local_rows, rows)
        positive = other & (local["label"].to_numpy() == 1)[None, :]
        same = other & (events["category_id"].to_numpy(np.int64)[:, None] == local["category_id"].to_numpy(np.int64)[None, :])
        width = items.item_embeddings.shape[1] if items.item_embeddings is not None else 0
        emb = items.item_embeddings[local_rows].astype(np.float64) if width else np.zeros((len(local), 0))
        members = [local_fold == f for f in range(folds)]

        def per_fold(mask: np.ndarray) -> np.ndarray:
            return np.stack([mask[:, m].sum(axis=1) for m in members], axis=1).astype(np.float64)

        taste_sum = np.stack([positive[:, m].astype(np.float64) @ emb[m] for m in members], axis=1)
        return cls(taste_sum, per_fold(positive), per_fold(same), per_fold(other))


def user_context(parts: FoldParts, fold: np.ndarray, median_time: np.ndarray, held_out: int) -> dict:
    """What the user's own events say about each sample (of ``parts``, in folds ``fold``), as the model of fold
    ``held_out`` sees it: its taste vector (``taste``, the mean embedding of the user's positive items other than
    the sample's), category share (``share``, of the user's events other than the sample's item) and the median
    time of the user's events (``median_time[j, k]``: of the local events outside folds ``j`` and ``k``).
    Cross-fitted twice: an event of fold ``j`` is measured against the user's local events outside fold ``j``
    and outside fold ``held_out``. So a local sample is never part of what it is compared with (membership
    alone would separate the classes), and nothing the model of fold ``held_out`` learns from depends on that
    fold's local events (a training sample measured against them carries, through its fold-mates, how many of
    them share its category: an out-of-fold AUC of 0.53 on indistinguishable data)."""
    folds = np.arange(parts.positives.shape[1])
    use = ((folds[None, :] != fold[:, None]) & (folds[None, :] != held_out)).astype(np.float64)
    taste = np.einsum("nf,nfd->nd", use, parts.taste_sum) / np.maximum((use * parts.positives).sum(axis=1), 1.0)[:, None]
    share = (use * parts.same_category).sum(axis=1) / np.maximum((use * parts.events).sum(axis=1), 1.0)
    return {"taste": taste, "share": share, "median_time": median_time[fold, held_out]}


def median_times(local: pd.DataFrame, local_fold: np.ndarray, folds: int) -> np.ndarray:
    """``[j, k]``: the median time of the user's local events outside folds ``j`` and ``k``."""
    stamps = local["timestamp"].to_numpy(np.float64)
    return np.array([[np.median(stamps[(local_fold != j) & (local_fold != k)]) for k in range(folds)] for j in range(folds)])


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def odds_weights(score: np.ndarray, keep: np.ndarray, clip: float) -> np.ndarray:
    """Importance weights of the kept candidates: odds clipped to ``clip``, normalized to mean 1 (0 elsewhere)."""
    odds = np.clip(score / np.maximum(1.0 - score, 1e-12), 0.0, clip)
    weight = np.where(keep, odds, 0.0)
    mean = weight[keep].mean() if keep.any() else 0.0
    return weight / mean if mean > 0 else keep.astype(np.float64)


def _behavior(events: pd.DataFrame) -> np.ndarray:
    return events["behavior"].astype(str).to_numpy() if "behavior" in events else np.full(len(events), "")
