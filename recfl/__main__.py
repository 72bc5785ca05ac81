"""``recfl`` and ``python -m recfl``: the command line of :mod:`recfl.app.cli`.

Ctrl-C is quiet from the first instant: while the command modules load
(pandas, NumPy, SciPy: a second or two) it ends the process with
``recfl: interrupted`` and exit code 130, as :func:`recfl.app.cli.main`
does once they are loaded.
"""

import logging
import os
import signal
import sys


def _interrupted_while_loading(signum, frame) -> None:
    print("recfl: interrupted", file=sys.stderr)
    raise SystemExit(130)


signal.signal(signal.SIGINT, _interrupted_while_loading)

from recfl.app.cli import main  # noqa: E402  (after the handler: loading it is the slow part)
from recfl.core import interrupts  # noqa: E402


def start() -> int:
    """The ``recfl`` console script: Ctrl-C raises KeyboardInterrupt again (and is remembered, so that a library that
    swallows it cannot keep the command going: :mod:`recfl.core.interrupts`), which ``main`` turns into exit 130.

    An interrupted command then leaves at once, without the interpreter's teardown: everything it keeps is
    already written (atomically) and its workers are gone, while the static destructors of a TensorFlow
    interrupted mid-start can abort the process ("terminate called without an active exception", exit -6).
    """
    signal.signal(signal.SIGINT, interrupts.handler)
    code = main()
    if code == 130:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a reader gone, a stream closed: nothing more to say
                pass
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(start())
