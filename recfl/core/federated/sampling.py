"""Which clients take part in a round: availability (devices come and go), uniform or Poisson sampling.

All randomness is derived from ``(seed, round)``, so a resumed simulation
samples exactly the clients the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recfl.core.errors import RecflError

KINDS = ("always", "bernoulli", "diurnal")


@dataclass(frozen=True)
class Availability:
    """``always`` online; ``bernoulli``: online with probability ``p`` each round;
    ``diurnal``: probability ``p * (1 + amplitude * sin(2 pi (hour + phase) / 24))``,
    each client with its own phase (time zone), ``hours_per_round`` hours per round."""

    kind: str = "always"
    p: float = 1.0
    amplitude: float = 0.5
    hours_per_round: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise RecflError(f"availability {self.kind!r} unknown; choose one of {', '.join(KINDS)}")
        if not 0.0 < self.p <= 1.0:
            raise RecflError(f"availability probability must be in (0, 1], got {self.p}")

    def online(self, round_index: int, clients: int, seed: int) -> np.ndarray:
        """Boolean mask of the clients online in this round."""
        if self.kind == "always":
            return np.ones(clients, dtype=bool)
        draw = np.random.default_rng([seed, round_index, 1]).random(clients)
        if self.kind == "bernoulli":
            return draw < self.p
        phase = np.random.default_rng([seed, 7]).random(clients) * 24.0
        hour = round_index * self.hours_per_round
        p = np.clip(self.p * (1 + self.amplitude * np.sin(2 * np.pi * (hour + phase) / 24.0)), 0.0, 1.0)
        return draw < p


def sample_clients(round_index: int, clients: int, per_round: int, availability: Availability, seed: int) -> np.ndarray:
    """Sorted indices of up to ``per_round`` clients drawn uniformly from those online."""
    online = np.flatnonzero(availability.online(round_index, clients, seed))
    rng = np.random.default_rng([seed, round_index, 3])
    return np.sort(rng.choice(online, size=min(per_round, len(online)), replace=False))


def sampling_rate(online: int, per_round: int) -> float:
    """The chance that an online client joins a Poisson-sampled round: ``per_round`` expected of ``online``."""
    return min(1.0, per_round / online) if online else 0.0


def poisson_sample_clients(round_index: int, clients: int, per_round: int, availability: Availability, seed: int) -> np.ndarray:
    """Sorted indices of the online clients that join, each independently with :func:`sampling_rate`
    (the sampling differential-privacy accounting assumes; the round's size varies around ``per_round``)."""
    online = np.flatnonzero(availability.online(round_index, clients, seed))
    draw = np.random.default_rng([seed, round_index, 5]).random(len(online))
    return online[draw < sampling_rate(len(online), per_round)]
