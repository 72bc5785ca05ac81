"""Private submodel learning: randomized response, accounting, client values reaching the server only through
secure sums (signature), a private round against a NumPy reference, what the server sees, refused settings."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from recfl.app.cli import main
from recfl.core.errors import RecflError
from recfl.core.federated import computations
from recfl.core.federated.privacy import accounting, fixed_point, secure
from recfl.core.federated.privacy import computations as private
from recfl.core.federated.privacy.process import PrivateProcess
from recfl.core.federated.privacy.randomized_response import estimate_clients, perturb
from recfl.core.federated.privacy.settings import PrivacyConfig
from recfl.core.federated.process import RowCoefficients
from recfl.core.federated.sampling import Availability, poisson_sample_clients, sampling_rate
from recfl.core.models import init_params

from test_federated import CLIENTS, SAMPLED, SPEC, WORK, _reference_local_training

DELTA = 1e-5


def _budget(config: PrivacyConfig, rounds=1, clients=3, per_round=2):
    return accounting.plan(config, rounds, clients, per_round, Availability(), seed=0)


def test_randomized_response_keeps_p_adds_q_and_the_counts_debias():
    rows, clients, p, q = 30, 2000, 0.7, 0.1
    rng = np.random.default_rng(0)
    touched = rng.random((clients, rows)) < np.linspace(0.0, 0.6, rows)
    touched[:, :2] = True  # PAD and OOV are in every submodel
    reports = np.stack([perturb(tf.constant(np.flatnonzero(t), tf.int32), rows, tf.constant([i, 1]), p, q).numpy()
                        for i, t in enumerate(touched)])
    assert not reports[:, :2].any()  # reserved rows are public: never reported
    real, other = touched[:, 2:], ~touched[:, 2:]
    assert reports[:, 2:][real].mean() == pytest.approx(p, abs=0.02)
    assert reports[:, 2:][other].mean() == pytest.approx(q, abs=0.01)
    estimate = estimate_clients(reports.sum(0), clients, p, q)
    truth = touched.sum(0)
    spread = np.sqrt(clients * 0.25) / (p - q)  # the estimator's std is at most this
    assert np.all(np.abs(estimate[2:] - truth[2:]) < 4 * spread) and np.all(estimate[:2] == clients)
    assert np.abs(np.mean(estimate[2:] - truth[2:])) < spread / 2  # unbiased: errors cancel over rows
    again = perturb(tf.constant(np.flatnonzero(touched[5]), tf.int32), rows, tf.constant([5, 1]), p, q).numpy()
    assert np.array_equal(again, reports[5])  # memoized: the same seed reports the same set every round
    assert PrivacyConfig(keep_probability=p, fake_probability=q).rr_epsilon == pytest.approx(math.log(p * (1 - q) / (q * (1 - p))))
    assert PrivacyConfig(keep_probability=1.0, fake_probability=0.1).rr_epsilon == math.inf


def test_epsilon_falls_with_noise_and_calibration_meets_the_target():
    import dp_accounting

    rates = np.full(30, 0.05)
    eps = [accounting.epsilon(sigma, rates, DELTA) for sigma in (0.8, 1.0, 2.0)]
    assert eps[0] > eps[1] > eps[2] > 0
    assert accounting.epsilon(1.0, np.full(60, 0.05), DELTA) > eps[1] < accounting.epsilon(1.0, np.full(30, 0.1), DELTA)
    assert accounting.epsilon(0.0, rates, DELTA) == math.inf and accounting.epsilon(1.0, np.zeros(4), DELTA) == 0.0
    pld = dp_accounting.pld.PLDAccountant().compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.0)), 30))
    assert pld.get_epsilon(DELTA) <= eps[1] < 2 * pld.get_epsilon(DELTA)  # RDP bounds the tighter PLD accounting from above
    assert accounting.calibrate(eps[1], rates, DELTA) == pytest.approx(1.0, abs=1e-3)
    budget = accounting.plan(PrivacyConfig(enabled=True, target_epsilon=3.0), 30, 100, 5, Availability(), seed=0)
    assert 2.99 < budget.epsilon <= 3.0 + 1e-6 and np.all(budget.rates == 0.05) and np.all(budget.expected == 5)
    joined = np.bincount(np.concatenate([poisson_sample_clients(r, 100, 5, Availability(), 0) for r in range(30)]))
    assert budget.most_rounds_joined == joined.max() >= 2
    assert budget.epsilon_known_cohort == accounting.epsilon(budget.noise_multiplier, np.ones(joined.max()), DELTA) > budget.epsilon
    flaky = Availability("bernoulli", p=0.04)
    budget = accounting.plan(PrivacyConfig(enabled=True), 30, 100, 5, flaky, seed=0)
    online = np.array([flaky.online(r, 100, 0).sum() for r in range(30)])
    assert np.allclose(budget.rates, [sampling_rate(n, 5) for n in online]) and np.allclose(budget.expected, np.minimum(online, 5))
    report = budget.report()
    assert {"epsilon", "delta", "clip_norm", "noise_multiplier", "keep_probability", "fake_probability", "rr_epsilon_per_row"} <= set(report)


def test_poisson_sampling_is_seeded_and_has_the_accounted_rate():
    always = Availability()
    rounds = [poisson_sample_clients(r, 1000, 50, always, seed=3) for r in range(200)]
    assert np.array_equal(rounds[7], poisson_sample_clients(7, 1000, 50, always, seed=3))
    sizes = np.array([len(r) for r in rounds])
    assert sizes.mean() == pytest.approx(50, rel=0.05) and sizes.std() > 3  # the size varies: each client joins alone
    joins = np.bincount(np.concatenate(rounds), minlength=1000) / 200
    assert joins.mean() == pytest.approx(0.05, rel=0.05)


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-50.0, 50.0, width=32), min_size=1, max_size=300),
       bound=st.floats(0.5, 40.0))
def test_fixed_point_sums_decode_to_the_clipped_sum_within_the_step(values, bound):
    """What the secure sum adds: each value clipped to its bounds, 32 bits; the decoded sum is off by at most
    half a step per summand (plus float32 rounding of the result)."""
    values = np.asarray(values, np.float32)
    encoded = fixed_point.encode(tf.constant(values), -bound, bound).numpy()
    assert encoded.dtype == np.int64 and encoded.min() >= 0 and encoded.max() <= fixed_point.TOP
    decoded = float(fixed_point.decode(tf.constant(encoded.sum()), -bound, bound, len(values)).numpy())
    want = float(np.clip(values.astype(np.float64), -bound, bound).sum())
    step = 2 * bound / fixed_point.TOP
    assert abs(decoded - want) <= len(values) * step / 2 + 1e-6 * max(1.0, abs(want)), (decoded, want)


def test_client_values_reach_the_server_only_through_secure_sums():
    """The signature: one server-placed result of the union's shape, computed only by secure-sum intrinsics."""
    import tensorflow_federated as tff

    union = private.build_union(SPEC, 0.8, 0.05)
    round_ = private.build_round(SPEC, WORK, (("item", 16), ("category", 8)), 1.0, 11.0)
    assert str(union.type_signature.parameter) == "{int32[?]}@CLIENTS"
    assert str(union.type_signature.result) == "<item=int32[12],category=int32[5]>@SERVER"
    server, clients = round_.type_signature.parameter
    assert server.placement is tff.SERVER and clients.placement is tff.CLIENTS and not clients.all_equal
    result = round_.type_signature.result
    assert result.placement is tff.SERVER
    assert str(result.member["update"]["tables"]) == "<item=float32[16,3],category=float32[8,3]>"  # the union's shape, no ids
    assert [name for name, _ in tff.structure.to_elements(result.member)] == ["update", "examples", "loss"]
    for comp in (union, round_):
        used = secure.client_value_intrinsics(comp)
        assert secure.leaks(comp) == [] and "federated_secure_sum_bitwidth" in used
        assert set(used) <= set(secure.PLACEMENT_PRESERVING + secure.SECURE_SUMS)
    plain = computations.build(SPEC, WORK).round
    assert {"federated_aggregate", "federated_sum"} <= set(secure.leaks(plain))  # the check does see a plain upload
    with pytest.raises(ValueError, match="federated_aggregate"):
        secure.for_simulation(plain)
    lowered = secure.for_simulation(round_)  # what the C++ worker runs: secure sums become checked plain sums
    assert "federated_aggregate" in secure.client_value_intrinsics(lowered)
    assert not set(secure.client_value_intrinsics(lowered)) & set(secure.SECURE_SUMS)


