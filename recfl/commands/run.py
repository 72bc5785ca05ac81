"""``recfl run``: the end-to-end pipeline (the main job; ``make demo`` runs it)."""

from __future__ import annotations

from pathlib import Path

from recfl.cli import add_config_args
from recfl.formats import FORMATS


def register(commands) -> None:
    run = commands.add_parser("run", help="run the whole pipeline; stages already done are skipped")
    run.add_argument("--out", required=True, metavar="OUT")
    run.add_argument("--data", metavar="DIR", help="use an already prepared data set")
    run.add_argument("--format", choices=FORMATS, help="prepare this source instead of the synthetic default")
    run.add_argument("--path", help="data file or folder for --format")
    add_config_args(run)
    run.set_defaults(handler=_run)


def _run(args) -> int:
    from recfl import config
    from recfl.pipeline import check_source_args, run

    check_source_args(args.data, args.format, args.path)
    overrides = list(args.overrides)
    if args.format:
        overrides += [f"data.format={args.format}"] + ([f"data.path={args.path!r}"] if args.path else [])
    results = run(Path(args.out), config.load(args.config, overrides), data_dir=args.data)
    cloud = results["cloud_model"]
    print(f"cloud model test AUC {cloud['test']['auc']:.4f}, gAUC {cloud['test']['gauc']:.4f} "
          f"(popularity baseline AUC {cloud['popularity_baseline']['auc']:.4f})")
    print(f"outputs: {Path(args.out).resolve()} (run.json lists every stage's results)")
    return 0
