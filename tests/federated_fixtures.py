"""Federated test support: a TFF runtime (our own local C++ worker) shared by a session, a small
prepared data set, and `recfl worker` processes found again by a marker even once orphaned."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

SIM_ARGS = ["--rounds", "6", "--clients-per-round", "8", "--eval-every", "3", "--seed", "4",
            "--set", "model.embed_dim=4", "--set", "model.hidden=[8]", "--set", "federated.chunk_clients=3"]


@pytest.fixture(scope="session")
def tff_runtime():
    from recfl.core.federated.runtime import Runtime

    with Runtime() as runtime:
        yield runtime


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    from recfl.core.dataset import prepare
    from recfl.core.formats import SyntheticSpec, load

    return prepare(load("synthetic", None, SyntheticSpec(users=40, items=150, categories=8, clusters=4, events_per_user=20, seed=9)),
                   tmp_path_factory.mktemp("fl") / "data")


def final_params(run_dir: Path) -> list:
    from recfl.core.models import load_model

    return load_model(run_dir / "model")[1].arrays()


def metrics_rounds(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [int(re.search(r'"round": (\d+)', line).group(1)) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_rounds(run_dir: Path, rounds: int, process: subprocess.Popen, timeout: float = 240) -> None:
    """Until ``run_dir`` has finished ``rounds`` rounds (fails if ``process`` ends first)."""
    deadline = time.monotonic() + timeout
    while len(metrics_rounds(run_dir)) < rounds:
        assert process.poll() is None, f"the simulation ended early with code {process.returncode}"
        assert time.monotonic() < deadline, f"{run_dir}: fewer than {rounds} rounds after {timeout}s"
        time.sleep(0.1)


@dataclass
class Served:
    """A `recfl worker` started by a test: its process, port, log and the marker its descendants inherit."""

    process: subprocess.Popen
    port: int
    log: Path
    marker: str

    def processes(self) -> list[psutil.Process]:
        """Every live process of this worker (recfl worker, sandbox, worker_binary), orphans included."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("RECFL_TEST_WORKER") == self.marker and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def binary(self) -> psutil.Process:
        (binary,) = [p for p in self.processes() if p.name() == "worker_binary"]
        return binary

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        psutil.wait_procs(self.processes(), timeout=10)


def start_workers(logs: list[Path], *args: str) -> list[Served]:
    """One `recfl worker --port 0 ARGS` per log, started together; returned once they serve
    (the first stdout line names the port)."""
    started = []
    for log in logs:
        marker = uuid.uuid4().hex
        with open(log, "ab") as sink:
            process = subprocess.Popen([sys.executable, "-m", "recfl", "worker", "--port", "0", *args], stdout=subprocess.PIPE,
                                       stderr=sink, env={**os.environ, "RECFL_TEST_WORKER": marker}, text=True)
        started.append((process, log, marker))
    served = []
    for process, log, marker in started:
        line = process.stdout.readline()
        if not line:
            process.wait(30)
            pytest.fail(f"recfl worker did not start (code {process.returncode}): {log.read_text()[-2000:]}")
        served.append(Served(process, int(re.search(r":(\d+) \(", line).group(1)), log, marker))
    return served


@pytest.fixture
def workers(tmp_path):
    """Start `recfl worker`s with ``workers(n, *args)``; all stopped after the test."""
    started: list[Served] = []

    def start(n: int = 1, *args: str) -> list[Served]:
        new = start_workers([tmp_path / f"worker{len(started) + k}.log" for k in range(n)], *args)
        started.extend(new)
        return new

    yield start
    for served in started:
        served.stop()
