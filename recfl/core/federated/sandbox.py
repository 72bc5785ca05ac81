"""The TFF ``worker_binary`` in a network namespace of its own, reachable only through one socket.

TFF 0.87's worker takes only ``--port`` and listens on every interface,
unauthenticated: whoever reaches the port runs TensorFlow graphs (file reads
and writes included) on the machine. This process unshares a user and a
network namespace (unprivileged; the new namespace has nothing but its own
loopback), starts the worker there, and relays to it the one listening
socket its parent created beforehand in the machine's namespace: a Unix
socket in a private folder for the worker ``recfl simulate`` starts, a TCP
port for ``recfl worker``, optionally behind mutually authenticated TLS
(client certificate required, ALPN ``h2`` as gRPC expects). The relay is
byte for byte (asyncio streams; the standard library has no socket relay).

It runs as ``python -m recfl.core.federated.sandbox`` and imports only the
standard library, so it is single-threaded when it unshares (the kernel
refuses a new user namespace to a multi-threaded process). Its first line
on stdout is ``ready PID`` (the worker's process id), ``no-namespace: REASON``
or ``error: REASON``.
The worker dies with it (SIGKILL), and it with its parent, even when the parent is
SIGKILLed (it gets a SIGTERM then, so that it removes its socket's folder).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import logging
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time

log = logging.getLogger("recfl.worker")

_PR_SET_PDEATHSIG = 1
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH22x"  # struct ifreq: interface name, then the flags of the union
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SandboxError(Exception):
    """The worker could not be isolated or started."""


class NoNamespace(SandboxError):
    """The kernel refuses a new user or network namespace here."""


def die_with_parent(parent: int, signum: int = signal.SIGKILL):
    """A ``preexec_fn`` that ties the child to ``parent`` (``signum`` when it dies) in a process group of its own."""

    def setup():
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        os.setpgrp()  # Ctrl-C in the terminal reaches the parent only, which stops its children in order

    return setup


def isolate() -> None:
    """Move this process into new user and network namespaces that only have a loopback interface."""
    uid, gid = os.getuid(), os.getgid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        reason = os.strerror(ctypes.get_errno())
        raise NoNamespace(
            f"cannot give the TFF worker a network namespace of its own (unshare: {reason}); allow unprivileged "
            "user namespaces (sysctl user.max_user_namespaces > 0; on Ubuntu also "
            "kernel.apparmor_restrict_unprivileged_userns = 0)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(text)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        flags = struct.unpack(_IFREQ, fcntl.ioctl(probe, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def server_tls(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    """TLS for an exposed worker: this certificate, and clients must show one signed by ``client_ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_worker(binary: str, timeout: float) -> tuple[subprocess.Popen, int]:
    """Start the worker on a free port and wait until it accepts connections."""
    port = _free_port()
    worker = subprocess.Popen([binary, f"--port={port}", "--max_concurrent_computation_calls=-1"],
                              stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr,
                              preexec_fn=die_with_parent(os.getpid()))
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return worker, port
        except OSError:
            if worker.poll() is not None:
                raise SandboxError(f"TFF worker_binary exited with code {worker.returncode} while starting") from None
            if time.monotonic() > deadline:
                worker.kill()
                raise SandboxError(f"TFF worker_binary did not listen within {timeout:.0f}s") from None
            time.sleep(0.05)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 20):
            writer.write(chunk)
            await writer.drain()
    except OSError:  # reset by either side (TLS errors are OSErrors too)
        pass
    finally:
        writer.close()


async def _connection(reader, writer, port: int, tls: ssl.SSLContext | None) -> None:
    peer = writer.get_extra_info("peername") or "a local client"
    if tls is not None:
        try:
            await writer.start_tls(tls, ssl_handshake_timeout=30)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("refused a connection from %s: %s", peer, getattr(exc, "reason", None) or exc)
            writer.transport.abort()
            return
        subject = dict(item for rdn in writer.get_extra_info("peercert")["subject"] for item in rdn)
        log.info("client %s connected from %s", subject.get("commonName", "?"), peer)
    try:
        worker_reader, worker_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pipe(reader, worker_writer), _pipe(worker_reader, writer))


async def _serve(listener: socket.socket, worker: subprocess.Popen, port: int, tls: ssl.SSLContext | None) -> int:
    """Relay ``listener`` to the worker until the worker exits; a stop signal stops the worker first."""
    loop, stopping = asyncio.get_running_loop(), []
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, lambda: stopping.append(True) or worker.terminate())
    server = await asyncio.start_server(lambda r, w: _connection(r, w, port, tls), sock=listener, limit=1 << 20)
    code = await asyncio.to_thread(worker.wait)
    server.close()
    if stopping:
        return 0
    log.error("TFF worker_binary (pid %d) exited with code %d", worker.pid, code)
    return 128 - code if code < 0 else code or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recfl.core.federated.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--listen-fd", type=int, required=True, help="an inherited listening socket to serve the worker on")
    parser.add_argument("--binary", required=True, help="TFF's worker_binary")
    parser.add_argument("--no-isolation", action="store_true", help="keep the machine's network namespace (worker on every interface)")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca", help="CA that signed the client certificates")
    parser.add_argument("--remove-on-exit", metavar="DIR", help="the folder of the listening socket, removed at exit")
    args = parser.parse_args(argv)
    for signum in _STOP_SIGNALS:  # a stop before the worker serves: exit (it dies with us), still removing DIR
        signal.signal(signum, _exit)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    listener = socket.socket(fileno=args.listen_fd)
    try:
        try:
            tls = server_tls(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
            if not args.no_isolation:
                isolate()
            worker, port = _start_worker(args.binary, timeout=120)
        except (SandboxError, OSError, ssl.SSLError) as exc:
            print(f"{'no-namespace' if isinstance(exc, NoNamespace) else 'error'}: {exc}", flush=True)
            return 1
        print(f"ready {worker.pid}", flush=True)
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing more for the parent to read
        return asyncio.run(_serve(listener, worker, port, tls))
    finally:
        if args.remove_on_exit:
            shutil.rmtree(args.remove_on_exit, ignore_errors=True)


def _exit(*_) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
