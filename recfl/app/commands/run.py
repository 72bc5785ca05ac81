"""``recfl run``: the end-to-end pipeline (the main job; ``make demo`` runs it)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import threading
from pathlib import Path

from recfl.app.arguments import add_config_args
from recfl.app.graceful import stop_on_signals
from recfl.app.live import live
from recfl.app.pipeline import ARMS, CONTROL, GLOBAL, check_not_seeds, check_source_args, run, run_seeds
from recfl.app.sections import load_config
from recfl.core import config
from recfl.core.errors import RecflError
from recfl.core.formats import FORMATS
from streaming.settings import StreamConfig

EVERY = 600.0  # the default window of --stream, in seconds


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
    run.add_argument("--stream", metavar="TOPIC",
                     help="keep running on a live topic: after the run, consume TOPIC into OUT/pool for --every, run "
                          "again (matching, the candidate arms and the report rerun on the new events), and repeat")
    run.add_argument("--every", type=duration, metavar="T", help="the consume window of --stream: seconds, or e.g. 30s, "
                                                                 "10m, 1h (default 10m)")
    run.add_argument("--cycles", type=int, metavar="N", help="with --stream: stop after N runs (default: until Ctrl-C)")
    run.add_argument("--bootstrap-servers", metavar="H:P[,H:P]",
                     help="with --stream: the Kafka brokers (default [streaming] bootstrap_servers)")
    add_config_args(run)
    run.set_defaults(handler=_run)


def duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m`` or ``1h`` (argparse type)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive duration: {text!r} (e.g. 90, 30s, 10m, 1h)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _run(args) -> int:
    check_source_args(args.data, args.format, args.path)
    overrides = list(args.overrides)
    if args.format:
        overrides += [f"data.format={args.format}"] + ([f"data.path={json.dumps(args.path)}"] if args.path else [])
    out, doc = Path(args.out), load_config(args.config, overrides)
    if args.stream is not None:
        return _live(args, out, doc)
    if args.every is not None or args.cycles is not None or args.bootstrap_servers is not None:
        raise RecflError("--every, --cycles and --bootstrap-servers go with --stream TOPIC")
    if args.seeds is None:
        check_not_seeds(out)
        results = run(out, doc, data_dir=args.data, force=args.force)
        ab = results["ab"]
    else:
        pooled = run_seeds(out, doc, args.seeds, data_dir=args.data, force=args.force)
        results, ab = next(iter(pooled["seeds"].values())), pooled["ab"]
    _print_summary(results, ab)
    print(f"report: {(Path(args.out) / ab['report.html']).resolve()}")
    print(f"outputs: {Path(args.out).resolve()} (run.json lists every stage's results)")
    return 0


def _live(args, out: Path, doc: dict) -> int:
    """``--stream``: the live loop (:mod:`recfl.app.live`); the first Ctrl-C finishes the current cycle."""
    if args.seeds is not None:
        raise RecflError("--stream runs one pipeline in OUT; it does not take --seeds")
    if args.cycles is not None and args.cycles < 1:
        raise RecflError(f"--cycles must be at least 1, got {args.cycles}")
    check_not_seeds(out)
    if args.log_level != "DEBUG":
        logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = config.section(StreamConfig, doc, "streaming", bootstrap_servers=args.bootstrap_servers, topic=args.stream)
    every, stop = args.every or EVERY, threading.Event()
    with stop_on_signals(stop.set, "finishing the current cycle"):
        for cycle in live(out, doc, settings, every, args.cycles, data_dir=args.data, force=args.force, stop=stop):
            pool = cycle.pool
            line = (f"cycle {cycle.number}: the pool holds {pool['pool_events']:,} events ({pool['shared_events']:,} "
                    f"shared, {pool['sharing_users']:,} sharing users); {cycle.results['candidates']['rows']:,} "
                    "candidate rows")
            if cycle.consumed is not None:
                c = cycle.consumed
                line += (f"; {c['consumed']:,} messages from {settings.topic} in {c['elapsed_s']:g} s ({c['written']:,} "
                         f"written, {c['duplicates_skipped']:,} duplicates, {c['dead_lettered']:,} dead-lettered)")
            print(line)
            _print_summary(cycle.results, cycle.results["ab"])
            print(f"report: {(out / cycle.results['ab']['report.html']).resolve()}", flush=True)
    print(f"stopped after cycle {cycle.number}" + (" (interrupted)" if stop.is_set() else "")
          + f"; outputs: {out.resolve()}")
    return 0


def _print_summary(results: dict, ab: dict) -> None:
    print("\n".join(summary_lines(ab["primary"])))
    for arm in (a for a in GLOBAL if "privacy" in results[a]):
        p = results[arm]["privacy"]
        print(f"  {arm} was trained privately: epsilon {p['epsilon']} at delta {p['delta']} (clip {p['clip_norm']}, noise "
              f"multiplier {p['noise_multiplier']}; randomized response p = {p['keep_probability']}, q = {p['fake_probability']})")
    for warning in ab["warnings"]:
        print(f"  warning: {warning}")


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
