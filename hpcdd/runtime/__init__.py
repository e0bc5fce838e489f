"""Run-time machinery: checkpoints, devices, preemption."""
