"""TOML config sections, overrides and their errors."""

from __future__ import annotations

import pytest

from recfl import config
from recfl.errors import RecflError
from recfl.model import ModelConfig
from recfl.train import TrainConfig


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 4\nlearning_rate = 1\n[model]\nhidden = [8, 4]\n")
    doc = config.load(path, ["train.epochs=7", "data.format=taobao"])
    train = config.section(TrainConfig, doc, "train")
    assert train.epochs == 7 and train.learning_rate == 1.0 and isinstance(train.learning_rate, float)
    assert config.section(ModelConfig, doc, "model").hidden == (8, 4)
    assert doc["data"]["format"] == "taobao"
    assert config.section(TrainConfig, doc, "train", epochs=2).epochs == 2


@pytest.mark.parametrize("text,overrides,message", [
    ("[train]\nepoch = 3\n", [], "unknown key(s) epoch in [train]"),
    ("[train]\nepochs = 'three'\n", [], "train.epochs = 'three' must be int"),
    ("[train\n", [], "invalid TOML"),
    ("", ["epochs=3"], "expected section.key=value"),
    ("[model]\nhidden = 8\n", [], "model.hidden must be a list"),
])
def test_errors_are_one_clear_line(tmp_path, text, overrides, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(RecflError) as err:
        config.section(TrainConfig if "model" not in text else ModelConfig, config.load(path, overrides),
                       "train" if "model" not in text else "model")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(RecflError, match="config file not found"):
        config.load(tmp_path / "nope.toml")


def test_default_toml_documents_the_real_defaults():
    from pathlib import Path

    from ab_testing.evaluate import AbConfig
    from cloud_pool.matching import MatchConfig
    from cloud_pool.pool import PoolConfig
    from device.sample_filter import FilterConfig
    from device.tflite_trainer import FinetuneConfig
    from recfl.dataset import DataConfig
    from recfl.pipeline import RunConfig
    from recfl.federated.simulate import FederatedConfig
    from recfl.formats import SyntheticSpec
    from streaming.settings import StreamConfig

    doc = config.load(Path(__file__).parents[1] / "configs" / "default.toml")
    sections = {"data": DataConfig, "synthetic": SyntheticSpec, "model": ModelConfig, "train": TrainConfig,
                "pool": PoolConfig, "matching": MatchConfig, "federated": FederatedConfig, "ab": AbConfig,
                "filter": FilterConfig, "finetune": FinetuneConfig,
                "streaming": StreamConfig, "run": RunConfig}
    for name, cls in sections.items():
        assert config.section(cls, doc, name) == cls(), name
