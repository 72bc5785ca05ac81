"""The pool writer: a child process that appends the consumer's batches to the pool's store, in order.

A process, not a thread: the SQLite index, the Parquet files and their
fsyncs run beside the consumer's poll loop on another core, and no lock of
the interpreter makes either wait for the other. Batches travel as msgpack
(msgspec), results come back in the same order.

A batch whose append fails for a reason of its own (not of the disk or the
index) is split in halves until the failing events are alone; those are
reported with their error, the others stored. A fault of the environment
(:class:`EnvironmentFault`) or any other failure ends the child with a
message the consumer raises. The child ignores SIGINT and SIGTERM (the
consumer decides when to stop) and ends when the consumer closes the pipe or
dies.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pyarrow as pa

from recfl.core.errors import EnvironmentFault, RecflError
from recfl.core.store import ARROW_SCHEMA, AppendResult, PoolStore
from streaming.events import Event

log = logging.getLogger(__name__)
_ENCODER = msgspec.msgpack.Encoder()
_EVENTS = msgspec.msgpack.Decoder(list[Event])


@dataclass(frozen=True)
class WriteResult:
    """One batch made durable: stored and skipped counts, positions of conflicts, failed positions with why."""

    written: int = 0
    duplicates: int = 0
    conflicts: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)


class PoolWriter:
    """The consumer's handle on its writer process, started at once (it opens the pool while the consumer joins
    its group). Not thread-safe: the consumer uses it from one thread at a time (its poll loop, or the
    rebalance listener while the loop waits in ``poll``)."""

    def __init__(self, store: Path):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, str(store)), name="recfl-pool-writer", daemon=True)
        self._process.start()
        child.close()
        self.in_flight = 0
        self._ready = False

    def submit(self, events: list[Event]) -> None:
        """Send a batch; its :class:`WriteResult` comes from :meth:`receive`, after those of earlier batches."""
        if not self._ready:  # the first word: ready, or the fault that kept it from opening the pool
            self._receive()
            self._ready = True
        try:
            self._conn.send_bytes(_ENCODER.encode(events))
        except OSError:  # the child died: read up to its last word, which says why
            while True:
                self._receive()
        self.in_flight += 1

    def has_result(self) -> bool:
        return bool(self.in_flight) and self._conn.poll()

    def receive(self) -> WriteResult:
        """The result of the oldest batch in flight (waiting for it)."""
        result = self._receive()
        self.in_flight -= 1
        return result

    def _receive(self):
        try:
            kind, value = self._conn.recv()
        except (EOFError, OSError):
            self._process.join(5)
            raise EnvironmentFault(f"the pool writer process died (exit code {self._process.exitcode})") from None
        if kind == "fault":
            raise EnvironmentFault(value)
        return value

    def close(self) -> None:
        """Stop the child once it has finished what it holds."""
        try:
            self._conn.send_bytes(b"")
        except OSError:
            pass
        self._process.join(60)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def _serve(conn, path: str) -> None:
    """The child: open the pool's store (the consumer has made or checked the pool), then append each batch
    received until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        store = PoolStore(path, create=False)
    except RecflError as exc:
        conn.send(("fault", str(exc)))
        return
    conn.send(("ready", None))
    with store:
        while True:
            try:
                data = conn.recv_bytes()
            except EOFError:  # the consumer is gone
                return
            if not data:
                return
            try:
                conn.send(("done", _write(store, _EVENTS.decode(data))))
            except EnvironmentFault as exc:
                conn.send(("fault", str(exc)))
                return
            except Exception as exc:  # a broken invariant: the consumer stops rather than guess
                conn.send(("fault", f"writing to the pool failed: {type(exc).__name__}: {exc}"))
                return


def _write(store: PoolStore, events: list[Event]) -> WriteResult:
    written = duplicates = 0
    conflicts, failed = [], []
    for start, outcome in _append(store, events, 0):
        if isinstance(outcome, AppendResult):
            written, duplicates = written + outcome.written, duplicates + outcome.duplicates
            conflicts += [start + r for r in outcome.conflicts]
        else:
            failed.append((start, f"{type(outcome).__name__}: {outcome}"))
    return WriteResult(written, duplicates, conflicts, failed)


def _append(store: PoolStore, events: list[Event], start: int) -> Iterator[tuple[int, AppendResult | Exception]]:
    """Append ``events`` (positions ``start``...); a failure of the rows splits them in halves until the failing
    ones are alone. Yields (first position, AppendResult) or (position, the exception of that one event)."""
    if not events:
        return
    try:
        yield start, store.append_table(table(events))
    except EnvironmentFault:
        raise
    except Exception as exc:
        if len(events) == 1:
            yield start, exc
            return
        log.warning("a batch of %d events failed (%s: %s); isolating the failing ones", len(events),
                    type(exc).__name__, exc)
        half = len(events) // 2
        yield from _append(store, events[:half], start)
        yield from _append(store, events[half:], start + half)


def table(events: list[Event]) -> pa.Table:
    """Events as an Arrow table of the pool's schema, built column by column (attribute loads written out:
    three times faster than ``getattr`` by name)."""
    columns = ([e.event_id for e in events], [e.user_id for e in events], [e.item_id for e in events],
               [e.category_id for e in events], [e.label for e in events], [e.timestamp for e in events],
               [e.behavior for e in events])
    return pa.table([pa.array(c, type=t) for c, t in zip(columns, ARROW_SCHEMA.types)], schema=ARROW_SCHEMA)
