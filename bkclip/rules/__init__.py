"""The rules of torch's and timm's layers, one module per layer family, registered on import."""

from bkclip.rules.conv import ConvRule, MaterialisableRule, WSConvRule
from bkclip.rules.fallback import FALLBACK, FallbackRule
from bkclip.rules.linear import LinearRule
from bkclip.rules.masked import MaskedRule
from bkclip.rules.norm import AffineRule, GroupNormRule, LayerNormRule

__all__ = [
    "FALLBACK",
    "AffineRule",
    "ConvRule",
    "FallbackRule",
    "GroupNormRule",
    "LayerNormRule",
    "LinearRule",
    "MaskedRule",
    "MaterialisableRule",
    "WSConvRule",
]
