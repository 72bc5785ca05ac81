"""The ``[streaming]`` config section and the kafka-python client settings derived from it.

The group timeouts default to values that make a consumer-group join take
about 3 s (kafka-python's defaults take ~23 s against the bundled broker).
Security settings (SASL/SSL) are passed to every client unchanged; empty
strings mean "not set", so a PLAINTEXT local broker needs none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka.util import ensure_valid_topic_name

from recfl.core.config import check_limits
from recfl.core.errors import RecflError
from streaming.events import EventRules


@dataclass(frozen=True)
class StreamConfig:
    """Broker address, topics, batching, timeouts and security of the stream commands."""

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "recfl-events"
    group: str = "recfl-pool"
    dead_letter_topic: str = ""
    partitions: int = 4
    batch_size: int = 5000
    batch_max_wait_s: float = 1.0
    max_event_bytes: int = 16384
    check_crcs: bool = True
    behaviors: tuple[str, ...] = ("pv", "cart", "fav", "buy", "click", "view")
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 10000
    request_timeout_ms: int = 10000
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0
    progress_interval_s: float = 5.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_plain_username: str = ""
    sasl_plain_password: str = ""
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    ssl_password: str = ""
    ssl_check_hostname: bool = True

    def __post_init__(self):
        check_limits(self, "streaming", partitions=">= 1", batch_size=">= 1", batch_max_wait_s="> 0", max_event_bytes=">= 1",
                     session_timeout_ms=">= 1", heartbeat_interval_ms=">= 1", max_poll_interval_ms=">= 1",
                     request_timeout_ms=">= 1", backoff_s="> 0", backoff_max_s="> 0", progress_interval_s="> 0")
        for key, name in (("topic", self.topic), ("dead_letter_topic", self.dead_letters)):
            try:
                ensure_valid_topic_name(name)
            except ValueError as exc:
                raise RecflError(f"config: streaming.{key}: {exc}") from None

    @property
    def dead_letters(self) -> str:
        """The dead-letter topic: as configured, else ``<topic>.dlq``."""
        return self.dead_letter_topic or f"{self.topic}.dlq"

    @property
    def rules(self) -> EventRules:
        return EventRules(self.max_event_bytes, frozenset(self.behaviors))

    def client_kwargs(self) -> dict:
        """Connection, backoff and security settings shared by producer, consumer and admin clients."""
        kwargs = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "request_timeout_ms": self.request_timeout_ms,
            "bootstrap_timeout_ms": self.request_timeout_ms,
            "reconnect_backoff_ms": int(self.backoff_s * 1000),
            "reconnect_backoff_max_ms": int(self.backoff_max_s * 1000),
            "security_protocol": self.security_protocol,
            "ssl_check_hostname": self.ssl_check_hostname,
        }
        optional = ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile", "ssl_certfile",
                    "ssl_keyfile", "ssl_password")
        kwargs.update({k: getattr(self, k) for k in optional if getattr(self, k)})
        return kwargs

    def group_kwargs(self) -> dict:
        """Consumer-group settings: manual commits, start from the earliest offset, fast joins."""
        return {
            "group_id": self.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "max_poll_records": self.batch_size,
            "check_crcs": self.check_crcs,
        }
