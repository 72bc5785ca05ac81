"""Randomized response on a client's row set, and the per-row client counts the server estimates from it.

For every non-reserved row m of a table a client reports one bit: 1 with
probability p when it touches m, with probability q otherwise (Warner's
randomized response, per row). The reserved rows (PAD, OOV) are in every
submodel, so they are public and never reported. A client draws its bits
once, from a seed of its own, and reports the same set every round
(memoized, as in RAPPOR), so repeated rounds do not wear its deniability
down: the same draw decides a row in every round, so a report changes only
where the client's own rows change (e.g. a round's sampled negatives).
"""

from __future__ import annotations

import numpy as np

from recfl.core.vocab import RESERVED


def perturb(keys, rows: int, seed, keep: float, fake: float):
    """TF: the reported set of a client touching rows ``keys``, as an int32 indicator vector over ``rows`` rows."""
    import tensorflow as tf

    real = tf.scatter_nd(keys[:, None], tf.ones_like(keys), [rows]) > 0
    draw = tf.random.stateless_uniform([rows], seed=seed)
    reported = tf.where(real, draw < keep, draw < fake) & (tf.range(rows) >= RESERVED)
    return tf.cast(reported, tf.int32)


def estimate_clients(counts: np.ndarray, clients: int, keep: float, fake: float) -> np.ndarray:
    """Unbiased estimate of how many clients touch each row, from how many reported it (reserved rows: all).

    ``E[count] = p n + q (N - n)``, so ``n = (count - q N) / (p - q)``. An
    estimate below the noise of a row nobody touches (``sqrt(N q (1 - q)) / (p - q)``,
    at least 1) is raised to it, so FedSubAvg's coefficient ``N / n`` stays bounded.
    """
    floor = max(1.0, np.sqrt(clients * fake * (1 - fake)) / (keep - fake))
    estimate = np.clip((np.asarray(counts, np.float64) - fake * clients) / (keep - fake), floor, clients)
    estimate[:RESERVED] = clients
    return estimate
