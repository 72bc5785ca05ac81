"""FedSubAvg / FedAvg in TFF: the aggregation rule against a NumPy reference, FedAvg
equivalence, the privacy boundary, sampling and resume after a kill (workers: test_workers.py)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf

from recfl.core.features import Examples
from recfl.core.federated import computations
from recfl.core.federated.clients import ClientData
from recfl.core.federated.process import FederatedProcess, Heat, RowCoefficients
from recfl.core.federated.sampling import Availability, sample_clients
from recfl.core.models import ModelConfig, ModelSpec, init_params, train_step
from recfl.core.submodel import Submodel

from federated_fixtures import SIM_ARGS, final_params, metrics_rounds, wait_for_rounds
from tensorboard_events import expected_rounds, scalars

SPEC = ModelSpec.build(ModelConfig(embed_dim=3, hidden=(4,), history=2, max_categories=1), {"items": 12, "categories": 5})
WORK = computations.ClientWork(epochs=2, batch_size=2, learning_rate=0.3)


def _client(user, items, hist, cats, labels):
    ex = Examples(
        item=np.array(items, np.int32), cats=np.array(cats, np.int32)[:, None], hist=np.array(hist, np.int32),
        label=np.array(labels, np.float32), user_id=np.full(len(items), user, np.int64), timestamp=np.zeros(len(items), np.int64),
    )
    sub = Submodel.covering(SPEC, ex)
    return ClientData(user, sub, sub.localize(ex)), ex


# Items 2..11; row 11 is touched by nobody, row 9 only by client 2 (not sampled), row 8 only by client 1.
CLIENTS = [
    _client(0, [2, 3, 4], [[0, 5], [2, 5], [0, 0]], [2, 3, 2], [1, 0, 1]),
    _client(1, [2, 8, 6, 3, 7], [[0, 0], [0, 2], [2, 8], [0, 6], [6, 3]], [2, 4, 3, 3, 2], [1, 1, 0, 1, 0]),
    _client(2, [9, 2], [[0, 0], [0, 9]], [4, 2], [1, 1]),
]
SAMPLED = [0, 1]


def _reference_local_training(params, ex, seed):
    """Local SGD on the FULL model in eager TF, replaying the client's stateless shuffle."""
    weights = [tf.constant(a) for a in params.arrays()]
    n = len(ex)
    for epoch in range(WORK.epochs):
        order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.constant(seed, tf.int32) + tf.constant([0, epoch]))).numpy()
        for lo in range(0, n, WORK.batch_size):
            pick = order[lo : lo + WORK.batch_size]
            weights, _ = train_step(SPEC, weights, ex.take(pick).batch(), WORK.learning_rate)
    return [w.numpy() - a for w, a in zip(weights, params.arrays())]


def _reference_round(params, coefficients):
    """The documented rule, computed client by client with explicit loops (private weights never reach the server)."""
    deltas = {i: _reference_local_training(params, CLIENTS[i][1], (7, k)) for k, i in enumerate(SAMPLED)}
    sizes = {i: len(CLIENTS[i][1]) for i in SAMPLED}
    total = sum(sizes.values())
    expected = [a.astype(np.float64).copy() for a in params.arrays()]
    for k, (group, name, _) in enumerate(SPEC.shapes()):
        if group == "tables":
            coef = coefficients.tables[name]
            for m in range(len(expected[k])):
                expected[k][m] += coef[m] * sum(sizes[i] * deltas[i][k][m] for i in SAMPLED) / total
        elif group == "dense":
            expected[k] += sum(sizes[i] * deltas[i][k] for i in SAMPLED) / total
    return expected


def _heat_by_hand():
    counts = {name: np.zeros(rows) for name, rows in SPEC.rows}
    for data, ex in CLIENTS:
        for name, table in counts.items():
            table[data.submodel.rows[name]] += len(ex)
    return Heat(counts, float(sum(len(ex) for _, ex in CLIENTS)))


