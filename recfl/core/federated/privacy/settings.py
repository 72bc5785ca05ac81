"""The ``[privacy]`` config section: randomized response, clipping, noise, the privacy target."""

from __future__ import annotations

import math
from dataclasses import dataclass

from recfl.core.config import check_limits
from recfl.core.errors import RecflError


@dataclass(frozen=True)
class PrivacyConfig:
    """Settings of private submodel learning (``enabled = false``: the plain rounds, unchanged)."""

    enabled: bool = False
    keep_probability: float = 0.8  # p: a row the client touches stays in its reported set
    fake_probability: float = 0.05  # q: a row it does not touch joins the reported set
    clip_norm: float = 0.05  # L2 bound of a client's whole update (all rows and dense layers); about the median norm
    # of one client's unweighted update for the built-in models at client_lr 0.1 on MovieLens 100K (README, "Privacy")
    noise_multiplier: float = 1.0  # std of the noise on each summed coordinate, in units of clip_norm
    target_epsilon: float = 0.0  # > 0: the noise multiplier that makes the run spend exactly this epsilon
    delta: float = 1e-5

    def __post_init__(self):
        check_limits(self, "privacy", keep_probability="(0, 1]", fake_probability="[0, 1)", clip_norm="> 0",
                     noise_multiplier=">= 0", target_epsilon=">= 0", delta="(0, 1)")
        if self.keep_probability <= self.fake_probability:
            raise RecflError(f"config: privacy.keep_probability = {self.keep_probability} must be greater than "
                             f"privacy.fake_probability = {self.fake_probability}: otherwise a reported row says "
                             "nothing about the rows a client touched")

    @property
    def rr_epsilon(self) -> float:
        """Randomized response's local epsilon per row: ``ln(p (1 - q) / (q (1 - p)))`` (infinite for p = 1 or q = 0)."""
        p, q = self.keep_probability, self.fake_probability
        return math.inf if p == 1.0 or q == 0.0 else math.log(p * (1 - q) / (q * (1 - p)))
