"""``recfl run`` again after new pool events, against the full run it follows, in the same process.

The full pipeline runs on synthetic data (the defaults: the ``make demo``
run); then 1% more events, of new sharing users (copies of random pool
events with new ids and later timestamps, as ``recfl stream consume --pool
OUT/pool`` would store them), go into the run's pool and the pipeline runs
again: matching, the devices of the arms that read candidates whose
candidates changed (the others are taken over) and the report rerun, the
rest is skipped (:mod:`recfl.app.pipeline`). A third run, with nothing new,
skips everything.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from recfl.app.pipeline import RunConfig
from recfl.app.pipeline import run as run_pipeline
from recfl.app.sections import load_config
from recfl.core import arms, config
from recfl.core.formats import SyntheticSpec
from recfl.core.pool import assign_roles, check_pool, open_store, pool_config
from tools.bench import Figure

BENCH = "rerun"
QUICK = ["synthetic.users=300", "synthetic.items=600", "train.epochs=1", "federated.rounds=3", "run.device_users=20",
         "run.min_evaluable_users=5", "ab.bootstrap=100"]
NEW_FRACTION = 0.01


def _timed(out: Path, doc: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    results = run_pipeline(out, doc, progress=False)
    return time.perf_counter() - start, results


def add_events(pool: Path, fraction: float, seed: int = 0) -> int:
    """Store ``fraction`` x the pool's events more, of 20 new sharing users; returns how many."""
    with open_store(pool) as store:
        events = store.read()
    roles = pool_config(check_pool(pool))
    count = max(1, round(fraction * len(events)))
    sample = events.iloc[np.random.default_rng(seed).choice(len(events), count, replace=False)].reset_index(drop=True)
    first = int(events["user_id"].max()) + 1
    sharers = assign_roles(np.arange(first, first + 1000), roles.share_fraction, roles.salt).sharing_users[:20]
    new = sample.assign(user_id=sharers[np.arange(count) % len(sharers)], event_id=[f"bench-new-{k}" for k in range(count)],
                        timestamp=int(events["timestamp"].max()) + 1 + np.arange(count))
    with open_store(pool) as store:
        return store.append(new).written


def run(size: str) -> list[Figure]:
    doc = load_config(None, QUICK if size == "quick" else [])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        full, _ = _timed(out, doc)
        added = add_events(out / "pool", NEW_FRACTION)
        rerun, results = _timed(out, doc)
        unchanged, _ = _timed(out, doc)
    users, devices = config.section(SyntheticSpec, doc, "synthetic").users, config.section(RunConfig, doc, "run").device_users
    what = f"synthetic {users:,} users, {devices} device users personalized; one run each"
    arm_runs = {arm.name: results[f"arm-{arm.name}"] for arm in arms.ARMS if arm.candidates}
    again = "; ".join(f"{name}: {r['users'] - r['reused_devices']} of {r['users']} devices personalized again"
                      for name, r in arm_runs.items())
    return [Figure(BENCH, f"recfl run again after {NEW_FRACTION:.0%} new pool events ({added:,}): matching, the changed "
                          "devices of the candidate arms, report", rerun, "s", "the full run before it", full, f"{what}; {again}"),
            Figure(BENCH, "recfl run again with nothing new (every stage skipped)", unchanged, "s", "the full run before it",
                   full, what)]
