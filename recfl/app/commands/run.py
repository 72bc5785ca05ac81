"""``recfl run``: the end-to-end pipeline (the main job; ``make demo`` runs it)."""

from __future__ import annotations

import json
from pathlib import Path

from recfl.app.arguments import add_config_args
from recfl.app.pipeline import ARMS, CONTROL, GLOBAL, check_source_args, run
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
    print(f"gAUC on the device users' test events (95% bootstrap interval over users), control = {CONTROL}:")
    for arm in ARMS:
        value = ab["gauc"][arm]
        print(f"  {arm:<14} {value['value']:.4f}  [{value['ci'][0]:.4f}, {value['ci'][1]:.4f}]")
    for arm in (a for a in GLOBAL if "privacy" in results[a]):
        p = results[arm]["privacy"]
        print(f"  {arm} was trained privately: epsilon {p['epsilon']} at delta {p['delta']} (clip {p['clip_norm']}, noise "
              f"multiplier {p['noise_multiplier']}; randomized response p = {p['keep_probability']}, q = {p['fake_probability']})")
    for warning in ab["warnings"]:
        print(f"  warning: {warning}")
    print(f"report: {Path(ab['report.html']).resolve()}")
    print(f"outputs: {Path(args.out).resolve()} (run.json lists every stage's results)")
    return 0
