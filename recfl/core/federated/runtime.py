"""TFF's C++ ``worker_binary`` as the execution engine, local or on several machines.

TFF 0.87 runs computations in a C++ worker process reached over gRPC. Its
default context starts one that can outlive Python; recfl starts its own
instead, tied to the parent with ``PR_SET_PDEATHSIG`` so it dies even when
the parent is SIGKILLed, and talks to it (or to remote workers started with
``recfl worker``) through ``RemoteExecutor`` contexts. Work is split into
chunks of clients; chunks run concurrently, one per worker at a time, and
their partial sums are merged by the caller.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from recfl.core.errors import RecflError

log = logging.getLogger(__name__)
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # gRPC's C core otherwise logs every fork of a worker

_PR_SET_PDEATHSIG = 1
_GRPC_OPTIONS = [
    ("grpc.max_message_length", 2_000_000_000),
    ("grpc.max_receive_message_length", 2_000_000_000),
    ("grpc.max_send_message_length", 2_000_000_000),
]


def worker_binary() -> Path:
    """The C++ worker shipped inside the tensorflow-federated wheel."""
    import tensorflow_federated as tff

    path = Path(tff.__file__).parent / "data" / "worker_binary"
    if not path.is_file():
        raise RecflError(f"{path}: TFF worker binary missing; reinstall with `make clean-venv venv`")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(parent: int):
    def setup():
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        os.setpgrp()  # Ctrl-C in the terminal reaches the parent, which stops the worker cleanly
    return setup


class LocalWorker:
    """A ``worker_binary`` child process on a loopback port; stopped at exit."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, tie_to_parent: bool = True):
        self.port = port or free_port()
        self.address = f"localhost:{self.port}"
        sink = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                worker_command(self.port),
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, close_fds=True,
                preexec_fn=_die_with_parent(os.getpid()) if tie_to_parent else None,
            )
        finally:
            if log_path:
                sink.close()
        atexit.register(self.stop)
        wait_ready(self.address, timeout=60, process=self.process)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _stub(address: str):
    import grpc
    import tensorflow_federated as tff

    return tff.framework.RemoteExecutorGrpcStub(grpc.insecure_channel(address, _GRPC_OPTIONS))


def wait_ready(address: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Block until the worker at ``address`` answers, or fail with a clear error."""
    stub, deadline = _stub(address), time.monotonic() + timeout
    while not stub.is_ready:
        if process is not None and process.poll() is not None:
            raise RecflError(f"TFF worker on {address} exited with code {process.returncode}")
        if time.monotonic() > deadline:
            raise RecflError(f"TFF worker {address} not reachable after {timeout:.0f}s")
        time.sleep(0.1)


def _context(address: str):
    import tensorflow_federated as tff

    stub = _stub(address)

    def stack(cardinalities):
        cardinalities.setdefault(tff.CLIENTS, 0)
        executor = tff.framework.RemoteExecutor(stub)
        executor.set_cardinalities(cardinalities)
        return executor

    return tff.framework.AsyncExecutionContext(
        executor_fn=tff.framework.ResourceManagingExecutorFactory(stack),
        compiler_fn=tff.backends.native.desugar_and_transform_to_native,
        transform_args=tff.tensorflow.transform_args,
        transform_result=tff.tensorflow.transform_result,
    )


class Runtime:
    """Runs a computation over chunks of clients on one or more TFF workers."""

    def __init__(self, workers: Sequence[str] | None = None, log_dir: Path | None = None):
        self._local: LocalWorker | None = None
        if workers:
            for address in workers:
                wait_ready(address, timeout=30)
            self.addresses = list(workers)
        else:
            self._local = LocalWorker(log_path=(log_dir / "tff_worker.log") if log_dir else None)
            self.addresses = [self._local.address]
        self._contexts = [_context(a) for a in self.addresses]
        self._loop = asyncio.new_event_loop()

    def close(self) -> None:
        self._loop.close()
        if self._local is not None:
            self._local.stop()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def local_worker_pid(self) -> int | None:
        """The process id of the worker this runtime started (None with remote workers)."""
        return None if self._local is None else self._local.process.pid

    def invoke(self, computation, arg=None):
        """Run one computation on the first worker and return its result."""
        call = self._contexts[0].invoke(computation, arg)
        return self._loop.run_until_complete(call)

    def map_chunks(self, computation, chunks: Sequence[list], shared=None) -> list:
        """``computation([shared,] chunk)`` for every chunk; chunks spread over workers, results in order."""
        queues: list[list[int]] = [list(range(w, len(chunks), len(self._contexts))) for w in range(len(self._contexts))]
        results: list = [None] * len(chunks)

        async def drain(context, indices):
            for i in indices:
                arg = chunks[i] if shared is None else (shared, chunks[i])
                results[i] = await context.invoke(computation, arg)

        async def run_all():
            await asyncio.gather(*(drain(c, q) for c, q in zip(self._contexts, queues)))

        self._loop.run_until_complete(run_all())
        return results


def worker_command(port: int) -> list[str]:
    """The command line of a worker serving on ``port`` (any number of concurrent calls)."""
    return [str(worker_binary()), f"--port={port}", "--max_concurrent_computation_calls=-1"]


def serve(port: int) -> int:
    """Run a worker in the foreground (``recfl worker``) until interrupted; Ctrl-C is a clean stop (exit 0)."""
    command = worker_command(port)
    print(f"TFF worker listening on 0.0.0.0:{port} (connect with --workers HOST:{port}); Ctrl-C stops it", flush=True)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        process.wait()
        return 0
