"""hpcdd: dataset distillation as an HPC job suite."""

__version__ = "0.1.0"
