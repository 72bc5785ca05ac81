"""Simulated predictions files with a known effect, for the A/B harness's tests and benchmark.

Generative model, per user u and test event e (all arms score the same events):

    propensity  a_u ~ Normal(base, 0.8)        events  n_u ~ 1 + Poisson(events_per_user - 1)
    relevance   z_ue ~ Normal(0, 1)            click   y_ue ~ Bernoulli(sigmoid(a_u + 1.5 z_ue))
    arm score   sigmoid(a_u + 1.5 z_ue + noise_arm * eps_ue + bias_arm),  eps independent per arm

An arm with less noise ranks and calibrates better (higher AUC, gAUC, HR, NDCG,
lower logloss); the size of the effect is set by the noises. The population
value of a metric is its limit over infinitely many users, approximated by
simulating many users (see tests/test_ab_coverage.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfl.core.schema import PREDICTION_COLUMNS


@dataclass(frozen=True)
class SimArm:
    """One simulated scorer: ``noise`` blurs the true relevance, ``bias`` shifts its logits (miscalibration)."""

    name: str
    noise: float
    bias: float = 0.0


def simulate(users: int, arms: Sequence[SimArm], events_per_user: float = 10.0, seed: int = 0,
             base: float = -1.0, first_user: int = 0) -> pd.DataFrame:
    """All ``arms`` scoring the same simulated test events of ``users`` users (predictions columns)."""
    rng = np.random.default_rng(seed)
    n = 1 + rng.poisson(max(events_per_user - 1, 0), users)
    user = np.repeat(np.arange(first_user, first_user + users, dtype=np.int64), n)
    rank = np.arange(len(user)) - np.repeat(np.cumsum(n) - n, n)  # event index within its user
    logit = np.repeat(rng.normal(base, 0.8, users), n) + 1.5 * rng.normal(size=len(user))
    label = (rng.random(len(user)) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    item = rng.integers(1, 50_000, len(user))
    timestamp = 1_700_000_000 + 60 * rank
    frames = []
    for arm in arms:
        score = 1 / (1 + np.exp(-(logit + arm.noise * rng.normal(size=len(user)) + arm.bias)))
        frames.append(pd.DataFrame({"user_id": user, "item_id": item, "label": label, "score": score,
                                    "timestamp": timestamp, "arm": arm.name}))
    return pd.concat(frames, ignore_index=True).astype(PREDICTION_COLUMNS)


def write_arms(frame: pd.DataFrame, out: Path) -> list[Path]:
    """One ``<arm>.parquet`` per arm under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for arm, rows in frame.groupby("arm", sort=False):
        paths.append(out / f"{arm}.parquet")
        rows.to_parquet(paths[-1], index=False)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--events-per-user", type=float, default=10.0)
    parser.add_argument("--arm", action="append", default=[], metavar="NAME:NOISE[:BIAS]",
                        help="a simulated arm (repeatable); default control:1.0 and better:0.7")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    specs = [a.split(":") for a in args.arm] or [["control", "1.0"], ["better", "0.7"]]
    arms = [SimArm(s[0], float(s[1]), float(s[2]) if len(s) > 2 else 0.0) for s in specs]
    for path in write_arms(simulate(args.users, arms, args.events_per_user, args.seed), args.out):
        print(path)


if __name__ == "__main__":
    main()
