"""TFF workers that fail, and no open door: chunks of a lost worker move to the others or the run stops
clearly and resumes to the same model; every call has a deadline; `recfl worker` takes its binary down
on any stop signal; the local worker is reachable only through its private socket; an exposed worker
serves only clients with a certificate from its CA."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest

from federated_fixtures import SIM_ARGS, final_params, metrics_rounds, wait_for_rounds
from recfl.app.cli import main
from recfl.core.federated.runtime import Runtime
from recfl.core.federated.transport import TLSFiles, answers

ROUNDS = 12


def _total():
    import tensorflow as tf
    import tensorflow_federated as tff

    @tff.tensorflow.computation(tff.TensorType(np.float32, [None]))
    def total(x):
        return tf.reduce_sum(x)

    return total


def _args(data, out: Path, rounds: int = ROUNDS) -> list[str]:
    return ["simulate", "--data", str(data.root), "--out", str(out), *SIM_ARGS, "--rounds", str(rounds)]


def _disturbed_run(args: list[str], run: Path, log: Path, disturb, after: int = 3) -> int:
    """`recfl ARGS` (a simulation into ``run``, stderr to ``log``); ``disturb(process)`` once ``after`` rounds
    are done; the exit code."""
    with open(log, "wb") as err:
        sim = subprocess.Popen([sys.executable, "-m", "recfl", *args], stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for_rounds(run, after, sim)
            disturb(sim)
            return sim.wait(300)
        finally:
            sim.kill()


def _messages(log: Path) -> list[str]:
    """stderr lines without the progress bar's redraws."""
    return [line for line in log.read_text().replace("\r", "\n").splitlines() if line.strip() and " rounds: " not in line]


@pytest.fixture(scope="module")
def undisturbed(small_data, tmp_path_factory):
    """The model of an uninterrupted ROUNDS-round run on the local worker."""
    out = tmp_path_factory.mktemp("undisturbed") / "run"
    assert main(_args(small_data, out)) == 0
    return final_params(out)


