"""Samplers: how a matching method draws its real images each step."""

from __future__ import annotations

from hpcdd.specs.base import SamplerSpec, register_sampler

register_sampler(SamplerSpec(
    name="random", impl="hpcdd.select.samplers:RandomSampler",
    summary="uniform sampling without replacement inside the class (DC, DSA, DM)",
))
