"""The offline A/B harness: predictions files of several arms in, lifts with bootstrap intervals and a report out.

predictions (read and guard the files) -> bucketing (bucketed design: salted user
hash, SRM) -> metrics (per-user parts, resampled AUC) -> stats (bootstrap over
users, lifts, p-values, corrections) -> evaluate (the stage API) -> report/plots;
segments adds the cold/warm/hot breakdown and cli the ``recfl ab evaluate`` command.
"""