def _assert_same_model(run: Path, reference: list) -> None:
    for got, want in zip(final_params(run), reference):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_two_workers_on_loopback_match_one_worker(small_data, tmp_path, workers):
    """Two `recfl worker` processes split each round's chunks and reach the one-worker result;
    the TFF iterative process (federated_select) reaches it too."""
    from recfl.core.federated.simulate import FederatedConfig, simulate
    from recfl.core.models import ModelConfig

    fed = FederatedConfig(rounds=3, clients_per_round=8, eval_every=3, seed=4, chunk_clients=3)
    model = ModelConfig(embed_dim=4, hidden=(8,))
    simulate(small_data, tmp_path / "one", fed, model, progress=False)
    served = workers(2)
    binaries = [s.binary() for s in served]
    before = [b.cpu_times().user for b in binaries]
    simulate(small_data, tmp_path / "two", fed, model, workers=[f"localhost:{s.port}" for s in served], progress=False)
    after = [b.cpu_times().user for b in binaries]
    assert all(b > a for a, b in zip(before, after))  # both workers computed
    simulate(small_data, tmp_path / "select", FederatedConfig(**{**fed.__dict__, "distributor": "select"}), model, progress=False)
    for one, two, select in zip(*(final_params(tmp_path / d) for d in ("one", "two", "select"))):
        np.testing.assert_allclose(one, two, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(one, select, rtol=1e-5, atol=1e-6)


def test_a_killed_worker_s_chunks_move_to_the_other_worker(small_data, tmp_path, workers, undisturbed):
    a, b = workers(2)
    run, log = tmp_path / "run", tmp_path / "simulate.err"
    args = [*_args(small_data, run), "--workers", f"localhost:{a.port},localhost:{b.port}"]
    assert _disturbed_run(args, run, log, lambda _: b.binary().kill()) == 0
    assert metrics_rounds(run) == list(range(1, ROUNDS + 1))
    _assert_same_model(run, undisturbed)
    lost = [line for line in _messages(log) if "lost" in line]
    assert len(lost) == 1 and f"TFF worker localhost:{b.port} lost" in lost[0] and "other worker" in lost[0]
    assert b.process.wait(30) == 1  # the worker reports that its binary died, and stops
    assert "stopped on its own" in b.log.read_text()


def test_a_run_that_loses_its_only_worker_stops_clearly_and_resumes(small_data, tmp_path, workers, undisturbed):
    (served,) = workers(1)
    run, log = tmp_path / "run", tmp_path / "simulate.err"
    assert _disturbed_run([*_args(small_data, run), "--workers", f"localhost:{served.port}"], run, log,
                          lambda _: served.binary().kill()) == 1
    messages = _messages(log)
    assert not any("Traceback" in line for line in messages)
    (error,) = [line for line in messages if line.startswith("recfl: error:")]
    done = metrics_rounds(run)[-1]
    assert f"TFF worker localhost:{served.port} lost" in error and f"stopped after round {done};" in error and "--resume" in error
    assert done < ROUNDS
    (again,) = workers(1, "--port", str(served.port))  # nothing of the dead worker holds its port
    assert main([*_args(small_data, run), "--workers", f"localhost:{again.port}", "--resume"]) == 0
    assert metrics_rounds(run) == list(range(1, ROUNDS + 1))
    _assert_same_model(run, undisturbed)


def test_a_hung_worker_is_given_up_at_the_call_deadline(workers):
    """A worker that stops answering (SIGSTOP: the connection stays open) loses its chunk to the other one."""
    a, b = workers(2)
    total, chunks = _total(), [np.arange(k, dtype=np.float32) for k in range(1, 9)]
    with Runtime([f"localhost:{a.port}", f"localhost:{b.port}"], call_timeout=3) as runtime:
        assert runtime.map_chunks(total, chunks[:2]) == [0.0, 1.0]  # both workers answer
        b.binary().suspend()
        try:
            assert runtime.map_chunks(total, chunks) == [float(c.sum()) for c in chunks]
        finally:
            b.binary().resume()
        assert list(runtime.lost) == [f"localhost:{b.port}"] and "DEADLINE_EXCEEDED" in runtime.lost[f"localhost:{b.port}"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_stopping_recfl_worker_takes_its_binary_down(workers, signum):
    (served,) = workers(1)
    processes = served.processes()
    assert {p.name() for p in processes} >= {"worker_binary"} and len(processes) == 3  # recfl worker, sandbox, binary
    for proc in processes:  # no TensorFlow in recfl's own processes: a signal never waits on a long import
        assert proc.name() == "worker_binary" or not any("tensorflow" in m.path for m in proc.memory_maps())
    served.process.send_signal(signum)
    code = served.process.wait(30)
    assert psutil.wait_procs(processes, timeout=10)[1] == [] and served.processes() == []
    if signum != signal.SIGKILL:
        assert code == 0 and "Traceback" not in served.log.read_text()
    socket.create_server(("127.0.0.1", served.port)).close()  # a restart does not collide with a leftover


def test_ctrl_c_stops_simulate_without_a_traceback(small_data, tmp_path):
    run, log, helpers = tmp_path / "run", tmp_path / "simulate.err", []

    def interrupt(sim):
        helpers.extend(psutil.Process(sim.pid).children(recursive=True))
        assert any(p.name() == "worker_binary" for p in helpers)
        sim.send_signal(signal.SIGINT)

    assert _disturbed_run(_args(small_data, run, rounds=100_000), run, log, interrupt, after=2) == 130
    messages = _messages(log)
    assert messages[-1] == "recfl: interrupted" and not any("Traceback" in line or "Error" in line for line in messages)
    assert psutil.wait_procs(helpers, timeout=10)[1] == []


def _other_addresses() -> list[str]:
    """This machine's addresses beyond loopback (link-local IPv6 left out: it needs a scope)."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(addr.address.split("%")[0])
                if not ip.is_loopback and not ip.is_link_local:
                    found.append(str(ip))
    if not found:
        pytest.skip("this machine has no address beyond loopback to probe from")
    return found


def _listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on, read from /proc as that process sees its network namespace."""
    sockets = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir() if os.readlink(fd).startswith("socket:")}
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and f"socket:[{fields[9]}]" in sockets:  # LISTEN, on one of its sockets
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize("isolate", [True, False], ids=["namespace", "none"])
def test_the_local_worker_is_reachable_only_through_its_private_socket(isolate):
    """With isolation, no address of this machine reaches the worker's port, loopback included; without
    (federated.worker_isolation = "none") every address does: the open door this test would see."""
    others = _other_addresses()
    with Runtime(isolate=isolate) as runtime:
        assert runtime.invoke(_total(), np.array([1, 2], np.float32)) == 3.0
        folder = Path(runtime.addresses[0].removeprefix("unix:")).parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # only this user may reach the socket
        (port,) = _listening_ports(runtime.local_worker_pid)
        reached = [host for host in [*others, "127.0.0.1", "::1"] if _connects(host, port)]
    assert reached == [] if isolate else set(others) <= set(reached)


def _certificates(folder: Path, host: str) -> dict[str, Path]:
    """A CA, a server certificate for ``host`` and a client certificate from it, and a client from another CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    files = {}

    def issue(name: str, issuer=None, usage=None):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name, issuer_key = (issuer[1].subject, issuer[0]) if issuer else (subject, key)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
        if usage is ExtendedKeyUsageOID.SERVER_AUTH:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(host))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        files[name] = folder / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"] = folder / f"{name}.key"
        files[f"{name}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
        return key, cert

    ca, other_ca = issue("ca"), issue("other-ca")
    issue("server", ca, ExtendedKeyUsageOID.SERVER_AUTH)
    issue("client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    issue("intruder", other_ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    return files


def _answers_without_a_certificate(address: str, ca: Path) -> bool:
    import grpc

    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.read_bytes())) as channel:
        try:
            channel.unary_unary("/recfl.Probe/Ready")(b"", timeout=3, wait_for_ready=True)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNIMPLEMENTED
    return True


def test_an_exposed_worker_serves_only_clients_with_a_certificate_from_its_ca(tmp_path, workers, capsys):
    host = next(h for h in _other_addresses() if ipaddress.ip_address(h).version == 4)
    assert main(["worker", "--listen", "0.0.0.0", "--port", "0"]) == 2  # beyond loopback only with mutual TLS
    assert "--tls-cert, --tls-key and --tls-ca" in capsys.readouterr().err
    pem = _certificates(tmp_path, host)
    (served,) = workers(1, "--listen", "0.0.0.0", "--tls-cert", str(pem["server"]), "--tls-key", str(pem["server.key"]),
                        "--tls-ca", str(pem["ca"]))
    address = f"{host}:{served.port}"
    assert not answers(address, None, timeout=3)  # plain text
    assert not _answers_without_a_certificate(address, pem["ca"])
    assert not answers(address, TLSFiles(pem["intruder"], pem["intruder.key"], pem["ca"]), timeout=3)
    assert not answers(address, TLSFiles(pem["client"], pem["client.key"], pem["other-ca"]), timeout=3)  # unknown server
    assert served.log.read_text().count("refused a connection") >= 3
    client = TLSFiles(pem["client"], pem["client.key"], pem["ca"])
    with Runtime([address], tls=client) as runtime:
        assert runtime.invoke(_total(), np.array([2, 3], np.float32)) == 5.0
    assert "client client connected" in served.log.read_text()


@pytest.mark.parametrize("args, message", [
    (["--workers", "localhost:1", "--tls-cert", "a.pem"], "needs all of --tls-cert, --tls-key and --tls-ca"),
    (["--tls-cert", "a.pem", "--tls-key", "a.key", "--tls-ca", "ca.pem"], "secure the connections to --workers"),
    (["--workers", "localhost:1", "--tls-cert", "missing.pem", "--tls-key", "a.key", "--tls-ca", "ca.pem"], "--tls-cert missing.pem"),
])
def test_tls_mistakes_are_one_line_errors(small_data, tmp_path, capsys, args, message):
    assert main(["simulate", "--data", str(small_data.root), "--out", str(tmp_path / "run"), *args]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("recfl: error:") and message in err and "\n" not in err


def test_without_user_namespaces_the_local_worker_refuses_to_start_in_one_line(small_data, tmp_path):
    """Where namespaces are forbidden (here: a namespace limit of 0), simulate says so and how to proceed."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    recfl = [sys.executable, "-m", "recfl", *_args(small_data, tmp_path / "run", rounds=1)]
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh", *recfl], capture_output=True, text=True)
    if done.returncode != 0 and not any(line.startswith(("recfl", "Traceback")) for line in done.stderr.splitlines()):
        pytest.skip(f"cannot lower the namespace limit here: {done.stderr.strip()}")  # recfl never ran
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("recfl: error:")]
    assert done.returncode == 1 and "network namespace of its own" in error and 'worker_isolation = "none"' in error
    assert "Traceback" not in done.stderr
