"""``recfl run``: the end-to-end pipeline (the main job; ``make demo`` runs it)."""

from __future__ import annotations

import json
from pathlib import Path

from recfl.app.arguments import add_config_args
from recfl.app.pipeline import ARMS, CONTROL, GLOBAL, check_not_seeds, check_source_args, run, run_seeds
from recfl.app.sections import load_config
from recfl.core.formats import FORMATS


def register(commands) -> None:
    run = commands.add_parser("run", help="run the whole pipeline; stages already done are skipped")
    run.add_argument("--out", required=True, metavar="OUT")
    run.add_argument("--data", metavar="DIR", help="use an already prepared data set")
    run.add_argument("--format", choices=FORMATS, help="prepare this source instead of the synthetic default")
    run.add_argument("--path", help="data file or folder for --format")
    run.add_argument("--force", action="store_true", help="replace a run of another data set that OUT holds")
    run.add_argument("--seeds", type=int, nargs="+", metavar="N",
                     help="run once per seed into OUT/seed-N/ (model, federated and device seeds set to N; the same data "
                          "split and pool) and compare the arms pooled over the seeds in OUT/ab/")
    add_config_args(run)
    run.set_defaults(handler=_run)


def _run(args) -> int:
    check_source_args(args.data, args.format, args.path)
    overrides = list(args.overrides)
    if args.format:
        overrides += [f"data.format={args.format}"] + ([f"data.path={json.dumps(args.path)}"] if args.path else [])
    out, doc = Path(args.out), load_config(args.config, overrides)
    if args.seeds is None:
        check_not_seeds(out)
        results = run(out, doc, data_dir=args.data, force=args.force)
        ab = results["ab"]
    else:
        pooled = run_seeds(out, doc, args.seeds, data_dir=args.data, force=args.force)
        results, ab = next(iter(pooled["seeds"].values())), pooled["ab"]
    print("\n".join(summary_lines(ab["primary"])))
    for arm in (a for a in GLOBAL if "privacy" in results[a]):
        p = results[arm]["privacy"]
        print(f"  {arm} was trained privately: epsilon {p['epsilon']} at delta {p['delta']} (clip {p['clip_norm']}, noise "
              f"multiplier {p['noise_multiplier']}; randomized response p = {p['keep_probability']}, q = {p['fake_probability']})")
    for warning in ab["warnings"]:
        print(f"  warning: {warning}")
    print(f"report: {(Path(args.out) / ab['report.html']).resolve()}")
    print(f"outputs: {Path(args.out).resolve()} (run.json lists every stage's results)")
    return 0


def summary_lines(primary: dict) -> list[str]:
    """The headline of a run: the primary metric, how many users it counts, each arm's value (never NaN); pooled over
    seeds, also the seeds and each arm's lift over the control with each seed's own."""
    seeds = primary.get("seeds")
    over = (f", mean over {len(seeds)} seeds ({', '.join(seeds)})" if seeds else "")
    lines = [f"{primary['metric']} (primary metric) on the device users' test events{over}: {primary['counted']} of "
             f"{primary['users']} users count (a user needs {primary['needs']} among its test events); "
             f"95% bootstrap interval over {'seeds and users' if seeds else 'users'}, control = {CONTROL}:"]
    for arm in ARMS:
        value = primary["values"][arm]
        if value["value"] is None:
            lines.append(f"  {arm:<14} undefined: no user counts for {primary['metric']}")
            continue
        lines.append(f"  {arm:<14} {value['value']:.4f}  {_interval(value['ci'], '.4f')}")
        lift = (primary.get("lifts") or {}).get(arm)
        if lift and lift["lift"] is not None:
            lines[-1] += (f"  lift {lift['lift']:+.4f} {_interval(lift['ci'], '+.4f')}; per seed "
                          + ", ".join("undefined" if v is None else f"{v:+.4f}" for v in lift["per_seed"].values()))
    return lines


def _interval(ci: list, fmt: str) -> str:
    low, high = (format(c, fmt) if c is not None else "undefined" for c in ci)
    return f"[{low}, {high}]"
