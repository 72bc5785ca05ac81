"""``recfl broker`` starts and stops the bundled broker; stream commands fail with one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from kafka_fixtures import REPO

from recfl.app.cli import main
from recfl.core.errors import RecflError
from streaming.broker import free_port, start_broker
from streaming.settings import StreamConfig
from streaming.topics import ensure_topic


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is not alive
        return stat.read().split()[2] != "Z"


def _start_broker_command(port: int) -> tuple[subprocess.Popen, dict]:
    process = subprocess.Popen([sys.executable, "-m", "recfl", "broker", "--port", str(port)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not lines or lines[-1] != "}\n":
        line = process.stdout.readline()
        assert line, process.stderr.read()
        lines.append(line)
    return process, json.loads("".join(lines))


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_broker_command_serves_until_interrupted(stop):
    port = free_port()
    process, info = _start_broker_command(port)
    assert info["bootstrap_servers"] == f"127.0.0.1:{port}" and _alive(info["pid"])
    assert ensure_topic(StreamConfig(bootstrap_servers=info["bootstrap_servers"]), "t", 2) == 2
    process.send_signal(stop)
    assert process.wait(30) == 0
    assert "stopped" in process.stderr.read()
    assert not _alive(info["pid"])


def test_a_killed_broker_command_leaves_no_broker_behind():
    process, info = _start_broker_command(free_port())
    process.kill()
    process.wait()
    deadline = time.monotonic() + 10
    while _alive(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(info["pid"])


def test_port_in_use(kafka_broker):
    with pytest.raises(RecflError, match=f"127.0.0.1:{kafka_broker.port} is in use"):
        start_broker(kafka_broker.port)


@pytest.mark.parametrize("argv,message", [
    (["stream", "consume", "--pool", "p", "--max-events", "0"], "--max-events must be at least 1, got 0"),
    (["stream", "consume", "--pool", "p", "--idle-timeout", "-1"], "--idle-timeout must be positive"),
    (["stream", "produce", "--format", "taobao", "--topic", "t"], "format 'taobao' needs --path"),
    (["stream", "consume", "--pool", "p", "--set", "streaming.batch=3"], "unknown key(s) batch in [streaming]"),
    (["stream", "produce", "--format", "synthetic", "--rate", "0"], "--rate must be positive"),
])
def test_user_mistakes_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recfl: error: ") and message in err and "\n" not in err


def test_unreachable_broker_is_one_line_for_the_producer(capsys, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("1,2,3,pv,1511658000\n")
    argv = ["stream", "produce", "--format", "taobao", "--path", str(path), "--topic", "t",
            "--bootstrap-servers", f"127.0.0.1:{free_port()}", "--set", "streaming.request_timeout_ms=1000"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recfl: error: cannot reach the broker at 127.0.0.1:") and "\n" not in err
