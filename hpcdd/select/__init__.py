"""Selecting real samples: matching samplers (random; DREAM later) and coreset selection."""

from hpcdd.select.samplers import SAMPLERS, RandomSampler, Sampler

__all__ = ["SAMPLERS", "Sampler", "RandomSampler"]
