"""A graceful stop: the first SIGINT/SIGTERM asks a long-running command to finish what it is doing."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(stop: Callable[[], None], doing: str):
    """The first SIGINT/SIGTERM calls ``stop`` (a graceful stop); a second one acts as usual (interrupts at once)."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum, _frame):
        log.info("%s: %s (send it again to stop at once)", signal.Signals(signum).name, doing)
        for sig, old in previous.items():
            signal.signal(sig, old)
        stop()

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
