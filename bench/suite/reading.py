"""Reading a suite: the YAML file, ``--set`` overrides, and where an error points."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.config import TOP_LEVEL_KEYS
from bench.errors import ConfigError


@dataclass
class Context:
    """Where errors come from: the file, and the key paths set from the command line."""

    file: str
    from_set: set[str] = field(default_factory=set)

    def error(
        self,
        key: str | None,
        message: str,
        *,
        given: object = None,
        allowed: str | None = None,
        choices: Sequence[str] | None = None,
    ) -> ConfigError:
        if key is not None and any(
            key == p or key.startswith((p + ".", p + "[")) for p in self.from_set
        ):
            key += " (from --set)"
        return ConfigError(
            message, file=self.file, key=key, given=given, allowed=allowed, choices=choices
        )


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(
            "no such suite file",
            file=str(path),
            given=path.name,
            allowed=", ".join(near) or None,
            choices=near,
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"YAML syntax error{where}: {problem}", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the suite file: {err}", file=str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            "the top level of a suite must be a mapping",
            file=str(path),
            given=type(raw).__name__,
            allowed="keys " + ", ".join(TOP_LEVEL_KEYS),
        )
    return copy.deepcopy(raw)


#: A spec with parameters (``group_norm[num_groups=8]``): inside a YAML list its brackets
#: read as a nested list unless the spec is quoted.
_BRACKETED_SPEC = re.compile(r"(?<!['\"\w])([A-Za-z_]\w*\[[^\[\]]*\])")


def _quoting_hint(key: str, text: str) -> str | None:
    """The override with each bracketed spec quoted, when that is what makes it parse."""
    quoted = _BRACKETED_SPEC.sub(r"'\1'", text)
    if quoted == text:
        return None
    try:
        yaml.safe_load(quoted)
    except yaml.YAMLError:
        return None
    return (
        "quote each bracketed spec inside a list, and the whole override for the shell: "
        f'--set "{key}={quoted}"'
    )


def apply_override(raw: dict[str, Any], item: str, ctx: Context) -> None:
    """Set ``key.path=value`` in the raw mapping; a grid key keeps its dots (``training.lr``)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            "an override must look like key.path=value",
            file=ctx.file,
            key="--set",
            given=item,
            allowed="e.g. training.steps=100 or grid.seed=[0,1]",
        )
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ctx.error(
            key,
            f"cannot parse the value as YAML: {getattr(err, 'problem', err)}",
            given=text,
            allowed=_quoting_hint(key, text),
        ) from None
    parts = key.split(".")
    if parts[0] == "grid" and len(parts) > 2:
        parts = ["grid", ".".join(parts[1:])]
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ctx.error(
                ".".join(parts[: depth + 1]),
                "is not a section, so it has no keys to set",
                given=item,
            )
        node = child
    node[parts[-1]] = value
    ctx.from_set.add(".".join(parts))
