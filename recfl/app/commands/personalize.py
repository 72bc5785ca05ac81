"""``recfl personalize``: run one arm (cloud, local, coda-nofilter, coda) for every device user."""

from __future__ import annotations

from pathlib import Path

from cloud_pool.matching import MatchConfig
from device.personalize import ARMS, personalize
from device.sample_filter import FilterConfig
from device.tflite_trainer import FinetuneConfig
from recfl.app.arguments import add_config_args, config_doc, print_json
from recfl.app.candidates import candidate_source
from recfl.core import config
from recfl.core.arms import DEVICE_ARMS, arm_named
from recfl.core.dataset import PreparedDataset


def register(commands) -> None:
    cmd = commands.add_parser("personalize", help="personalize on each device user and score their test events")
    cmd.add_argument("--data", required=True, metavar="DIR", help="prepared data set directory")
    cmd.add_argument("--model", required=True, metavar="MODEL", help="the global (cloud) model directory")
    cmd.add_argument("--arm", required=True, choices=ARMS)
    cmd.add_argument("--out", required=True, metavar="PRED.parquet", help="predictions: user_id, item_id, label, score, timestamp, arm")
    cmd.add_argument("--pool", metavar="POOLDIR", help="cloud pool: its device users are personalized (all users without it)")
    cmd.add_argument("--candidates", metavar="CANDDIR", help="matched candidates (default: match against --pool now)")
    cmd.add_argument("--users", type=int, metavar="N", help="only the first N device users (by id)")
    cmd.add_argument("--workers", type=int, default=1, metavar="W", help="parallel device processes (default 1)")
    add_config_args(cmd)
    cmd.set_defaults(handler=_personalize)


def _personalize(args) -> int:
    doc = config_doc(args)
    data = PreparedDataset(args.data)
    pool = Path(args.pool) if args.pool else None
    arm = arm_named(args.arm, DEVICE_ARMS)
    candidates = None
    if pool is not None and arm.candidates:
        candidates = candidate_source(data, pool, Path(args.candidates) if args.candidates else None,
                                      config.section(MatchConfig, doc, "matching"))
    summary = personalize(
        data, Path(args.model), arm, Path(args.out), pool_dir=pool, candidates=candidates,
        users=args.users, workers=args.workers,
        filter_config=config.section(FilterConfig, doc, "filter"),
        finetune_config=config.section(FinetuneConfig, doc, "finetune"),
    )
    print_json(summary)
    return 0
