"""The ``recfl`` command: one entry point for every stage.

Command modules (``recfl.app.commands``) each expose ``register(subparsers)``;
other packages add commands through the ``recfl.commands`` entry-point group
(``recfl bench`` comes from ``tools`` that way, so the app never imports the
layer above it). Handlers import TensorFlow, TFF and LightGBM only when they
run, so ``recfl --help`` starts fast. User mistakes raise
:class:`RecflError` and end as one ``recfl: error: ...`` line with exit code 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from functools import partial
from importlib.metadata import entry_points

from recfl import __version__
from recfl.app.arguments import Parser
from recfl.app.commands import (
    ab,
    data,
    personalize,
    pool,
    predict,
    run,
    simulate,
    stream,
    train,
)
from recfl.core.errors import RecflError, os_error_line
from recfl.core.quiet import quiet_libraries

COMMANDS = (data, train, predict, simulate, run, pool, ab, stream, personalize)


def build_parser() -> Parser:
    parser = Parser(prog="recfl", description="Device-cloud collaborative recommender training.")
    parser.add_argument("--version", action="version", version=f"recfl {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.register(commands)
    for plugin in sorted(entry_points(group="recfl.commands"), key=lambda e: e.name):
        plugin.load()(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    previous = sys.unraisablehook
    sys.unraisablehook = partial(_interrupt_again, previous)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C anywhere, workers included (device/personalize.py): one line, exit 130
        print("recfl: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.unraisablehook = previous


def _interrupt_again(hook, unraisable) -> None:
    """A Ctrl-C that landed in a callback Python cannot raise from (a gc callback, ``__del__``) would be
    printed with a traceback and lost: send it again a moment later, once the callback has returned."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        again = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
        again.daemon = True
        again.start()
    else:
        hook(unraisable)


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error already printed as one line
        return int(exit.code or 0)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_libraries(debug=args.log_level == "DEBUG")  # TensorFlow's C++ chatter back on for --log-level DEBUG
    try:
        return int(args.handler(args) or 0)
    except RecflError as exc:
        print(f"recfl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head`: not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"recfl: error: {os_error_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
