"""Distillation methods (implementations). Specs, and so the registry, are in :mod:`hpcdd.specs`."""

from hpcdd.distill.base import Distiller, SyntheticSet

__all__ = ["Distiller", "SyntheticSet"]
