"""The cloud side of CoDA: the pool of shared samples, profiles and coarse matching."""
