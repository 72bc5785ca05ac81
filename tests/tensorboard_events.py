"""Reading TensorBoard event folders back (``tf.compat.v1.train.summary_iterator``) for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recfl.core.summaries import round_scalars


def read_events(logdir: Path) -> dict[str, dict[int, list[np.ndarray]]]:
    """``{tag: {step: [value, ...]}}`` over every event file of ``logdir`` (a value written twice shows twice)."""
    import tensorflow as tf

    out: dict[str, dict[int, list[np.ndarray]]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                out.setdefault(value.tag, {}).setdefault(event.step, []).append(tf.make_ndarray(value.tensor))
    return out


def scalars(logdir: Path) -> dict[str, dict[int, list[float]]]:
    return {tag: {step: [float(v) for v in values] for step, values in steps.items()} for tag, steps in read_events(logdir).items()}


def expected_rounds(metrics_jsonl: Path) -> dict[str, dict[int, list[float]]]:
    """What the round summaries of a ``metrics.jsonl`` must hold: each number once per round, as float32."""
    out: dict[str, dict[int, list[float]]] = {}
    for line in metrics_jsonl.read_text().splitlines():
        record = json.loads(line)
        for tag, value in round_scalars(record).items():
            out.setdefault(tag, {})[record["round"]] = [float(np.float32(value))]
    return out


def histogram_counts(logdir: Path) -> dict[str, tuple[float, float, float]]:
    """``{tag: (values counted, lowest left edge, highest right edge)}`` of the histograms at step 0."""
    out = {}
    for tag, steps in read_events(logdir).items():
        (buckets,) = steps[0]
        out[tag] = (float(buckets[:, 2].sum()), float(buckets[:, 0].min()), float(buckets[:, 1].max()))
    return out


def holds(histogram: tuple[float, float, float], values) -> bool:
    """Whether a histogram of :func:`histogram_counts` counts exactly the finite ``values``, all within its edges
    (TensorBoard widens the range around values that are all equal)."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    count, low, high = histogram
    return count == len(finite) and low <= finite.min() + 1e-6 and finite.max() - 1e-6 <= high
