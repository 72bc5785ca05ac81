"""Shared fixtures: hand-made files in tests/fixtures and the optional ../shared/data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

pytest_plugins = ["pool_fixtures", "federated_fixtures", "kafka_fixtures"]

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


def shared(relative: str) -> Path:
    """A path under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present (the shared real data sets live beside the repository)")
    return path
