"""``recfl run --stream``: one living system on a live topic.

The pipeline runs once; then, cycle after cycle, the stream consumer
appends the topic's new events to the run's pool (``OUT/pool``) for a
window, and the pipeline runs again. Its fingerprints see the pool's new
version (:mod:`recfl.app.pipeline`), so matching, the arms that read the
candidates and the report rerun on the new events; everything else is
skipped. Both halves keep their own guarantees: the consumer commits only
what is durable in the pool (a killed window is read again, exactly once
into the pool) and a killed pipeline resumes where it stopped, so a
killed loop started again continues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recfl.app.pipeline import run
from recfl.core.pool import pool_summary
from streaming.consumer import StreamConsumer
from streaming.settings import StreamConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cycle:
    """One turn of the loop: its window's consumer counters (none for the first run) and the pipeline's results."""

    number: int
    consumed: dict | None
    results: dict
    pool: dict  # the pool's live counts after the window (recfl.core.pool.pool_summary)


def live(out: Path, doc: dict, settings: StreamConfig, every_s: float, cycles: int | None = None,
         data_dir: Path | None = None, force: bool = False, stop: threading.Event | None = None) -> Iterator[Cycle]:
    """Run the pipeline, then for each further cycle consume ``settings.topic`` into ``out/pool`` for ``every_s``
    seconds and run it again; ``cycles`` in all (None: until ``stop`` is set, which also ends a window early)."""
    stop = stop or threading.Event()
    out = Path(out)
    number, consumed = 1, None
    while True:
        results = run(out, doc, data_dir, force=force and number == 1)
        summary = pool_summary(out / "pool")
        log.info("cycle %d: the pool holds %d events (%d shared), %d candidate rows", number, summary["pool_events"],
                 summary["shared_events"], results["candidates"]["rows"])
        yield Cycle(number, consumed, results, summary)
        if stop.is_set() or (cycles is not None and number >= cycles):
            return
        number += 1
        consumed = _window(out / "pool", settings, every_s, stop)


def _window(pool: Path, settings: StreamConfig, every_s: float, stop: threading.Event) -> dict:
    """Consume into ``pool`` (built by the pipeline: its own roles) for ``every_s`` seconds or until ``stop``."""
    consumer = StreamConsumer(settings, pool)
    done = threading.Event()

    def watch():
        end = time.monotonic() + every_s
        while time.monotonic() < end and not done.is_set() and not stop.is_set():
            stop.wait(0.2)
        consumer.stop()

    threading.Thread(target=watch, name="recfl-live-window", daemon=True).start()
    try:
        return consumer.run().report()
    finally:
        done.set()


__all__ = ["Cycle", "live"]
