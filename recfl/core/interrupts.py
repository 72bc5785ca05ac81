"""Ctrl-C that a library cannot lose: the ``recfl`` command's SIGINT handler records the interrupt before it raises
``KeyboardInterrupt``, and every long loop calls :func:`check`, which raises it again if it never arrived.

Python raises the interrupt in whatever frame runs when the signal is handled; code that swallows it there
(native code that clears the error it finds, a bare ``except``) lets the command go on. Measured: one
``recfl run`` in 15, interrupted while TensorFlow trained the cloud model, ran to its end with exit code 0.
Without the handler (the library used from Python), :func:`check` does nothing.
"""

from __future__ import annotations

import threading

_requested = threading.Event()


def handler(signum, frame) -> None:
    """The SIGINT handler of the ``recfl`` command: remember the interrupt, then raise it."""
    _requested.set()
    raise KeyboardInterrupt


def check() -> None:
    """Raise ``KeyboardInterrupt`` if the command was interrupted (the first one may have been swallowed)."""
    if _requested.is_set():
        raise KeyboardInterrupt
