"""The book-keeping clipper's exceptions: one base class, a subclass per kind of refusal."""

from __future__ import annotations


class ClipError(ValueError):
    """Base of every error the clipper raises for a model, a layer or a rule it cannot clip
    exactly; a command-line tool reports it as one line."""


class ClipRuleError(ClipError):
    """Raised when a trainable layer has no book-keeping rule (or its rule refuses the layer's
    configuration) and no fallback was registered for its class, when a class gets a second
    rule, or when a rule misbehaves (a parameter without a clipped sum, a ``channel_dim`` that
    does not match the layer's parameters); names the class."""


class CoverageError(ClipRuleError):
    """Raised when the clipper is built for a model whose trainable parameters it would not clip
    exactly once: a parameter shared by two layers, or a layer with trainable parameters of its
    own and children with trainable parameters; names the parameter or layer."""


class LayerCallError(ClipRuleError):
    """Raised during a forward pass when a layer is called in a way its rule cannot see through:
    tensor keyword arguments, or several tensor inputs where the per-example gradients come from
    Opacus' functorch path (which differentiates the first input only); names the layer."""
