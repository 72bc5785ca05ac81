"""``recfl simulate`` (the TFF simulation entry point) and ``recfl worker``."""

from __future__ import annotations

from pathlib import Path

from recfl.app.arguments import add_config_args, config_doc, print_json
from recfl.core import config
from recfl.core.dataset import PreparedDataset
from recfl.core.errors import RecflError
from recfl.core.federated.privacy.settings import PrivacyConfig
from recfl.core.federated.runtime import serve
from recfl.core.federated.simulate import FederatedConfig, simulate
from recfl.core.federated.transport import TLSFiles
from recfl.core.models import ModelConfig
from recfl.core.pool import load_split


def register(commands) -> None:
    sim = commands.add_parser("simulate", help="federated rounds (FedSubAvg or FedAvg) in TensorFlow Federated")
    sim.add_argument("--data", required=True, metavar="DIR", help="prepared data set; one client per user")
    sim.add_argument("--out", required=True, metavar="RUNDIR")
    sim.add_argument("--algorithm", choices=["fedsubavg", "fedavg"])
    sim.add_argument("--rounds", type=int)
    sim.add_argument("--clients-per-round", type=int)
    sim.add_argument("--local-epochs", type=int)
    sim.add_argument("--eval-every", type=int)
    sim.add_argument("--seed", type=int)
    sim.add_argument("--init", metavar="MODELDIR", help="start from this model (e.g. the cloud model)")
    sim.add_argument("--pool", metavar="POOLDIR", help="simulate only the pool's device users")
    sim.add_argument("--resume", action="store_true", help="continue RUNDIR from its last checkpoint")
    sim.add_argument("--workers", metavar="HOST:PORT,...", help="run on these TFF workers (see `recfl worker`)")
    _add_tls_args(sim, "the --workers' certificates")
    sim.add_argument("--distributor", choices=["host", "select"],
                     help="how clients get their rows: gathered by the server (default) or tff.federated_select")
    add_config_args(sim)
    sim.set_defaults(handler=_simulate)

    worker = commands.add_parser("worker", help="serve a TFF C++ worker for `recfl simulate --workers`")
    worker.add_argument("--listen", default="127.0.0.1", metavar="HOST",
                        help="address to serve on (default 127.0.0.1); any other than loopback needs the --tls-* files")
    worker.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free one, printed)")
    _add_tls_args(worker, "the clients' certificates")
    worker.set_defaults(handler=_worker)


def _add_tls_args(parser, signed: str) -> None:
    """Mutual TLS between `recfl simulate --workers` and `recfl worker`: the same three flags on both sides."""
    parser.add_argument("--tls-cert", metavar="PEM", help="this side's certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="this side's private key")
    parser.add_argument("--tls-ca", metavar="PEM", help=f"the CA that signed {signed}")


def _tls(args) -> TLSFiles | None:
    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise RecflError("mutual TLS needs all of --tls-cert, --tls-key and --tls-ca")
    tls = TLSFiles(Path(args.tls_cert), Path(args.tls_key), Path(args.tls_ca))
    tls.read()  # a missing or unreadable file is a mistake to report now
    return tls


def _simulate(args) -> int:
    doc = config_doc(args)
    fed = config.section(FederatedConfig, doc, "federated", algorithm=args.algorithm, rounds=args.rounds,
                         clients_per_round=args.clients_per_round, local_epochs=args.local_epochs,
                         eval_every=args.eval_every, seed=args.seed, distributor=args.distributor)
    users = None
    if args.pool:
        users = load_split(Path(args.pool)).device_users
    workers = [w.strip() for w in args.workers.split(",") if w.strip()] if args.workers else None
    if not workers and (args.tls_cert or args.tls_key or args.tls_ca):
        raise RecflError("--tls-* secure the connections to --workers; the local worker needs none")
    tls = _tls(args)
    summary = simulate(PreparedDataset(args.data), Path(args.out), fed, config.section(ModelConfig, doc, "model"),
                       init=Path(args.init) if args.init else None, resume=args.resume, workers=workers, users=users, tls=tls,
                       privacy=config.section(PrivacyConfig, doc, "privacy"))
    print_json(summary)
    return 0


def _worker(args) -> int:
    return serve(args.listen, args.port, _tls(args))
