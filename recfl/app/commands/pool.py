"""``recfl pool build`` and ``recfl pool match``: the cloud pool and coarse matching."""

from __future__ import annotations

from cloud_pool.matching import MatchConfig, parse_shard, write_candidates
from cloud_pool.pool import PoolConfig, build_pool
from recfl.app.arguments import add_config_args, config_doc, print_json
from recfl.core import config
from recfl.core.dataset import PreparedDataset
from recfl.core.pool import pool_summary


def register(commands) -> None:
    pool = commands.add_parser("pool", help="build the cloud pool from sharing users; coarse-match device users")
    sub = pool.add_subparsers(dest="pool_command", required=True, metavar="SUBCOMMAND", parser_class=type(pool))

    build = sub.add_parser("build", help="append the sharing users' training events to a pool; print counts as JSON")
    build.add_argument("--data", required=True, metavar="DIR", help="prepared data set directory")
    build.add_argument("--out", required=True, metavar="POOLDIR")
    build.add_argument("--share-fraction", type=float, metavar="F", help="fraction of users who share data (default 0.5)")
    add_config_args(build)
    build.set_defaults(handler=_build)

    match = sub.add_parser("match", help="write the candidates of the device users (one shard) as Parquet")
    match.add_argument("--data", required=True, metavar="DIR", help="prepared data set directory")
    match.add_argument("--pool", required=True, metavar="POOLDIR")
    match.add_argument("--out", required=True, metavar="CANDDIR")
    match.add_argument("--shard", default="0/1", metavar="i/n", help="match only shard i of n of the device users")
    add_config_args(match)
    match.set_defaults(handler=_match)


def _build(args) -> int:
    cfg = config.section(PoolConfig, config_doc(args), "pool", share_fraction=args.share_fraction)
    build_pool(PreparedDataset(args.data), args.out, cfg.share_fraction, cfg.salt)
    print_json({"pool_dir": args.out, **pool_summary(args.out)})
    return 0


def _match(args) -> int:
    shard = parse_shard(args.shard)
    cfg = config.section(MatchConfig, config_doc(args), "matching")
    print_json(write_candidates(args.pool, PreparedDataset(args.data), args.out, cfg, shard=shard))
    return 0
