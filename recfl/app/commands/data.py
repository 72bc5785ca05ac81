"""``recfl data describe|prepare|synth``: load public formats, split, sample negatives, fit vocabularies."""

from __future__ import annotations

from ab_testing.evaluate import AbConfig
from cloud_pool.pool import PoolConfig
from recfl.app.arguments import add_config_args, config_doc, print_json
from recfl.app.evaluable import evaluable
from recfl.app.pipeline import RunConfig
from recfl.core import config
from recfl.core.dataset import (
    DataConfig,
    describe,
    load_from_config,
    prepare_from_config,
    split_source,
)
from recfl.core.formats import FORMATS
from recfl.core.negatives import SAMPLINGS
from recfl.core.split import SPLITS


def register(commands) -> None:
    data = commands.add_parser("data", help="describe, prepare or synthesize a data set")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=type(data))

    describe = sub.add_parser("describe", help="counts of a raw data set, of its split, and who can count per metric, as JSON")
    _source_args(describe)
    _split_args(describe)
    add_config_args(describe)
    describe.set_defaults(handler=_describe)

    prepare = sub.add_parser("prepare", help="split per user by time, sample test negatives, fit vocabularies, "
                                             "write a prepared directory")
    _source_args(prepare)
    prepare.add_argument("--out", required=True, metavar="DIR")
    _split_args(prepare)
    add_config_args(prepare)
    prepare.set_defaults(handler=_prepare)

    synth = sub.add_parser("synth", help="generate and prepare a synthetic data set")
    synth.add_argument("--users", type=int)
    synth.add_argument("--items", type=int)
    synth.add_argument("--categories", type=int)
    synth.add_argument("--events-per-user", type=float)
    synth.add_argument("--out", required=True, metavar="DIR")
    synth.add_argument("--seed", type=int)
    synth.add_argument("--test-fraction", type=float)
    add_config_args(synth)
    synth.set_defaults(handler=_synth)


def _source_args(parser) -> None:
    parser.add_argument("--format", choices=FORMATS, help="the source's format (default: [data] format of --config, else synthetic)")
    parser.add_argument("--path", help="data file or folder (not needed for synthetic; default: [data] path)")


def _split_args(parser) -> None:
    """The ``[data]`` settings of a split, as options (``--set data.KEY=...`` reaches the same keys)."""
    parser.add_argument("--split", choices=SPLITS, help="time_fraction (default) or leave_one_out (latest positive per user)")
    parser.add_argument("--test-fraction", type=float, help="time_fraction: share of each user's latest events held out (default 0.2)")
    parser.add_argument("--negatives", type=int, help="sampled negatives per test positive, stored in test.parquet (default 0)")
    parser.add_argument("--negative-sampling", choices=SAMPLINGS, help="uniform (default) or popularity")
    parser.add_argument("--train-negatives", type=int, help="sampled negatives per training positive the trainers draw (default 0)")
    parser.add_argument("--min-user-events", type=int, help="drop users with fewer events (default 1)")
    parser.add_argument("--seed", type=int, help="seeds the negatives and the synthetic generator; recorded in the manifest")
    parser.add_argument("--min-count", type=int, help="items seen fewer times in train map to OOV (default 1)")


def _data_config(args, doc: dict) -> DataConfig:
    return config.section(DataConfig, doc, "data", format=args.format, path=args.path, split=args.split,
                          test_fraction=args.test_fraction, negatives=args.negatives,
                          negative_sampling=args.negative_sampling, train_negatives=args.train_negatives,
                          min_user_events=args.min_user_events, seed=args.seed, min_count=args.min_count)


def _describe(args) -> int:
    """The raw source's counts, then the split's and, per metric, the users who can count (``recfl run``'s groups)."""
    doc = config_doc(args)
    cfg = _data_config(args, doc)
    source, _ = load_from_config(cfg, doc)
    prepared = split_source(source, cfg)
    run = config.section(RunConfig, doc, "run")
    print_json({
        **describe(source),
        "split": {key: prepared.manifest[key] for key in ("split", "split_rule", "train", "test", "negatives", "dropped")},
        "evaluable": {
            **evaluable(prepared.train, prepared.test, config.section(AbConfig, doc, "ab"), config.section(PoolConfig, doc, "pool"),
                        run.device_users),
            "min_evaluable_users": run.min_evaluable_users,
        },
    })
    return 0


def _prepare(args) -> int:
    doc = config_doc(args)
    print_json(prepare_from_config(_data_config(args, doc), doc, args.out).manifest)
    return 0


def _synth(args) -> int:
    doc = config_doc(args)
    overrides = {"users": args.users, "items": args.items, "categories": args.categories,
                 "events_per_user": args.events_per_user}
    doc.setdefault("synthetic", {}).update({k: v for k, v in overrides.items() if v is not None})
    cfg = config.section(DataConfig, doc, "data", format="synthetic", path=None, test_fraction=args.test_fraction, seed=args.seed)
    print_json(prepare_from_config(cfg, doc, args.out).manifest)
    return 0
