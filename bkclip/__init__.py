"""The book-keeping clipper: per-example clipping in one backward pass, and the DP-SGD step.

A library below `norms` (it imports torch, Opacus and timm, never `norms` or `bench`): the rule
protocol and its registry by exact layer class (`bkclip.rule`), the shared maths
(`bkclip.maths`), the rules of torch's and timm's layers (`bkclip.rules`), the coverage check
(`bkclip.coverage`), the clipper (`bkclip.clipper`) and the plain and DP steps
(`bkclip.steps`).
"""

from bkclip.clipper import BookKeepingClipper, layer_norms
from bkclip.coverage import check_coverage, rule_for, trainable_layers, trainable_parameters
from bkclip.errors import ClipError, ClipRuleError, CoverageError, LayerCallError
from bkclip.masks import CoordinateMasks
from bkclip.maths import (
    bias_norm_sq,
    bias_sum,
    conv_per_example,
    ghost_windows_norm_sq,
    per_example,
    row_norm_sq,
    unfold,
    use_ghost,
    weighted_sum,
)
from bkclip.rule import (
    KEEP,
    STRATEGIES,
    ClipRule,
    LayerState,
    clip_rule,
    register_clip_fallback,
    register_clip_rule,
)
from bkclip.rules import AffineRule, MaterialisableRule
from bkclip.steps import MODES, DPSGDStep, SGDStep, autocast, make_optimizer

__all__ = [
    "KEEP",
    "MODES",
    "STRATEGIES",
    "AffineRule",
    "BookKeepingClipper",
    "ClipError",
    "ClipRule",
    "ClipRuleError",
    "CoordinateMasks",
    "CoverageError",
    "DPSGDStep",
    "LayerCallError",
    "LayerState",
    "MaterialisableRule",
    "SGDStep",
    "autocast",
    "bias_norm_sq",
    "bias_sum",
    "check_coverage",
    "clip_rule",
    "conv_per_example",
    "ghost_windows_norm_sq",
    "layer_norms",
    "make_optimizer",
    "per_example",
    "register_clip_fallback",
    "register_clip_rule",
    "row_norm_sq",
    "rule_for",
    "trainable_layers",
    "trainable_parameters",
    "unfold",
    "use_ghost",
    "weighted_sum",
]
