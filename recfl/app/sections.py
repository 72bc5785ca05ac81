"""The config-section table: every ``[section]`` of a recfl config file and the dataclass that reads it."""

from __future__ import annotations

from pathlib import Path

from ab_testing.evaluate import AbConfig
from cloud_pool.matching import MatchConfig
from cloud_pool.pool import PoolConfig
from device.sample_filter import FilterConfig
from device.tflite_trainer import FinetuneConfig
from recfl.app.pipeline import RunConfig
from recfl.core import config
from recfl.core.dataset import DataConfig
from recfl.core.federated.simulate import FederatedConfig
from recfl.core.formats import SyntheticSpec
from recfl.core.models import ModelConfig
from recfl.core.train import TrainConfig
from streaming.settings import StreamConfig

SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "synthetic": SyntheticSpec,
    "model": ModelConfig,
    "train": TrainConfig,
    "federated": FederatedConfig,
    "pool": PoolConfig,
    "matching": MatchConfig,
    "streaming": StreamConfig,
    "run": RunConfig,
    "ab": AbConfig,
    "filter": FilterConfig,
    "finetune": FinetuneConfig,
}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """A config document from ``path`` and ``--set`` overrides; sections not in :data:`SECTIONS` are refused."""
    return config.load(path, overrides, known=SECTIONS)
