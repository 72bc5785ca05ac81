"""``recfl train``: the cloud model, trained centrally on a prepared data set."""

from __future__ import annotations

from recfl.app.arguments import add_config_args, config_doc, print_json
from recfl.core import config
from recfl.core.dataset import PreparedDataset
from recfl.core.models import ModelConfig
from recfl.core.pool import load_split
from recfl.core.train import TrainConfig, train_cloud_model


def register(commands) -> None:
    train = commands.add_parser("train", help="train the cloud model and print its test metrics as JSON")
    train.add_argument("--data", required=True, metavar="DIR", help="prepared data set directory")
    train.add_argument("--out", required=True, metavar="MODELDIR")
    train.add_argument("--epochs", type=int)
    train.add_argument("--pool", metavar="POOLDIR", help="train only on the pool's sharing users, evaluate on its device users")
    add_config_args(train)
    train.set_defaults(handler=_train)


def _train(args) -> int:
    doc = config_doc(args)
    data = PreparedDataset(args.data)
    users = {}
    if args.pool:
        split = load_split(args.pool)
        users = {"train_users": split.sharing_users, "test_users": split.device_users}
    report = train_cloud_model(
        data, args.out, config.section(ModelConfig, doc, "model"), config.section(TrainConfig, doc, "train", epochs=args.epochs),
        **users,
    )
    print_json({"model_dir": args.out, "test": report["model"], "popularity_baseline": report["popularity_baseline"]})
    return 0
