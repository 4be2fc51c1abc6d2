"""The base of every resolved spec: a registered spec with its parameters fixed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from specs.grammar import format_spec


class NamedSpec(Protocol):
    """A registered spec (a norm's or a backbone's): all a resolved spec reads of it is its name."""

    @property
    def name(self) -> str: ...


S = TypeVar("S", bound=NamedSpec)


@dataclass(frozen=True)
class ResolvedSpec(Generic[S]):
    """A registered spec with its parameters fixed; ``str()`` is the canonical spec string.

    Attributes:
        spec: The registered spec.
        params: Every parameter with its value.
        explicit: The parameters the canonical string prints (off their default, or always shown).
    """

    spec: S
    params: Mapping[str, Any]
    explicit: Mapping[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    def __str__(self) -> str:
        return format_spec(self.spec.name, self.explicit)
