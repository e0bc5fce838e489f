"""Distillation methods. Importing this package registers every built-in method."""

from hpcdd.distill.base import METHODS, Distiller, SyntheticSet
from hpcdd.distill import coreset, dm  # noqa: F401  (registration side effect)

__all__ = ["METHODS", "Distiller", "SyntheticSet"]