def _clipped_reference(params, clip):
    """Each sampled client's full-model update (rows and dense, never private weights), clipped to ``clip``."""
    out = {}
    for k, i in enumerate(SAMPLED):
        delta = _reference_local_training(params, CLIENTS[i][1], (7, k))
        shared = [d for (group, _, _), d in zip(SPEC.shapes(), delta) if group != "private"]
        norm = np.sqrt(sum(np.sum(np.square(d.astype(np.float64))) for d in shared))
        out[i] = (norm, [d * min(1.0, clip / norm) for d in shared])
    return out


@pytest.mark.parametrize("algorithm", ["fedsubavg", "fedavg"])
def test_private_round_matches_the_numpy_reference(tff_runtime, algorithm):
    """No noise, no randomized response: the private round is the clipped, unweighted FedSubAvg/FedAvg rule."""
    params = init_params(SPEC, 3)
    norms = [norm for norm, _ in _clipped_reference(params, 1.0).values()]
    clip = float(np.mean(norms))  # one client is clipped, the other not
    reference = _clipped_reference(params, clip)
    config = PrivacyConfig(enabled=True, keep_probability=1.0, fake_probability=0.0, clip_norm=clip, noise_multiplier=0.0)
    budget = _budget(config)
    assert budget.expected[0] == 2 and budget.epsilon == math.inf
    probe = PrivateProcess(SPEC, WORK, RowCoefficients.for_algorithm("fedavg", SPEC), tff_runtime, 1.0, budget, seed=0)
    heat = probe.heat([[c for c, _ in CLIENTS[:2]], [CLIENTS[2][0]]])
    assert heat.total == 3 and heat.tables["item"][8] == 1 and heat.tables["item"][2] == 3  # exact client counts at p=1, q=0
    coefficients = RowCoefficients.for_algorithm(algorithm, SPEC, heat)
    process = PrivateProcess(SPEC, WORK, coefficients, tff_runtime, 1.0, budget, seed=0)
    state, metrics = process.next(process.initialize(params), [CLIENTS[i][0] for i in SAMPLED], seed=7)
    shared = [(group, name) for group, name, _ in SPEC.shapes() if group != "private"]
    for k, (group, name) in enumerate(shared):
        step = sum(reference[i][1][k] for i in SAMPLED) / 2  # the expected cohort, not the examples
        if group == "tables":
            step = coefficients.tables[name][:, None] * step
        want = getattr(params, group)[name] + step
        np.testing.assert_allclose(getattr(state.params, group)[name], want, rtol=1e-5, atol=1e-6)
    item = state.params.tables["item"]
    assert np.array_equal(item[9], params.tables["item"][9]) and np.array_equal(item[11], params.tables["item"][11])
    assert not np.allclose(item[8], params.tables["item"][8])
    assert np.array_equal(state.params.private["user"], params.private["user"])
    assert (metrics.clients, metrics.examples) == (2, 8)
    assert metrics.upload_bytes == 2 * private.upload_bytes(SPEC, process.union_rows)


