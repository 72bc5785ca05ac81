"""TFF's C++ ``worker_binary`` as the execution engine, local or on several machines.

TFF 0.87 runs computations in a C++ worker process reached over gRPC. The
worker listens on every interface without authentication, so recfl never
exposes it: :class:`LocalWorker` starts it through ``sandbox`` (its own
network namespace, reachable only through a socket recfl hands it; tied to
this process so it dies even when this process is SIGKILLed). ``Runtime``
talks to it, or to remote workers started with ``recfl worker``, through
``RemoteExecutor`` contexts whose every call has a deadline. Work is split
into chunks of clients; each worker runs one chunk at a time in a thread of
its own; a lost worker's chunk goes to the remaining workers, and when none
is left the run stops with :class:`WorkerLost`. Partial sums are merged by
the caller in chunk order, so which worker ran a chunk does not matter.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import ipaddress
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from recfl.core.errors import RecflError
from recfl.core.federated.sandbox import die_with_parent
from recfl.core.federated.transport import (
    DeadlineStub,
    TLSFiles,
    WorkerFailed,
    WorkerLost,
    channel,
    wait_ready,
)

log = logging.getLogger(__name__)
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's C core otherwise logs every fork of a worker

ISOLATIONS = ("namespace", "none")
CALL_TIMEOUT = 300.0


def worker_binary() -> Path:
    """The C++ worker shipped inside the tensorflow-federated wheel (found without importing TensorFlow)."""
    spec = importlib.util.find_spec("tensorflow_federated")
    path = Path(spec.submodule_search_locations[0]) / "data" / "worker_binary" if spec else Path("tensorflow_federated")
    if not path.is_file():
        raise RecflError(f"{path}: TFF worker binary missing; reinstall with `make clean-venv venv`")
    return path


class NoNamespace(WorkerFailed):
    """This machine refuses the worker a network namespace of its own."""


class LocalWorker:
    """A ``worker_binary`` on this machine, served only on ``listener`` (see ``sandbox``); stopped at exit."""

    def __init__(self, listener: socket.socket, address: str, isolate: bool = True, tls: TLSFiles | None = None,
                 log=None, cleanup: Path | None = None):
        """``log``: where the worker's own messages go (a file, None for this stderr); ``cleanup``: removed at stop."""
        self.address, self._cleanup = address, cleanup
        try:
            command = [sys.executable, "-m", "recfl.core.federated.sandbox", "--listen-fd", str(listener.fileno()),
                       "--binary", str(worker_binary()), *([] if isolate else ["--no-isolation"]), *(tls.args() if tls else []),
                       *(["--remove-on-exit", str(cleanup)] if cleanup else [])]
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                            pass_fds=(listener.fileno(),), preexec_fn=die_with_parent(os.getpid(), signal.SIGTERM))
        except BaseException:
            self._remove_cleanup()
            raise
        finally:
            listener.close()  # the sandbox has its own copy
        atexit.register(self.stop)
        kind, _, text = self._first_line(timeout=180).partition(" ")
        if kind != "ready":
            self.stop()
            failure = NoNamespace if kind == "no-namespace:" else WorkerFailed
            raise failure(text if kind.endswith(":") else f"TFF worker sandbox exited with code {self.process.returncode}")
        self.binary_pid = int(text)

    @classmethod
    def private(cls, isolate: bool = True, log_path: Path | None = None) -> "LocalWorker":
        """A worker for this process only: a Unix socket in a folder only this user can enter."""
        folder = Path(tempfile.mkdtemp(prefix="recfl-worker-"))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(folder / "worker.sock"))
        listener.listen(64)
        with open(log_path or os.devnull, "ab") as log:
            try:
                return cls(listener, f"unix:{folder / 'worker.sock'}", isolate, log=log, cleanup=folder)
            except NoNamespace as exc:
                raise NoNamespace(f"{exc}, or, knowing that the worker then accepts TensorFlow graphs from anyone who "
                                  "reaches this machine, set federated.worker_isolation = \"none\"") from None

    def _first_line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().decode().strip() if ready else f"error: TFF worker not started within {timeout:.0f}s"
        self.process.stdout.close()
        return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # the sandbox stops the worker, then itself
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()  # the worker dies with it
                self.process.wait()
        self._remove_cleanup()

    def _remove_cleanup(self) -> None:
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)


