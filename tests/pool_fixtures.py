"""Fixtures others may reuse: a small prepared synthetic data set with a built cloud pool."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_pool.pool import build_pool
from recfl.core.dataset import PreparedDataset, prepare
from recfl.core.formats import SyntheticSpec, load
from recfl.core.pool import PoolSplit


@dataclass(frozen=True)
class BuiltPool:
    data: PreparedDataset
    pool_dir: Path
    split: PoolSplit


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory) -> BuiltPool:
    """300 synthetic users (about half sharing) with a pool built from the sharing users' training events."""
    root = tmp_path_factory.mktemp("small_pool")
    data = prepare(load("synthetic", None, SyntheticSpec(users=300, items=1500, categories=30, clusters=6, seed=11)),
                   root / "data")
    return BuiltPool(data, root / "pool", build_pool(data, root / "pool", 0.5))
