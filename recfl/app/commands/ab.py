"""``recfl ab evaluate``: compare arms' predictions files with a control and write the report."""

from __future__ import annotations

from pathlib import Path

from ab_testing.evaluate import AbConfig, evaluate, evaluate_seeds
from ab_testing.predictions import read_predictions
from ab_testing.report import write_report
from ab_testing.segments import read_activity
from recfl.app.arguments import add_config_args, config_doc, print_json
from recfl.app.pipeline import arm_predictions
from recfl.core import config
from recfl.core.errors import RecflError


def register(commands) -> None:
    ab = commands.add_parser("ab", help="offline A/B evaluation of predictions files")
    sub = ab.add_subparsers(dest="ab_command", required=True, metavar="ACTION", parser_class=type(ab))
    ev = sub.add_parser("evaluate", help="lifts of every arm over a control with bootstrap intervals; writes a report",
                        description="Compare arms' predictions (columns user_id, item_id, label, score, timestamp, arm) "
                                    "with a control arm; writes report.md, report.html and metrics.json to --out. "
                                    "With --runs, the arms of several runs that differ only in seeds, pooled.")
    ev.add_argument("predictions", nargs="*", metavar="PRED", help="predictions files (.parquet or .csv), one or more arms each")
    ev.add_argument("--runs", nargs="+", metavar="DIR",
                    help="instead of PRED: one folder per seed of the same arms, each a recfl run folder or a folder of "
                         "predictions files; lifts are the mean over the runs, intervals over runs and users")
    ev.add_argument("--control", required=True, metavar="ARM", help="the arm the others are compared with")
    ev.add_argument("--out", required=True, metavar="REPORT_DIR")
    ev.add_argument("--design", metavar="{paired,bucketed}",
                    help="paired: all arms on the same users (default); bucketed: users hashed into arms")
    ev.add_argument("--buckets", type=int, help="hash buckets of the bucketed design (default 100)")
    ev.add_argument("--salt", help="salt of the user hash of the bucketed design")
    ev.add_argument("--metrics", help="comma-separated: auc,gauc,logloss,hr@K,ndcg@K,ctr@K,uctr@K "
                                      "(default auc,gauc,logloss,hr@10,ndcg@10)")
    ev.add_argument("--bootstrap", type=int, help="bootstrap resamples of users (default 1000)")
    ev.add_argument("--seed", type=int)
    ev.add_argument("--users", metavar="FILE", help="training events per user for cold/warm/hot segments: a table "
                    "with user_id, train_events, an events table (e.g. DIR/train.parquet) or a prepared data set DIR")
    add_config_args(ev)
    ev.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    doc = config_doc(args)
    metrics = tuple(m for m in args.metrics.split(",") if m.strip()) if args.metrics is not None else None
    cfg = config.section(AbConfig, doc, "ab", design=args.design, buckets=args.buckets, salt=args.salt,
                         metrics=metrics, bootstrap=args.bootstrap, seed=args.seed)
    activity = read_activity(args.users) if args.users else None
    if bool(args.predictions) == bool(args.runs):
        raise RecflError("give predictions files (PRED ...) or --runs DIR ..., one of the two")
    if args.runs:
        folders = [Path(f) for f in args.runs]
        if len({f.resolve() for f in folders}) < len(folders):
            raise RecflError("--runs: a folder is given twice")
        names = [f.name for f in folders]  # the runs' labels in the report: their folder names where those differ
        labels = names if len(set(names)) == len(names) else [str(f) for f in folders]
        runs = {label: read_predictions(_run_files(f)) for label, f in zip(labels, folders)}
        result = evaluate_seeds(runs, args.control, cfg, activity, progress=True)
    else:
        result = evaluate(read_predictions(args.predictions), args.control, cfg, activity, progress=True)
    paths = write_report(result, args.out)
    print_json({
        **paths,
        "design": cfg.design,
        "control": result.control,
        "arms": {a.arm: {"users": a.users, "events": a.events} for a in result.arms},
        **({"seeds": list(result.seeds)} if result.seeds else {}),
        "significant": [f"{c.treatment} {c.metric}: {'better' if c.better else 'worse'} ({100 * c.lift.rel_lift:+.2f}%, "
                        f"p_adj={c.p_adjusted:.2g})" for c in result.comparisons if c.segment == "all" and c.significant],
        "warnings": result.warnings,
        "seconds": result.seconds,
    })
    return 0


def _run_files(folder: Path) -> list[Path]:
    """One run's predictions files: those its run.json lists (a ``recfl run`` folder), else the folder's files."""
    if not folder.is_dir():
        raise RecflError(f"--runs {folder}: not a folder (give a recfl run folder or a folder of predictions files)")
    if (folder / "run.json").is_file():
        return arm_predictions(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".parquet", ".pq", ".csv"))
    if not files:
        raise RecflError(f"--runs {folder}: no run.json and no predictions files (.parquet, .csv) in it")
    return files
