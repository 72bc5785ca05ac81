"""``recfl data describe|prepare|synth``: load public formats, split, fit vocabularies."""

from __future__ import annotations

from recfl.app.arguments import add_config_args, config_doc, print_json
from recfl.core import config
from recfl.core.dataset import DataConfig, describe, prepare_from_config
from recfl.core.formats import FORMATS, load


def register(commands) -> None:
    data = commands.add_parser("data", help="describe, prepare or synthesize a data set")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION", parser_class=type(data))

    describe = sub.add_parser("describe", help="print counts of a raw data set as JSON")
    _source_args(describe)
    describe.set_defaults(handler=_describe)

    prepare = sub.add_parser("prepare", help="split per user by time, fit vocabularies, write a prepared directory")
    _source_args(prepare)
    prepare.add_argument("--out", required=True, metavar="DIR")
    prepare.add_argument("--test-fraction", type=float, help="share of each user's latest events held out (default 0.2)")
    prepare.add_argument("--seed", type=int, help="recorded in the manifest; seeds the synthetic generator")
    prepare.add_argument("--min-count", type=int, help="items seen fewer times in train map to OOV (default 1)")
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
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--path", help="data file or folder (not needed for synthetic)")


def _describe(args) -> int:
    print_json(describe(load(args.format, args.path)))
    return 0


def _prepare(args) -> int:
    doc = config_doc(args)
    cfg = config.section(DataConfig, doc, "data", format=args.format, path=args.path, test_fraction=args.test_fraction,
                         seed=args.seed, min_count=args.min_count)
    print_json(prepare_from_config(cfg, doc, args.out).manifest)
    return 0


def _synth(args) -> int:
    doc = config_doc(args)
    overrides = {"users": args.users, "items": args.items, "categories": args.categories,
                 "events_per_user": args.events_per_user}
    doc.setdefault("synthetic", {}).update({k: v for k, v in overrides.items() if v is not None})
    cfg = config.section(DataConfig, doc, "data", format="synthetic", path=None, test_fraction=args.test_fraction, seed=args.seed)
    print_json(prepare_from_config(cfg, doc, args.out).manifest)
    return 0
