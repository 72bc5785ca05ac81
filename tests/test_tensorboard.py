"""TensorBoard summaries: federated rounds as scalars (replayed from metrics.jsonl, so a resumed run shows each
round once) and an arm's device-level results as histograms; read back from the event files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from recfl.core.summaries import RoundSummaries, device_results, round_scalars, write_distributions
from tensorboard_events import expected_rounds, histogram_counts, holds, scalars


def _record(round_number: int, loss: float) -> dict:
    record = {"round": round_number, "clients": 10, "examples": 300 + round_number, "train_loss": loss,
              "upload_bytes": 1000 * round_number, "download_bytes": 2000 * round_number, "seconds": 0.25}
    return record if round_number % 2 else {**record, "test_auc": 0.6, "test_gauc": 0.55, "test_logloss": 0.68}


def test_round_scalars_are_the_numbers_of_a_metrics_line():
    record = {**_record(2, 0.5), "note": "text", "flag": True}
    assert set(round_scalars(record)) == {f"round/{k}" for k in _record(2, 0.5) if k != "round"}


def test_round_summaries_restart_from_the_recorded_rounds(tmp_path):
    """A resume replays metrics.jsonl up to the checkpoint: rounds written after it (lost with a kill) are gone."""
    board = tmp_path / "tensorboard"
    with RoundSummaries(board) as writer:
        for r in (1, 2, 3):
            writer.write(_record(r, 0.7 - r / 100))
    lines = [_record(1, 0.69), _record(2, 0.68)]  # metrics.jsonl after the resume dropped round 3
    with RoundSummaries(board, lines) as writer:
        writer.write(_record(3, 0.5))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in [*lines, _record(3, 0.5)]))
    got = scalars(board)
    assert got == expected_rounds(metrics)
    assert got["round/train_loss"][3] == [0.5] and sorted(got["round/test_auc"]) == [2]


def test_device_results_become_one_histogram_per_number(tmp_path):
    predictions = pd.DataFrame({"user_id": [1, 1, 1, 2, 2, 3, 3], "label": [1, 0, 0, 1, 0, 1, 1],
                                "score": [0.9, 0.2, 0.95, 0.1, 0.8, 0.5, 0.6]})
    devices = pd.DataFrame({"user_id": [1, 2, 3], "epochs": [2, 5, 3], "filter_auc": [0.4, np.nan, 0.9],
                            "filter_path": ["classifier", "fallback", "classifier"], "trimmed": [False, True, False]})
    values = device_results(predictions, devices)
    assert set(values) == {"device/test_auc", "device/epochs", "device/filter_auc"}  # numbers only, not the user id
    np.testing.assert_allclose(values["device/test_auc"], [0.5, 0.0, np.nan])  # user 3 has one class
    write_distributions(tmp_path / "arm", values)
    counts = histogram_counts(tmp_path / "arm")
    assert set(counts) == set(values)
    assert all(holds(counts[tag], values[tag]) for tag in values)  # the finite values only
    assert counts["device/filter_auc"][0] == 2 and not holds(counts["device/epochs"], [2, 5])
