"""The (epsilon, delta) of a private run, from ``dp-accounting``'s RDP accountant.

Round r is a Poisson-subsampled Gaussian mechanism: every online client
joins with probability ``q_r`` (:func:`recfl.core.federated.sampling.sampling_rate`),
each update is clipped to L2 norm C, and the sum carries Gaussian noise of
std ``noise_multiplier * C`` per coordinate; neighbouring data sets differ by
one client's whole data (add or remove). The run is the composition of its
rounds. Availability depends on the seed only, never on data, so each round's
rate is known before the run starts.

That epsilon holds for whoever sees the models but not who joined which round
(sampling amplifies privacy only when the sample is secret). The server knows
its cohorts, so against it a client's data is worth the Gaussian mechanism
composed over the rounds it joined: :attr:`Budget.epsilon_known_cohort`, for
the client that joins most often (the schedule is seeded, so it is known too).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant

from recfl.core.errors import RecflError
from recfl.core.federated.privacy.settings import PrivacyConfig
from recfl.core.federated.sampling import Availability, poisson_sample_clients, sampling_rate

MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER = 1e-3, 1000.0  # the search interval of a calibration


def _event(noise_multiplier: float, rates: np.ndarray):
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(float(rate), gaussian), count)
        for rate, count in sorted(Counter(float(r) for r in rates if r > 0).items())])


def epsilon(noise_multiplier: float, rates, delta: float) -> float:
    """Epsilon at ``delta`` of rounds with sampling ``rates`` (infinite without noise, 0 without rounds)."""
    if not np.any(np.asarray(rates) > 0):
        return 0.0
    if noise_multiplier == 0:
        return float("inf")
    return float(RdpAccountant().compose(_event(noise_multiplier, rates)).get_epsilon(delta))


def calibrate(target_epsilon: float, rates: np.ndarray, delta: float) -> float:
    """The smallest noise multiplier whose run spends at most ``target_epsilon`` at ``delta``."""
    if epsilon(MAX_NOISE_MULTIPLIER, rates, delta) > target_epsilon:
        raise RecflError(f"privacy.target_epsilon = {target_epsilon} cannot be met at delta = {delta} over "
                         f"{int(np.count_nonzero(rates))} rounds at sampling rate {float(np.max(rates)):.3g}: it needs a noise "
                         f"multiplier above {MAX_NOISE_MULTIPLIER:g}; allow a larger epsilon or delta, or run fewer rounds")
    if epsilon(MIN_NOISE_MULTIPLIER, rates, delta) <= target_epsilon:  # the target allows (next to) no noise
        return MIN_NOISE_MULTIPLIER
    return float(dp_accounting.calibrate_dp_mechanism(
        RdpAccountant, lambda sigma: _event(sigma, rates), target_epsilon, delta,
        dp_accounting.ExplicitBracketInterval(MIN_NOISE_MULTIPLIER, MAX_NOISE_MULTIPLIER), tol=1e-4))


@dataclass(frozen=True)
class Budget:
    """A private run's plan: its settings, the noise multiplier it uses, each round's sampling rate and
    expected cohort (the fixed denominator of the average), the epsilon the whole run spends, and the
    epsilon against an observer who knows the cohorts (the most rounds any client joins, unamplified)."""

    config: PrivacyConfig
    noise_multiplier: float
    rates: np.ndarray
    expected: np.ndarray
    epsilon: float
    epsilon_known_cohort: float
    most_rounds_joined: int

    def report(self) -> dict:
        """What the run summary states."""
        c = self.config
        return {"epsilon": _number(self.epsilon), "epsilon_known_cohort": _number(self.epsilon_known_cohort),
                "most_rounds_joined": self.most_rounds_joined, "delta": c.delta, "noise_multiplier": round(self.noise_multiplier, 4),
                "clip_norm": c.clip_norm, "keep_probability": c.keep_probability, "fake_probability": c.fake_probability,
                "rr_epsilon_per_row": _number(c.rr_epsilon), "rounds": int(np.count_nonzero(self.rates)),
                "sampling_rate": round(float(np.max(self.rates, initial=0.0)), 6),
                "accountant": "RDP (dp-accounting), Poisson-sampled Gaussian, add/remove one client"}


def _number(x: float) -> float | str:
    """A figure for JSON: rounded, or "inf"."""
    return round(float(x), 4) if np.isfinite(x) else "inf"


def plan(privacy: PrivacyConfig, rounds: int, clients: int, per_round: int, availability: Availability, seed: int) -> Budget:
    """The budget of ``rounds`` rounds over ``clients`` clients: a calibrated noise multiplier when
    ``privacy.target_epsilon`` is set, else ``privacy.noise_multiplier``, and the epsilon it spends."""
    online = np.array([np.count_nonzero(availability.online(r, clients, seed)) for r in range(rounds)])
    rates = np.array([sampling_rate(n, per_round) for n in online])
    sigma = calibrate(privacy.target_epsilon, rates, privacy.delta) if privacy.target_epsilon > 0 else privacy.noise_multiplier
    joined = np.zeros(clients, np.int64)
    for r in range(rounds):
        joined[poisson_sample_clients(r, clients, per_round, availability, seed)] += 1
    most = int(joined.max(initial=0))
    return Budget(privacy, sigma, rates, rates * online, epsilon(sigma, rates, privacy.delta),
                  epsilon(sigma, np.ones(most), privacy.delta), most)