@pytest.mark.parametrize("algorithm", ["fedsubavg", "fedavg"])
def test_round_matches_the_numpy_reference(tff_runtime, algorithm):
    params = init_params(SPEC, 3)
    probe = FederatedProcess(SPEC, WORK, RowCoefficients.for_algorithm("fedavg", SPEC), tff_runtime, chunk_clients=2)
    heat = probe.heat([[c for c, _ in CLIENTS[:2]], [CLIENTS[2][0]]])  # two batches, merged
    by_hand = _heat_by_hand()
    for name in ("item", "category"):
        np.testing.assert_allclose(heat.tables[name], by_hand.tables[name])
    assert heat.total == by_hand.total == 10
    coefficients = RowCoefficients.for_algorithm(algorithm, SPEC, heat)
    if algorithm == "fedsubavg":
        assert coefficients.tables["item"][8] == pytest.approx(10 / 5) and coefficients.tables["item"][2] == pytest.approx(1.0)
    process = FederatedProcess(SPEC, WORK, coefficients, tff_runtime, chunk_clients=1)  # one client per chunk: merge path
    state, metrics = process.next(process.initialize(params), [CLIENTS[i][0] for i in SAMPLED], seed=7)
    expected = _reference_round(params, coefficients)
    for got, want in zip(state.params.arrays(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    item, before = state.params.tables["item"], params.tables["item"]
    assert np.array_equal(item[11], before[11])  # touched by nobody
    assert np.array_equal(item[9], before[9])  # only by an unsampled client
    assert not np.allclose(item[8], before[8])  # only by client 1
    assert np.array_equal(state.params.private["user"], params.private["user"])  # private weights never reach the server
    assert (metrics.clients, metrics.examples, state.round) == (2, 8, 1)


@pytest.mark.parametrize("algorithm", ["fedsubavg", "fedavg"])
def test_tff_iterative_process_matches_the_reference_and_the_host_round(tff_runtime, algorithm):
    """The tff.templates.IterativeProcess (federated_select, in-TFF server update) computes the same round."""
    import tensorflow_federated as tff

    from recfl.core.federated.tff_process import (
        SelectProcess,
        build_fedsubavg_process,
        client_value,
        params_of,
    )

    params = init_params(SPEC, 3)
    coefficients = RowCoefficients.for_algorithm(algorithm, SPEC, _heat_by_hand())
    capacity = {"item": 16, "category": 8}
    process = build_fedsubavg_process(SPEC, WORK, coefficients, params, capacity=capacity)
    assert isinstance(process, tff.templates.IterativeProcess)
    assert str(process.next.type_signature.parameter[0]).endswith("@SERVER")
    state = tff_runtime.invoke(process.initialize)
    assert state["round"] == 0 and np.array_equal(params_of(state, SPEC).tables["item"], params.tables["item"])
    clients = [client_value(CLIENTS[i][0], capacity, (7, k)) for k, i in enumerate(SAMPLED)]
    state, metrics = tff_runtime.invoke(process.next, (state, clients))
    got = params_of(state, SPEC)
    for value, want in zip(got.arrays(), _reference_round(params, coefficients)):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    assert np.array_equal(got.tables["item"][11], params.tables["item"][11])
    assert np.array_equal(got.tables["item"][9], params.tables["item"][9])
    assert state["round"] == 1 and metrics["examples"] == 8
    host = FederatedProcess(SPEC, WORK, coefficients, tff_runtime)
    select = SelectProcess(SPEC, WORK, coefficients, tff_runtime)
    a, ma = host.next(host.initialize(params), [CLIENTS[i][0] for i in SAMPLED], seed=7)
    b, mb = select.next(select.initialize(params), [CLIENTS[i][0] for i in SAMPLED], seed=7)
    for x, y in zip(a.params.arrays(), b.params.arrays()):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert (ma.examples, ma.upload_bytes) == (mb.examples, mb.upload_bytes) and ma.train_loss == pytest.approx(mb.train_loss)


def test_fedavg_with_unit_coefficients_equals_dense_fedavg(tff_runtime):
    """Sparse submodel training + coefficient 1 == plain weighted FedAvg over the full model."""
    params = init_params(SPEC, 5)
    process = FederatedProcess(SPEC, WORK, RowCoefficients.for_algorithm("fedavg", SPEC), tff_runtime)
    state, _ = process.next(process.initialize(params), [CLIENTS[i][0] for i in SAMPLED], seed=7)
    deltas = {i: _reference_local_training(params, CLIENTS[i][1], (7, k)) for k, i in enumerate(SAMPLED)}
    sizes = {i: len(CLIENTS[i][1]) for i in SAMPLED}
    for k, ((group, _, _), base) in enumerate(zip(SPEC.shapes(), params.arrays())):
        dense_fedavg = base + (sum(sizes[i] * deltas[i][k] for i in SAMPLED) / sum(sizes.values()) if group != "private" else 0)
        np.testing.assert_allclose(state.params.arrays()[k], dense_fedavg, rtol=1e-5, atol=1e-6)


def test_clients_upload_only_ids_deltas_and_counts():
    import tensorflow_federated as tff

    comps = computations.build(SPEC, WORK)
    upload = comps.client_work.type_signature.result
    assert [name for name, _ in tff.structure.to_elements(upload)] == ["tables", "dense", "examples", "loss"]
    assert [name for name, _ in tff.structure.to_elements(upload["tables"])] == ["item", "category"]
    for table in ("item", "category"):
        fields = dict(tff.structure.to_elements(upload["tables"][table]))
        assert set(fields) == {"ids", "rows"}
        assert str(fields["ids"]) == "int32[?]" and str(fields["rows"]) == f"float32[?,{SPEC.config.embed_dim}]"
    assert "user" not in str(upload)  # the private user vector never leaves the client
    assert str(upload["examples"]) == "float32" and str(upload["loss"]) == "float32"
    # nothing of the client data (examples, labels, history) is in the upload or at the server
    text = str(comps.round.type_signature.result)
    assert text.endswith("@SERVER") and "label" not in text and "hist" not in text
    assert "label" not in str(upload) and "hist" not in str(upload)


def test_upload_size_is_what_the_client_computation_returns(tff_runtime):
    """The upload accounting equals the bytes of the tensors the client computation really returns."""
    from recfl.core.federated.process import client_input, upload_bytes

    comps = computations.build(SPEC, WORK)
    params = init_params(SPEC, 1)
    client = CLIENTS[1][0]
    dense = collections.OrderedDict((n, params.dense[n]) for n in computations.dense_names(SPEC))
    out = tff_runtime.invoke(comps.client_work, (dense, client_input(client, params, (1, 2))))
    arrays = [*(out["tables"][t][k] for t in ("item", "category") for k in ("ids", "rows")), *out["dense"].values(),
              out["examples"], out["loss"]]
    assert sum(np.asarray(a).nbytes for a in arrays) == upload_bytes(client, SPEC)
    assert len(out["tables"]["item"]["ids"]) == len(client.submodel.rows["item"])  # one row per touched id, not per vocabulary row


def test_sampling_is_seeded_and_respects_availability():
    always = Availability()
    a = sample_clients(3, 100, 10, always, seed=1)
    assert np.array_equal(a, sample_clients(3, 100, 10, always, seed=1)) and len(set(a)) == 10
    assert not np.array_equal(a, sample_clients(4, 100, 10, always, seed=1))
    flaky = Availability("bernoulli", p=0.3)
    rate = np.mean([flaky.online(r, 1000, 0).mean() for r in range(20)])
    assert 0.25 < rate < 0.35
    chosen = sample_clients(5, 1000, 50, flaky, seed=0)
    assert flaky.online(5, 1000, 0)[chosen].all()
    diurnal = Availability("diurnal", p=0.5, amplitude=0.9, hours_per_round=1.0)
    online = np.array([diurnal.online(r, 2000, 0).mean() for r in range(24)])
    assert online.max() - online.min() < 0.2  # phases spread over time zones: the total stays level
    one_zone = np.array([diurnal.online(r, 2000, 0)[:1].item() for r in range(240)])
    assert 0 < one_zone.mean() < 1
    assert sample_clients(0, 5, 10, always, 0).tolist() == [0, 1, 2, 3, 4]


class Killed(Exception):
    """Stands in for a SIGKILL at one exact point of a round."""


def test_a_kill_on_either_side_of_a_checkpoint_loses_and_repeats_no_round(small_data, tmp_path, monkeypatch):
    """Killed just before or just after round 4's checkpoint, with a metrics line cut short on top: --resume gives
    every round's line once and the uninterrupted model (a kill between them once lost round 4's line)."""
    from recfl.app.cli import main
    from recfl.core.federated import simulate as sim

    save = sim._save_checkpoint
    run = lambda out, *extra: main(["simulate", "--data", str(small_data.root), "--out", str(out), *SIM_ARGS, *extra])
    assert run(tmp_path / "full") == 0
    for after in (False, True):
        def dying(path, state, after=after):
            if state.round == 4 and not after:
                raise Killed
            save(path, state)
            if state.round == 4 and after:
                raise Killed

        killed = tmp_path / f"killed-{'after' if after else 'before'}"
        monkeypatch.setattr(sim, "_save_checkpoint", dying)
        with pytest.raises(Killed):
            run(killed)
        monkeypatch.setattr(sim, "_save_checkpoint", save)
        with (killed / "metrics.jsonl").open("a") as handle:
            handle.write('{"round": 5, "train_lo')
        assert run(killed, "--resume") == 0
        assert metrics_rounds(killed) == list(range(1, 7)), after
        for a, b in zip(final_params(tmp_path / "full"), final_params(killed)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "metrics.jsonl").write_text('{"round": 1}\nnot json\n{"round": 3}\n'), "JSONDecodeError"),
    (lambda d: (d / "metrics.jsonl").write_text('{"loss": 1}\n'), "KeyError: 'round'"),
    (lambda d: (d / "metrics.jsonl").write_text('[1]\n'), "TypeError"),
    (lambda d: (d / "metrics.jsonl").write_bytes(b"\xff\xfe\n"), "UnicodeDecodeError"),
    (lambda d: (d / "checkpoint.npz").write_bytes(b"garbage"), "checkpoint.npz cannot be read"),
    (lambda d: np.savez(d / "checkpoint.npz", round=np.int64(2), arr_0=np.zeros(3)), "checkpoint.npz holds weights of shapes"),
    (lambda d: (d / "heat.npz").write_bytes(b""), "heat.npz cannot be read"),
])
def test_a_damaged_run_folder_is_one_line_on_resume(small_data, tmp_path_factory, tmp_path, capsys, damage, message):
    """What --resume reads back (metrics lines, checkpoint, heat counts), damaged by hand or disk: one line, exit 2."""
    import shutil

    from recfl.app.cli import main

    base = tmp_path_factory.getbasetemp() / "three-rounds"
    if not (base / "checkpoint.npz").is_file():
        assert main(["simulate", "--data", str(small_data.root), "--out", str(base), *SIM_ARGS, "--rounds", "3"]) == 0
    run = tmp_path / "run"
    shutil.copytree(base, run)
    damage(run)
    capsys.readouterr()
    assert main(["simulate", "--data", str(small_data.root), "--out", str(run), *SIM_ARGS, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recfl: error: ") and message in err and "start the run again in a new --out" in err, err
    assert err.count("\n") == 1, err


def test_resume_after_sigkill_reaches_the_uninterrupted_result(small_data, tmp_path):
    """A simulation SIGKILLed mid-run takes its local worker down (and its socket's folder), and
    --resume ends with the model of an uninterrupted run."""
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    from recfl.app.cli import main

    full, killed = tmp_path / "full", tmp_path / "killed"
    twelve = [*SIM_ARGS, "--rounds", "12"]
    assert main(["simulate", "--data", str(small_data.root), "--out", str(full), *twelve]) == 0
    cmd = [sys.executable, "-m", "recfl", "simulate", "--data", str(small_data.root), "--out", str(killed), *SIM_ARGS, "--rounds", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_rounds(killed, 3, proc)
    helpers = psutil.Process(proc.pid).children(recursive=True)  # the sandbox and its worker_binary
    (sandbox,) = [p.cmdline() for p in helpers if "recfl.core.federated.sandbox" in p.cmdline()]
    assert "worker_binary" in {p.name() for p in helpers}
    proc.kill()
    proc.wait()
    assert psutil.wait_procs(helpers, timeout=10)[1] == []
    assert not Path(sandbox[sandbox.index("--remove-on-exit") + 1]).exists()  # nothing left behind in /tmp
    done = metrics_rounds(killed)[-1]
    assert 3 <= done < 12
    assert main(["simulate", "--data", str(small_data.root), "--out", str(killed), *twelve, "--resume"]) == 0
    assert metrics_rounds(killed) == list(range(1, 13))
    assert scalars(killed / "tensorboard") == expected_rounds(killed / "metrics.jsonl")  # TensorBoard: each round once
    for a, b in zip(final_params(full), final_params(killed)):
        np.testing.assert_array_equal(a, b)
    assert main(["simulate", "--data", str(small_data.root), "--out", str(killed), *twelve]) == 2  # refuses to overwrite