class Recorder:
    """The runtime, keeping every call's computation, argument and what it returned to the server."""

    def __init__(self, runtime):
        self.runtime, self.calls = runtime, []

    def invoke(self, comp, arg=None):
        result = self.runtime.invoke(comp, arg)
        self.calls.append((comp, arg, result))
        return result


def _eager(value):
    return tf.nest.map_structure(tf.constant, value)


def test_the_server_sees_only_noisy_sums_over_a_union_with_fake_rows(tff_runtime):
    """Two values reach the server per round: the union counts and the noisy sum. The sum equals the clients'
    uploads added up; each upload has noise on every row of the union, so not even an upload shows which rows
    its client touched; and the noise on the sum has the accounted standard deviation."""
    clip, sigma = 0.05, 3.0
    config = PrivacyConfig(enabled=True, keep_probability=0.9, fake_probability=0.3, clip_norm=clip, noise_multiplier=sigma)
    recorder = Recorder(tff_runtime)
    process = PrivateProcess(SPEC, WORK, RowCoefficients.for_algorithm("fedavg", SPEC), recorder, 1.0, _budget(config), seed=0)
    clients = [CLIENTS[i][0] for i in SAMPLED]
    process.next(process.initialize(init_params(SPEC, 3)), clients, seed=7)
    (_, _, counts), (_, (server, inputs), result) = recorder.calls
    assert {t: np.asarray(c).shape for t, c in counts.items()} == {t: (rows,) for t, rows in SPEC.rows}  # one count per row, nobody's list
    assert all(np.asarray(c).max() <= len(clients) for c in counts.values())
    union = {t: np.union1d([0, 1], np.flatnonzero(c)) for t, c in counts.items()}
    real = np.union1d(*(c.submodel.rows["item"] for c in clients))
    assert set(union["item"]) - set(real)  # rows no sampled client touched: deniability for the rows that are real
    assert np.array_equal(np.asarray(server["union"]["item"]["ids"])[: len(union["item"])], union["item"])

    uploads = [private.private_update(SPEC, WORK, clip, _eager(server), _eager(x)) for x in inputs]
    silent = {**server, "share_std": np.float32(0.0)}
    clean = [private.private_update(SPEC, WORK, clip, _eager(silent), _eager(x)) for x in inputs]
    bound = clip + 10 * sigma * clip
    summed = tf.nest.map_structure(lambda *u: sum(v.numpy().astype(np.float64) for v in u), *(u["update"] for u in uploads))
    for got, want in zip(tf.nest.flatten(result["update"]), tf.nest.flatten(summed)):
        np.testing.assert_allclose(got, want, atol=1e-6)  # the server gets the uploads' sum (32-bit fixed point), nothing else
    for upload, quiet, x in zip(uploads, clean, inputs):
        touched = np.isin(union["item"], x["item_keys"])
        noisy, bare = (np.asarray(u["update"]["tables"]["item"])[: len(union["item"])] for u in (upload, quiet))
        assert np.all(noisy != 0) and np.all(bare[~touched] == 0)  # the noise share hides which rows carry a delta
    noise = _union_values(result["update"], union) - sum(_union_values(c["update"], union) for c in clean)
    assert np.std(noise) == pytest.approx(sigma * clip, rel=0.2)  # the shares add up to noise_multiplier * clip_norm


