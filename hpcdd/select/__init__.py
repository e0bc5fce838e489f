"""Selecting real samples: matching samplers (random, DREAM), k-means, coreset selection."""

from hpcdd.select.samplers import RandomSampler, Sampler, build_sampler

__all__ = ["Sampler", "RandomSampler", "build_sampler"]
