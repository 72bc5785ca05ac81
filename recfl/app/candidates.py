"""Where a device's candidates come from: a candidates directory written by ``recfl pool match``, or coarse
matching against the pool on the fly (the pool loaded once, when the first device asks for candidates, so an
arm that needs none never loads it)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from cloud_pool.matching import MatchConfig, Matcher
from device.personalize import CandidateSource
from recfl.core.candidates import read_candidates
from recfl.core.dataset import PreparedDataset


def candidate_source(data: PreparedDataset, pool_dir: Path, candidates_dir: Path | None = None,
                     match_config: MatchConfig = MatchConfig()) -> CandidateSource:
    """Device user ids -> their candidates table, read from ``candidates_dir`` or matched now."""
    if candidates_dir is not None:
        return lambda users: read_candidates(candidates_dir, users=users)
    matcher = cache(lambda: Matcher(pool_dir, data, match_config))
    with_train = cache(lambda: data.train["user_id"].unique())

    def match(users: np.ndarray) -> pd.DataFrame:
        return matcher().candidates(np.intersect1d(users, with_train()))  # a profile needs training events

    return match
