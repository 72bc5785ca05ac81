"""TensorBoard summaries (``tf.summary`` event files, ``tensorboard --logdir``): federated rounds as scalars and
an arm's device-level results as histograms.

``metrics.jsonl`` stays the record of a simulation: :class:`RoundSummaries` starts a fresh event folder by
replaying it, so after a kill and ``--resume`` (which drops the rounds after the checkpoint) the curves still
show each round once, with the values ``metrics.jsonl`` holds.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.metrics import per_user_auc

SUMMARIES = "tensorboard"  # the event folder of a simulation (RUNDIR/tensorboard) or a run (OUT/tensorboard/<stage>)


def round_scalars(record: dict) -> dict[str, float]:
    """The scalars of one ``metrics.jsonl`` line: every number but the round itself, tagged ``round/<key>``."""
    return {f"round/{key}": float(value) for key, value in record.items()
            if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class RoundSummaries:
    """Scalars per federated round in ``logdir`` (replaced), starting with the rounds of ``history``; each
    :meth:`write` is flushed, so TensorBoard shows a round as soon as it ends."""

    def __init__(self, logdir: Path, history: Iterable[dict] = ()):
        import tensorflow as tf

        shutil.rmtree(logdir, ignore_errors=True)
        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(logdir))
        for record in history:
            self.write(record)

    def write(self, record: dict) -> None:
        with self._writer.as_default(step=int(record["round"])):
            for tag, value in round_scalars(record).items():
                self._tf.summary.scalar(tag, value)
        self._writer.flush()

    def __enter__(self) -> RoundSummaries:
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()


def device_results(predictions: pd.DataFrame, devices: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """An arm's results per device: the AUC of each user's scored test events (users with both classes) and
    every numeric column of the per-device report (``PRED.devices/users.parquet``) when the arm has one."""
    users = per_user_auc(predictions["user_id"].to_numpy(), predictions["label"].to_numpy(), predictions["score"].to_numpy())
    out = {"device/test_auc": users["auc"].to_numpy(np.float64)}
    if devices is not None:
        numeric = devices.drop(columns="user_id").select_dtypes("number")
        out.update({f"device/{name}": numeric[name].to_numpy(np.float64) for name in numeric.columns})
    return out


def write_distributions(logdir: Path, values: dict[str, np.ndarray]) -> None:
    """One histogram per tag of its finite values (tags without any are left out), in ``logdir`` (replaced)."""
    import tensorflow as tf

    shutil.rmtree(logdir, ignore_errors=True)
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default(step=0):
        for tag, array in values.items():
            finite = array[np.isfinite(array)]
            if len(finite):
                tf.summary.histogram(tag, finite)
    writer.close()
