"""``recfl predict``: a predictions file (the A/B harness's input) from the cloud model or the popularity baseline."""

from __future__ import annotations

from pathlib import Path

from recfl.app.arguments import print_json
from recfl.core.atomic import atomic_path
from recfl.core.baselines import popularity_scores
from recfl.core.dataset import PreparedDataset
from recfl.core.features import encode
from recfl.core.metrics import ctr_metrics
from recfl.core.models import load_model, predict
from recfl.core.schema import predictions_table


def register(commands) -> None:
    predict = commands.add_parser("predict", help="score a prepared data set's test events into a predictions file")
    predict.add_argument("--data", required=True, metavar="DIR", help="prepared data set directory")
    scorer = predict.add_mutually_exclusive_group(required=True)
    scorer.add_argument("--model", metavar="MODELDIR", help="a model written by recfl train")
    scorer.add_argument("--popularity", action="store_true", help="the popularity baseline (positive counts in train)")
    predict.add_argument("--arm", required=True, metavar="NAME", help="the arm name written in the file")
    predict.add_argument("--out", required=True, metavar="PRED.parquet")
    predict.set_defaults(handler=_predict)


def _predict(args) -> int:
    data = PreparedDataset(args.data)
    test = data.test
    if args.popularity:
        scores = popularity_scores(data.train, test["item_id"].to_numpy())
    else:
        spec, params = load_model(Path(args.model), data)
        examples = encode(test, data.train, data.item_vocab, data.category_vocab, data.items, spec.features)
        scores = predict(spec, params, examples.inputs())
    table = predictions_table(test, scores, args.arm)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    print_json({"predictions": str(out), "arm": args.arm, "rows": len(table), "users": int(table["user_id"].nunique()),
                "test": ctr_metrics(table["user_id"].to_numpy(), table["label"].to_numpy(), table["score"].to_numpy())})
    return 0
