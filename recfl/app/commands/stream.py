"""``recfl broker`` and ``recfl stream produce|consume``: the local broker, file replay, and the pool consumer."""

from __future__ import annotations

import logging
import sys
import threading

from recfl.app.arguments import add_config_args, config_doc, print_json
from recfl.app.graceful import stop_on_signals
from recfl.core import config
from recfl.core.errors import RecflError
from recfl.core.formats import FORMATS, SyntheticSpec
from recfl.core.pool import PoolConfig
from streaming.broker import start_broker
from streaming.consumer import StreamConsumer
from streaming.producer import produce, replay_messages
from streaming.settings import StreamConfig

log = logging.getLogger(__name__)


def register(commands) -> None:
    broker = commands.add_parser("broker", help="run the bundled Kafka-compatible broker (in memory) until Ctrl-C")
    broker.add_argument("--port", type=int, default=9092, help="listen on 127.0.0.1:PORT (default 9092; 0 = any free port)")
    broker.set_defaults(handler=_broker)

    stream = commands.add_parser("stream", help="replay a data file into Kafka; consume Kafka into the cloud pool")
    sub = stream.add_subparsers(dest="stream_command", required=True, metavar="ACTION", parser_class=type(stream))

    produce = sub.add_parser("produce", help="send every row of a data file as a behaviour event, keyed by user id")
    produce.add_argument("--format", required=True, choices=FORMATS)
    produce.add_argument("--path", help="data file or folder (not needed for synthetic)")
    produce.add_argument("--topic", help="topic to send to (created with [streaming] partitions if missing)")
    produce.add_argument("--rate", type=float, metavar="R", help="at most R events per second (default: as fast as possible)")
    produce.add_argument("--partitions", type=int, metavar="N", help="partitions of the topic if it is created (default 4)")
    _connection_args(produce)
    produce.set_defaults(handler=_produce)

    consume = sub.add_parser("consume", help="validate events and write them to the cloud pool; print counters as JSON")
    consume.add_argument("--pool", required=True, metavar="POOLDIR",
                         help="the cloud pool to append to (a new path becomes a new, empty pool with the [pool] roles)")
    consume.add_argument("--topic")
    consume.add_argument("--group", help="consumer group (processes of one group split the partitions)")
    consume.add_argument("--dead-letter-topic", metavar="T", help="where invalid events go (default <topic>.dlq)")
    consume.add_argument("--max-events", type=int, metavar="N", help="stop after N messages")
    consume.add_argument("--idle-timeout", type=float, metavar="S",
                         help="stop after S seconds without a message while holding partitions")
    _connection_args(consume)
    consume.set_defaults(handler=_consume)


def _connection_args(parser) -> None:
    parser.add_argument("--bootstrap-servers", metavar="H:P[,H:P]", help="Kafka brokers (default [streaming] bootstrap_servers)")
    add_config_args(parser)


def _settings(args, **explicit):
    """The ``[streaming]`` section with the command-line values on top; kafka-python's INFO chatter off."""

    if args.log_level != "DEBUG":
        logging.getLogger("kafka").setLevel(logging.WARNING)
    doc = config_doc(args)
    return doc, config.section(StreamConfig, doc, "streaming", bootstrap_servers=args.bootstrap_servers,
                               topic=args.topic, **explicit)


def _broker(args) -> int:
    broker = start_broker(args.port or None)
    stopping = threading.Event()
    try:
        print_json({"bootstrap_servers": broker.bootstrap_servers, "pid": broker.process.pid})
        sys.stdout.flush()
        with stop_on_signals(stopping.set, "stopping the broker"):
            while not stopping.wait(0.5):
                if broker.process.poll() is not None:
                    raise RecflError(f"broker exited with code {broker.process.returncode}")
    finally:
        broker.stop()
    log.info("broker %s stopped", broker.bootstrap_servers)
    return 0


def _produce(args) -> int:
    if args.rate is not None and args.rate <= 0:
        raise RecflError(f"--rate must be positive, got {args.rate:g}")
    doc, settings = _settings(args, partitions=args.partitions)
    messages = replay_messages(args.format, args.path, config.section(SyntheticSpec, doc, "synthetic"))
    report = produce(messages, settings, settings.topic, rate=args.rate)
    print_json({"topic": report.topic, "partitions": report.partitions, "sent": report.sent,
                "unparsed_rows": report.unparsed_rows, "elapsed_s": round(report.elapsed_s, 3),
                "events_per_s": round(report.events_per_s, 1), "bootstrap_servers": settings.bootstrap_servers})
    return 0


def _consume(args) -> int:
    if args.max_events is not None and args.max_events < 1:
        raise RecflError(f"--max-events must be at least 1, got {args.max_events}")
    if args.idle_timeout is not None and args.idle_timeout <= 0:
        raise RecflError(f"--idle-timeout must be positive, got {args.idle_timeout:g}")
    doc, settings = _settings(args, group=args.group, dead_letter_topic=args.dead_letter_topic)
    consumer = StreamConsumer(settings, args.pool, config.section(PoolConfig, doc, "pool"))
    with stop_on_signals(consumer.stop, "finishing the current batch"):
        stats = consumer.run(max_events=args.max_events, idle_timeout_s=args.idle_timeout)
    print_json({"topic": settings.topic, "group": settings.group, "dead_letter_topic": settings.dead_letters,
                "pool": args.pool, **stats.report()})
    return 0
