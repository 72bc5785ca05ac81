"""Every ```python block of README.md runs as written: a script of its own in a fresh interpreter and an empty
folder, with TensorFlow's log level unset (as a user's shell has it), printing nothing at all."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def _name(block: str) -> str:
    """A test id: the first line that is not an import."""
    return next((line for line in block.splitlines() if line.strip() and not line.startswith(("import ", "from "))), "imports")[:60]


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4  # the Python API (pipeline, stage by stage), a model of your own, the TFF process


@pytest.mark.parametrize("block", BLOCKS, ids=[_name(b) for b in BLOCKS])
def test_readme_python_block_runs_quietly(block, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(block)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the rule under test sets it
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "" and done.stderr == ""