def _arrays(value):
    """Every array reachable from ``value`` through dicts, sequences and dataclasses (what the server holds)."""
    if isinstance(value, (np.ndarray, tf.Tensor)):
        yield np.asarray(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _arrays(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _arrays(getattr(value, f.name))


def test_no_client_row_set_or_delta_is_reachable_from_the_server_side_result(tff_runtime):
    """What the server gets from a round is a symmetric, additive function of the clients' uploads (reordering the
    cohort changes nothing; each client alone, added up, gives the same values), and nothing the server holds after
    the round (returned values, new model, metrics, the process's own state) is a client's row ids, its
    randomized-response report, its update or its upload."""
    config = PrivacyConfig(enabled=True, keep_probability=0.9, fake_probability=0.3, clip_norm=0.05, noise_multiplier=3.0)
    recorder = Recorder(tff_runtime)
    process = PrivateProcess(SPEC, WORK, RowCoefficients.for_algorithm("fedavg", SPEC), recorder, 1.0, _budget(config), seed=0)
    clients = [CLIENTS[i][0] for i in SAMPLED]
    state, metrics = process.next(process.initialize(init_params(SPEC, 3)), clients, seed=7)
    (union_comp, reports_in, counts), (round_comp, (server, inputs), result) = recorder.calls

    def run(comp, arg):
        return tf.nest.map_structure(np.asarray, tff_runtime.invoke(comp, arg))

    for got, want in zip(tf.nest.flatten(run(union_comp, reports_in[::-1])), tf.nest.flatten(counts)):
        np.testing.assert_array_equal(got, want)
    alone = [run(union_comp, [x]) for x in reports_in]
    for got, *parts in zip(tf.nest.flatten(counts), *(tf.nest.flatten(a) for a in alone)):
        np.testing.assert_array_equal(got, sum(parts))
    for got, want in zip(tf.nest.flatten(run(round_comp, (server, inputs[::-1]))), tf.nest.flatten(result)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    alone = [run(round_comp, (server, [x])) for x in inputs]
    for got, *parts in zip(tf.nest.flatten(result), *(tf.nest.flatten(a) for a in alone)):
        np.testing.assert_allclose(got, sum(np.float64(p) for p in parts), atol=1e-5)

    secrets = []  # per client: its row ids, its report, its clean update and its noisy upload
    silent = {**server, "share_std": np.float32(0.0)}
    for x, rr in zip(inputs, reports_in):
        seeds = tf.random.experimental.stateless_split(tf.constant(rr[:2]), len(SPEC.rows))
        secrets.append(rr)
        for k, (t, rows) in enumerate(SPEC.rows):
            keys = np.asarray(x[f"{t}_keys"])
            secrets += [keys, np.unique(keys), np.setdiff1d(keys, [0, 1]),
                        perturb(tf.constant(keys), rows, seeds[k], 0.9, 0.3).numpy()]
        for s in (silent, server):
            update = private.private_update(SPEC, WORK, config.clip_norm, _eager(s), _eager(x))["update"]
            secrets += [a for a in _arrays(update) if np.any(a != 0)]
    held = list(_arrays([counts, result, state, metrics, vars(process)]))
    assert len(held) > 10 and sum(a.size for a in held) > 200  # the walk does reach the server's values
    for secret in secrets:
        for value in held:
            same = value.shape == secret.shape and np.allclose(value.astype(np.float64), secret.astype(np.float64), atol=1e-6)
            assert not same, (secret, value)


def _union_values(update, union):
    """An update's values on the union's rows (not the padding) and the dense weights, flat."""
    return np.concatenate([*(np.asarray(update["tables"][t])[: len(ids)].ravel() for t, ids in union.items()),
                           *(np.asarray(v).ravel() for v in update["dense"].values())])


@pytest.fixture(scope="module")
def private_data(tmp_path_factory):
    """40 synthetic users: a population small enough for a few private rounds."""
    from recfl.core.dataset import prepare
    from recfl.core.formats import SyntheticSpec, load

    spec = SyntheticSpec(users=40, items=150, categories=8, clusters=4, events_per_user=20, seed=5)
    return prepare(load("synthetic", None, spec), tmp_path_factory.mktemp("private") / "data")


SIM = ["--rounds", "4", "--clients-per-round", "8", "--eval-every", "2", "--seed", "4", "--set", "model.embed_dim=4",
       "--set", "model.hidden=[8]", "--set", "privacy.enabled=true", "--set", "privacy.clip_norm=0.1",
       "--set", "privacy.noise_multiplier=0.5"]


def test_private_simulation_reports_its_budget_and_resumes_to_the_same_model(private_data, tmp_path, capsys):
    from recfl.core.models import load_model

    assert main(["simulate", "--data", str(private_data.root), "--out", str(tmp_path / "full"), *SIM]) == 0
    summary = json.loads(capsys.readouterr().out)
    budget = summary["privacy"]
    assert budget["noise_multiplier"] == 0.5 and budget["clip_norm"] == 0.1 and budget["delta"] == DELTA
    assert budget["epsilon"] == pytest.approx(accounting.epsilon(0.5, np.full(4, 8 / 40), DELTA), rel=1e-3)
    assert budget["rr_epsilon_per_row"] == pytest.approx(PrivacyConfig().rr_epsilon, rel=1e-3)
    run = json.loads((tmp_path / "full" / "run.json").read_text())
    assert run["privacy"]["enabled"] is True
    assert main(["simulate", "--data", str(private_data.root), "--out", str(tmp_path / "part"), *SIM, "--rounds", "2"]) == 0
    assert main(["simulate", "--data", str(private_data.root), "--out", str(tmp_path / "part"), *SIM, "--resume"]) == 0
    for a, b in zip(*(load_model(tmp_path / d / "model")[1].arrays() for d in ("full", "part"))):
        np.testing.assert_array_equal(a, b)  # the clients' secrets are seeded: a resumed run draws the same noise
    capsys.readouterr()
    assert main(["simulate", "--data", str(private_data.root), "--out", str(tmp_path / "part"), *SIM, "--resume",
                 "--set", "privacy.noise_multiplier=1.0"]) == 2  # another budget is another run


@pytest.mark.parametrize("overrides,message", [
    (["privacy.keep_probability=0.1", "privacy.fake_probability=0.2"],
     "privacy.keep_probability = 0.1 must be greater than privacy.fake_probability = 0.2"),
    (["privacy.clip_norm=0"], "privacy.clip_norm = 0.0 must be > 0"),
    (["privacy.clip_norm=-1"], "privacy.clip_norm = -1.0 must be > 0"),
    (["privacy.delta=1"], "privacy.delta = 1.0 must be in (0, 1)"),
    (["privacy.target_epsilon=1e-6"], "privacy.target_epsilon = 1e-06 cannot be met at delta = 1e-05"),
    (["federated.distributor=select"], "privacy.enabled needs federated.distributor = 'host'"),
])
def test_impossible_privacy_settings_are_one_line_errors(private_data, tmp_path, capsys, overrides, message):
    args = ["simulate", "--data", str(private_data.root), "--out", str(tmp_path / "run"), "--set", "privacy.enabled=true"]
    assert main([*args, *(x for o in overrides for x in ("--set", o))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recfl: error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
    with pytest.raises(RecflError):
        PrivacyConfig(keep_probability=0.5, fake_probability=0.5)
