"""One writer per output folder: a non-blocking flock that the kernel releases when the process ends, however it ends."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recfl.core.errors import RecflError

_HELD: set[Path] = set()  # folders this process holds: a hold inside a hold of the same folder passes


@contextmanager
def exclusive(folder: Path, holder: str) -> Iterator[None]:
    """This process's hold on ``folder`` (a flock on ``folder/.lock``, which is created with the folder); if another
    process holds it, one :class:`RecflError` line naming ``holder``, the kind of program that writes such folders.
    Within one process the hold nests (a run of several seeds holds its folder around the pooled report's run)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        yield
        return
    with open(folder / ".lock", "a") as lock:  # "a": never truncates what a stray link points to
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecflError(f"{folder} is in use by another {holder}; wait for it to finish or use another --out") from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
