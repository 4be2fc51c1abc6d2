"""The suite schema, its cells and their identity, and what records publish of them."""

from bench.config.cells import STAGES, Cell, Suite, TuneConfig, cell_to_dict, suite_to_dict
from bench.config.identity import checkpoint_hash, config_hash, run_key, sha256_json, sha256_text
from bench.config.primary import primary_allowed, primary_mismatch, same_grid_value
from bench.config.public import public_path
from bench.config.sections import (
    DEFAULT_NORM,
    GRAD_DROP_METHODS,
    GRID_REQUIRED,
    GRID_SECTIONS,
    PRUNE_METHODS,
    SECTIONS,
    TOP_LEVEL_KEYS,
    DataConfig,
    GradDropConfig,
    PrivacyConfig,
    Problem,
    PruneConfig,
    ReportConfig,
    TrainingConfig,
    alpha_problem,
    primary_pairs,
)

__all__ = [
    "DEFAULT_NORM",
    "GRAD_DROP_METHODS",
    "GRID_REQUIRED",
    "GRID_SECTIONS",
    "PRUNE_METHODS",
    "SECTIONS",
    "STAGES",
    "TOP_LEVEL_KEYS",
    "Cell",
    "DataConfig",
    "GradDropConfig",
    "PrivacyConfig",
    "Problem",
    "PruneConfig",
    "ReportConfig",
    "Suite",
    "TrainingConfig",
    "TuneConfig",
    "alpha_problem",
    "cell_to_dict",
    "checkpoint_hash",
    "config_hash",
    "primary_allowed",
    "primary_mismatch",
    "primary_pairs",
    "public_path",
    "run_key",
    "same_grid_value",
    "sha256_json",
    "sha256_text",
    "suite_to_dict",
]
