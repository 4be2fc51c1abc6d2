"""Sweeping a suite: options, executors, one cell's run, outputs and the tuning protocol."""
