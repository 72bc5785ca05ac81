"""Private submodel learning: the server learns sums over a union of randomized row sets, with DP noise.

Without ``[privacy]`` a FedSubAvg client uploads its row ids (the items and
categories its user touched) and its per-row deltas in the clear. With it:

- ``randomized_response``: each client reports a perturbed row set (each
  real row kept with probability p, each other row added with probability
  q), memoized per client, so every row has plausible deniability
  (``eps_RR = ln(p(1-q) / (q(1-p)))``) for the whole run;
- ``computations``: the union of the reported sets is a secure sum of
  indicator vectors (the server learns per-row counts, never a client's
  set); every client downloads the rows of the union, trains on its own
  rows among them, clips its whole update (rows and dense layers) to an L2
  norm, adds its share of Gaussian noise and uploads values for every row
  of the union through a secure sum with fixed-point encoding;
- ``secure``: how the secure sums run in simulation and the check that
  client values reach the server only through them;
- ``accounting``: (epsilon, delta) of a run from ``dp-accounting``;
- ``process``: the round driver (:class:`PrivateProcess`) and the heat
  counts FedSubAvg derives from the debiased union counts.
"""
