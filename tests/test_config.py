"""TOML config sections, overrides and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from recfl.app.sections import SECTIONS, load_config
from recfl.core import config
from recfl.core.errors import RecflError
from recfl.core.models import ModelConfig
from recfl.core.train import TrainConfig


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
    """Every registered section is in configs/default.toml with exactly the dataclass's defaults."""
    doc = load_config(Path(__file__).parents[1] / "configs" / "default.toml")
    assert set(doc) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert config.section(cls, doc, name) == cls(), name


@pytest.mark.parametrize("text,overrides,message", [
    ("", ["trian.epochs=5"], "unknown section(s) trian"),
    ("train = 5\n", [], "[train] must be a table of settings, got 5"),
    ("", ["train.epochs=0"], "train.epochs = 0 must be >= 1"),
    ("", ["train.learning_rate=-0.1"], "train.learning_rate = -0.1 must be > 0"),
    ("", ["model.hidden=[8, 0]"], "model.hidden = (8, 0) must be >= 1"),
])
def test_unknown_sections_and_out_of_range_values_are_refused(tmp_path, text, overrides, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(RecflError) as err:
        doc = load_config(path, overrides)
        config.section(ModelConfig if "model" in message else TrainConfig, doc, "model" if "model" in message else "train")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("rule,inside,outside", [
    (">= 1", [1, 2.5], [0, -1]), ("> 0", [1e-9], [0]), ("<= 3", [3], [3.01]),
    ("[0, 1]", [0, 1], [-0.01, 1.01]), ("(0, 1)", [0.5], [0, 1]), ("[0, 1)", [0], [1]), ("(0, 1]", [1], [0]),
])
def test_limits(rule, inside, outside):
    from dataclasses import dataclass

    @dataclass
    class Knob:
        x: float

    for value in inside:
        config.check_limits(Knob(value), "s", x=rule)
    for value in outside:
        with pytest.raises(RecflError, match=r"s\.x = .* must be"):
            config.check_limits(Knob(value), "s", x=rule)


def test_every_shipped_config_is_valid():
    """configs/*.toml load, name only known sections and keys, and every value is in range."""
    files = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert len(files) >= 2
    for path in files:
        doc = load_config(path)
        for name in doc:
            config.section(SECTIONS[name], doc, name)
