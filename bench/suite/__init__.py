"""Suites from YAML and ``--set``: read, coerced, expanded into a grid and checked cell by cell."""

from bench.suite.loader import load_cell, load_suite, reload_with_overrides

__all__ = ["load_cell", "load_suite", "reload_with_overrides"]
