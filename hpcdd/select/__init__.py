"""Selecting real samples: matching samplers (random, DREAM), k-means, coreset selection."""

from hpcdd.select.samplers import RandomSampler, Sampler

__all__ = ["Sampler", "RandomSampler"]
