"""Errors raised by the norms registry (kept free of `bench` so `norms` stands alone)."""

from __future__ import annotations

from collections.abc import Iterable

from specs import closest


class NormError(ValueError):
    """A norm name, spec string or parameter that the registry cannot honour."""


class UnknownNormError(NormError, KeyError):
    """Raised when a name is not in the registry; the message lists the registered names."""

    def __init__(self, name: str, registered: Iterable[str]):
        registered = sorted(registered)
        hint = closest(name, registered)
        msg = f"unknown norm {name!r}; registered norms: {', '.join(registered)}"
        if hint:
            msg += f" (did you mean {hint!r}?)"
        super().__init__(msg)
        self.name = name
        self.suggestion = hint

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class NormSpecError(NormError):
    """Raised when a spec string is malformed or names a parameter the norm does not take."""


class NormPluginError(NormError):
    """Raised when a package's ``dp_norm_bench.norms`` entry point fails to import."""


class DuplicateNormError(NormError):
    """Raised when a second norm is registered under a name already taken."""