class _Worker:
    """One worker: its channel, a deadline-bound TFF context, and the event loop its thread runs calls in."""

    def __init__(self, address: str, tls: TLSFiles | None, call_timeout: float):
        import tensorflow_federated as tff

        self.address = address
        self.channel = channel(address, tls)
        stub = DeadlineStub(self.channel, address, call_timeout)

        def stack(cardinalities):
            cardinalities.setdefault(tff.CLIENTS, 0)
            executor = tff.framework.RemoteExecutor(stub)
            executor.set_cardinalities(cardinalities)
            return executor

        self.context = tff.framework.AsyncExecutionContext(
            executor_fn=tff.framework.ResourceManagingExecutorFactory(stack),
            compiler_fn=tff.backends.native.desugar_and_transform_to_native,
            transform_args=tff.tensorflow.transform_args,
            transform_result=tff.tensorflow.transform_result,
        )
        self.loop = asyncio.new_event_loop()

    def invoke(self, computation, arg):
        return self.loop.run_until_complete(self.context.invoke(computation, arg))


class Runtime:
    """Runs a computation over chunks of clients on one or more TFF workers.

    ``call_timeout`` bounds every call to a worker (seconds); ``isolate``
    keeps the local worker in its own network namespace; ``tls`` is this
    client's certificate, key and the CA of remote workers (``recfl worker``
    beyond loopback).
    """

    def __init__(self, workers: Sequence[str] | None = None, log_dir: Path | None = None, call_timeout: float = CALL_TIMEOUT,
                 isolate: bool = True, tls: TLSFiles | None = None):
        self._local: LocalWorker | None = None
        if workers:
            for address in workers:
                wait_ready(address, timeout=30, tls=tls)
            addresses = list(workers)
        else:
            self._local = LocalWorker.private(isolate, log_path=(log_dir / "tff_worker.log") if log_dir else None)
            addresses, tls = [self._local.address], None
        self.addresses = addresses
        self._workers = [_Worker(a, tls, call_timeout) for a in addresses]
        self._pool = ThreadPoolExecutor(max_workers=len(self._workers), thread_name_prefix="tff-worker")
        self.lost: dict[str, str] = {}  # address -> why it was given up

    def close(self) -> None:
        """Stop in order: channels (cancels calls in flight), call threads, loops, the local worker."""
        for worker in self._workers:
            worker.channel.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for worker in self._workers:
            worker.loop.close()
        if self._local is not None:
            self._local.stop()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def local_worker_pid(self) -> int | None:
        """The process id of the worker binary this runtime started (None with remote workers)."""
        return None if self._local is None else self._local.binary_pid

    def invoke(self, computation, arg=None):
        """Run one computation on a worker and return its result."""
        return self._run(computation, [arg])[0]

    def map_chunks(self, computation, chunks: Sequence[list], shared=None) -> list:
        """``computation([shared,] chunk)`` for every chunk; chunks spread over workers, results in order."""
        return self._run(computation, [chunk if shared is None else (shared, chunk) for chunk in chunks])

    def _run(self, computation, args: list) -> list:
        """Each argument on the next idle worker; a lost worker's argument goes back to the queue."""
        results: list = [None] * len(args)
        pending, running = deque(range(len(args))), {}
        idle = [w for w in self._workers if w.address not in self.lost]
        try:
            while pending or running:
                while pending and idle:
                    worker, i = idle.pop(0), pending.popleft()
                    running[self._pool.submit(worker.invoke, computation, args[i])] = (worker, i)
                if not running:
                    raise WorkerLost(f"{'; '.join(self.lost.values())}; no TFF worker is left")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    worker, i = running.pop(future)
                    try:
                        results[i] = future.result()
                        idle.append(worker)
                    except WorkerLost as lost:
                        self.lost[worker.address] = str(lost)
                        pending.appendleft(i)
                        if len(self.lost) < len(self._workers):
                            log.warning("%s; its work moves to the %d other worker(s)", lost, len(self._workers) - len(self.lost))
        except Exception:
            wait(running)  # a worker never gets a new call before its last one ended
            raise
        return results


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is this machine's loopback."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RecflError(f"--listen {host}: {exc.strerror}") from None
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def serve(host: str, port: int, tls: TLSFiles | None = None) -> int:
    """Run a worker in the foreground (``recfl worker``) until SIGINT/SIGTERM, a clean stop (exit 0).

    Plain TCP only on loopback; any other address needs mutual TLS.
    """
    if tls is None and not is_loopback(host):
        raise RecflError(f"--listen {host} exposes the worker beyond this machine: give --tls-cert, --tls-key and --tls-ca "
                         "(mutual TLS), since anyone who reaches it can run TensorFlow graphs here")
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    listener = socket.create_server(sockaddr[:2], family=family, backlog=128)
    port = listener.getsockname()[1]  # --port 0: one the system chose
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a process manager's stop is a Ctrl-C
    worker = LocalWorker(listener, f"{host}:{port}", tls=tls)
    try:
        how = "mutual TLS: clients need a certificate signed by --tls-ca" if tls else "this machine only"
        print(f"TFF worker serving on {host}:{port} ({how}); connect with --workers HOST:{port}; Ctrl-C stops it", flush=True)
        code = worker.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        worker.stop()
    raise WorkerFailed(f"the TFF worker stopped on its own (exit code {code}); see the log above")
