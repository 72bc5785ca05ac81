"""What every command module shares: the argument parser with one-line errors, config options, JSON output."""

from __future__ import annotations

import argparse
import json

from recfl.app.sections import load_config


class Parser(argparse.ArgumentParser):
    """argparse with the same one-line errors as every other user mistake."""

    def error(self, message):
        self.exit(2, f"recfl: error: {message} (see {self.prog} --help)\n")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set section.key=value``."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (see configs/default.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 (repeatable)")


def config_doc(args) -> dict:
    """The config document of a command's ``--config`` and ``--set`` options."""
    return load_config(args.config, args.overrides)


def print_json(payload) -> None:
    """Results go to stdout as JSON; logs and progress go to stderr."""
    print(json.dumps(payload, indent=2, sort_keys=True, default=str))
