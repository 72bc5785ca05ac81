"""``recfl run``: the end-to-end pipeline (the main job; ``make demo`` runs it)."""

from __future__ import annotations

import json
from pathlib import Path

from recfl.app.arguments import add_config_args
from recfl.app.pipeline import ARMS, CONTROL, check_source_args, run
from recfl.app.sections import load_config
from recfl.core.formats import FORMATS


def register(commands) -> None:
    run = commands.add_parser("run", help="run the whole pipeline; stages already done are skipped")
    run.add_argument("--out", required=True, metavar="OUT")
    run.add_argument("--data", metavar="DIR", help="use an already prepared data set")
    run.add_argument("--format", choices=FORMATS, help="prepare this source instead of the synthetic default")
    run.add_argument("--path", help="data file or folder for --format")
    add_config_args(run)
    run.set_defaults(handler=_run)


def _run(args) -> int:
    check_source_args(args.data, args.format, args.path)
    overrides = list(args.overrides)
    if args.format:
        overrides += [f"data.format={args.format}"] + ([f"data.path={json.dumps(args.path)}"] if args.path else [])
    results = run(Path(args.out), load_config(args.config, overrides), data_dir=args.data)
    ab = results["ab"]
    print("\n".join(summary_lines(ab["primary"])))
    for warning in ab["warnings"]:
        print(f"  warning: {warning}")
    print(f"report: {Path(ab['report.html']).resolve()}")
    print(f"outputs: {Path(args.out).resolve()} (run.json lists every stage's results)")
    return 0


def summary_lines(primary: dict) -> list[str]:
    """The headline of a run: the primary metric, how many users it counts, each arm's value (never NaN)."""
    lines = [f"{primary['metric']} (primary metric) on the device users' test events: {primary['counted']} of "
             f"{primary['users']} users count (a user needs {primary['needs']} among its test events); "
             f"95% bootstrap interval over users, control = {CONTROL}:"]
    for arm in ARMS:
        value = primary["values"][arm]
        if value["value"] is None:
            lines.append(f"  {arm:<14} undefined: no user counts for {primary['metric']}")
        else:
            low, high = (f"{c:.4f}" if c is not None else "undefined" for c in value["ci"])
            lines.append(f"  {arm:<14} {value['value']:.4f}  [{low}, {high}]")
    return lines
