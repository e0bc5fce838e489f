"""Coreset baselines: real images chosen once (no iterations, no sampler, no parameters)."""

from __future__ import annotations

from hpcdd.specs.base import MethodSpec, register_method


def _coreset(name: str, cls: str, summary: str) -> MethodSpec:
    return MethodSpec(name=name, impl=f"hpcdd.distill.coreset:{cls}", summary=summary,
                      fixed={"iterations": 0}, samplers=False)


register_method(_coreset("random", "RandomCoreset", "random real images per class"))
register_method(_coreset("herding", "HerdingCoreset", "herding on embed() features of a seeded random net"))
register_method(_coreset("kcenter", "KCenterCoreset", "greedy k-center on the same features"))
