"""The public home of the clipping-rule API that the README's "Adding a norm" example imports.

The book-keeping clipper is the library `bkclip`; a norm in another package writes
``from norms.clipping import ClipRule, per_example, register_clip_rule`` (and
`register_clip_fallback` to opt a layer class into the materialising fallback), as the README
shows. These are `bkclip`'s own objects, re-exported unchanged.
"""

from bkclip import ClipRule, per_example, register_clip_fallback, register_clip_rule

__all__ = ["ClipRule", "per_example", "register_clip_fallback", "register_clip_rule"]
