"""How recfl talks to a TFF worker: gRPC channels (plain on this machine, mutual TLS beyond it),
a deadline on every call, and a lost worker reported as such instead of retried forever.

TFF's own stub turns a dropped connection into a "retryable" error that its
execution context retries without end, and sets no deadline: a worker that
died or hangs stalls a run for good. :class:`DeadlineStub` is the same
executor-service stub with a deadline on every call; a call that times out
or loses its connection raises :class:`WorkerLost`, which TFF does not
retry, so the runtime can hand the work to another worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from recfl.core.errors import RecflError

GRPC_OPTIONS = [
    ("grpc.max_message_length", 2_000_000_000),
    ("grpc.max_receive_message_length", 2_000_000_000),
    ("grpc.max_send_message_length", 2_000_000_000),
    ("grpc.use_local_subchannel_pool", 1),  # a connection of its own per channel: a lost one stays lost
]
_DISPOSE_TIMEOUT = 10.0
# Codes that mean the worker is gone or stuck, not that the computation failed.
_LOST = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "FAILED_PRECONDITION")


class WorkerFailed(RecflError):
    """A TFF worker could not be started or reached, or answered a call with an error: an environment fault."""

    exit_code = 1


class WorkerLost(WorkerFailed):
    """A TFF worker stopped answering in the middle of a run (connection lost, deadline passed)."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for mutual TLS: this side's certificate and key, and the CA that signed the other side's."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        blobs = []
        for flag, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            try:
                blobs.append(Path(path).read_bytes())
            except OSError as exc:
                raise RecflError(f"{flag} {path}: {exc.strerror}") from None
        return tuple(blobs)

    def args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]


def channel(address: str, tls: TLSFiles | None = None):
    """A gRPC channel to a worker: plain (a Unix socket or this machine's loopback) or mutual TLS."""
    import grpc

    if tls is None:
        return grpc.insecure_channel(address, GRPC_OPTIONS)
    cert, key, ca = tls.read()
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca, key, cert), GRPC_OPTIONS)


def answers(address: str, tls: TLSFiles | None, timeout: float) -> bool:
    """Whether a gRPC server answers at ``address`` now (any answer, UNIMPLEMENTED included, proves the path)."""
    import grpc

    with channel(address, tls) as probe:
        try:
            probe.unary_unary("/recfl.Probe/Ready")(b"", timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNIMPLEMENTED
    return True


def wait_ready(address: str, timeout: float, tls: TLSFiles | None = None) -> None:
    """Block until the worker at ``address`` answers, or fail with a clear error."""
    deadline = time.monotonic() + timeout
    while not answers(address, tls, timeout=5):
        if time.monotonic() > deadline:
            hint = " (or refuses this client's certificate; see --tls-*)" if tls else ""
            raise WorkerFailed(f"TFF worker {address} not reachable after {timeout:.0f}s{hint}")
        time.sleep(0.5)


class DeadlineStub:
    """TFF's executor-service stub (``tff.framework.RemoteExecutorStub``'s methods) with a deadline on every call."""

    def __init__(self, grpc_channel, address: str, timeout: float):
        from tensorflow_federated.proto.v0 import executor_pb2_grpc

        self._rpc = executor_pb2_grpc.ExecutorGroupStub(grpc_channel)
        self.address, self.timeout = address, timeout
        self._lost: str | None = None  # once lost, a worker is not called again (no second wait on a hung one)

    def _call(self, method: str, request, timeout: float | None = None):
        import grpc

        if self._lost:
            raise WorkerLost(self._lost)
        try:
            return getattr(self._rpc, method)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            reason = f"{exc.code().name}: {exc.details()}"
            if exc.code().name not in _LOST:
                raise WorkerFailed(f"TFF worker {self.address} failed a call ({reason})") from None
        except ValueError as exc:  # the channel was closed under the call (the runtime is shutting down)
            reason = str(exc)
        self._lost = f"TFF worker {self.address} lost ({reason})"
        raise WorkerLost(self._lost)

    def get_executor(self, request):
        return self._call("GetExecutor", request)

    def create_value(self, request):
        return self._call("CreateValue", request)

    def create_struct(self, request):
        return self._call("CreateStruct", request)

    def create_call(self, request):
        return self._call("CreateCall", request)

    def create_selection(self, request):
        return self._call("CreateSelection", request)

    def compute(self, request):
        return self._call("Compute", request)

    def dispose(self, request):
        return self._dispose("Dispose", request)

    def dispose_executor(self, request):
        return self._dispose("DisposeExecutor", request)

    def _dispose(self, method: str, request):
        """Best effort and brief (it may run wherever a value is garbage-collected): a lost worker's values are gone with it."""
        try:
            return self._call(method, request, timeout=min(self.timeout, _DISPOSE_TIMEOUT))
        except WorkerFailed:
            return None
