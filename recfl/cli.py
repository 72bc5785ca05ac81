"""The ``recfl`` command: one entry point for every stage.

Each command module exposes ``register(subparsers)``; handlers import their
heavy dependencies (TensorFlow, TFF, LightGBM) only when they run, so
``recfl --help`` and the data commands start fast. User mistakes raise
:class:`RecflError` and end as one ``recfl: error: ...`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from recfl import __version__
from recfl.errors import RecflError

COMMAND_MODULES = (
    "recfl.commands.data",
    "recfl.commands.train",
    "recfl.commands.predict",
    "recfl.commands.simulate",
    "recfl.commands.run",
    "recfl.commands.bench",
    "cloud_pool.cli",
    "ab_testing.cli",
    "streaming.cli",
    "device.cli",
)


class Parser(argparse.ArgumentParser):
    """argparse with the same one-line errors as every other user mistake."""

    def error(self, message):
        self.exit(2, f"recfl: error: {message} (see {self.prog} --help)\n")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set section.key=value``."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (see configs/default.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 (repeatable)")


def print_json(payload) -> None:
    """Results go to stdout as JSON; logs and progress go to stderr."""
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))


def build_parser() -> Parser:
    parser = Parser(prog="recfl", description="Device-cloud collaborative recommender training.")
    parser.add_argument("--version", action="version", version=f"recfl {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def _quiet_tensorflow(level: str) -> None:
    """TensorFlow's C++ start-up chatter (CUDA probes on a CPU machine) unless debugging."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if level == "DEBUG" else "3")
    for name in ("absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error already printed as one line
        return int(exit.code or 0)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_tensorflow(args.log_level)
    try:
        return int(args.handler(args) or 0)
    except RecflError as exc:
        print(f"recfl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head`: not an error worth a message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(f"recfl: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recfl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
