"""One writer per output folder: a non-blocking flock that the kernel releases when the process ends, however it ends."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recfl.core.errors import RecflError


@contextmanager
def exclusive(folder: Path, holder: str) -> Iterator[None]:
    """This process's hold on ``folder`` (a flock on ``folder/.lock``, which is created with the folder); if another
    process holds it, one :class:`RecflError` line naming ``holder``, the kind of program that writes such folders."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as lock:  # "a": never truncates what a stray link points to
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecflError(f"{folder} is in use by another {holder}; wait for it to finish or use another --out") from None
        yield
