"""Importing recfl keeps TensorFlow's C++ logging off unless the user set its level (the command line's
``--log-level DEBUG`` turns it back on); the README blocks (tests/test_readme.py) check that nothing is printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _level(code: str, preset: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if preset is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = preset
    script = f"import os, recfl\n{code}\nprint(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(("code", "preset", "level"), [
    ("", None, "3"),  # quiet by default
    ("recfl.quiet_libraries(debug=True)", None, "0"),  # recfl --log-level DEBUG
    ("", "1", "1"),  # the user's choice wins
    ("recfl.quiet_libraries(debug=True)", "2", "2"),
])
def test_tensorflow_log_level(code, preset, level):
    assert _level(code, preset) == level


def test_python_loggers_of_the_libraries_are_at_warning():
    script = "import logging, recfl\nprint(*(logging.getLogger(n).level for n in ('absl', 'tensorflow', 'matplotlib')))"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split() == ["30"] * 3
