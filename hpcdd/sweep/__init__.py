"""Sweeps: grid files expanded into run dirs, launched as submitit job arrays, with status/retry.

``grid`` expands a grid file (pure), ``launch`` plans and submits, ``job`` is the pickled callable
and its preemption contract, ``state`` reads where each run stands, ``scheduler`` holds the few
batched Slurm client calls, ``commands`` the CLI.
"""
