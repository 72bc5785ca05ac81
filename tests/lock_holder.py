"""A folder held by another process (recfl/core/locks.py), as a second recfl run or grid would hold it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOLD = ("import sys, time; from pathlib import Path; from recfl.core.locks import exclusive\n"
        "with exclusive(Path(sys.argv[1]), sys.argv[2]):\n print('held', flush=True); time.sleep(float(sys.argv[3]))")


@contextmanager
def held_elsewhere(folder: Path, holder: str) -> Iterator[None]:
    """``folder`` held by a child process for the duration of the block; the child is killed after it."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), holder, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        yield
    finally:
        child.kill()
        child.wait()


def try_hold(folder: Path, holder: str) -> subprocess.CompletedProcess:
    """A child process that takes ``folder`` and lets it go at once."""
    return subprocess.run([sys.executable, "-c", HOLD, str(folder), holder, "0"], capture_output=True, text=True)
