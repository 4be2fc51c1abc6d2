"""What a report is built from: its files, the resolved suite, the significance level and the
baseline (a ``--baseline`` spec matched against the norms of the records, without torch)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.config import DEFAULT_NORM, alpha_problem
from bench.errors import ConfigError, RecordsError
from bench.results.record import Record
from specs import SpecError, closest, coerce_value, format_spec, parse_spec

RECORDS_FILE = "records.jsonl"
SUITE_FILE = "suite.json"
LEADERBOARD_FILE = "leaderboard.md"
DEFAULT_ALPHA = 0.05


def load_suite(path: Path) -> dict:
    """The resolved suite the runner wrote, or an empty dict when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise RecordsError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        suite = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordsError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(suite, dict):
        raise RecordsError(f"{path}: expected a JSON object, got {type(suite).__name__}")
    return suite


def suite_section(suite: Mapping, name: str) -> Mapping:
    """A dict-valued section of the suite, or an empty one."""
    value = suite.get(name)
    return value if isinstance(value, Mapping) else {}


def resolve_alpha(alpha: float | None, suite: Mapping) -> float:
    """The argument, else the suite's ``report.alpha``, else the default; validated."""
    source = "alpha"
    if alpha is None:
        alpha = suite_section(suite, "report").get("alpha")
        source = "report.alpha"
    if alpha is None:
        return DEFAULT_ALPHA
    problem = alpha_problem(alpha)
    if problem is not None:
        raise ConfigError(
            f"invalid significance level: {problem}",
            key=source,
            given=alpha,
            allowed="0 < alpha < 0.5",
        )
    return float(alpha)


def resolve_baseline(given: str | None, suite: Mapping, records: Sequence[Record]) -> str:
    """The argument matched to a norm of the records, else the suite's ``report.baseline``
    (canonical already: the runner wrote it), else the default norm."""
    if not given:
        return str(suite_section(suite, "report").get("baseline") or DEFAULT_NORM)
    return canonical_baseline(given, records)


def canonical_baseline(given: str, records: Sequence[Record]) -> str:
    """The records' spec string of the norm that ``given`` names.

    A record carries its norm's canonical spec (defaults left out) and every resolved
    parameter (``norm_params``), so a default spelled out (``group_norm[num_groups=16]``) is
    matched without the registry, which would import torch.

    Raises:
        ConfigError: When ``given`` is malformed, or names no norm of the records, or several;
            the message lists the norms present and the closest.
    """
    present = sorted({r["norm"] for r in records if isinstance(r.get("norm"), str)})
    name, params = parse_spec(given, "norm", ConfigError)
    if format_spec(name, params) in present:
        return format_spec(name, params)
    resolved: dict[str, Mapping] = {}
    for record in records:
        if isinstance(record.get("norm_params"), Mapping):
            resolved.setdefault(record["norm"], record["norm_params"])
    found = [norm for norm in present if _named_by(norm, name, params, resolved.get(norm))]
    if len(found) == 1:
        return found[0]
    allowed = ", ".join(found or present) or "none (no record names a norm)"
    hint = None if found else _closest_norm(name, present)
    raise ConfigError(
        "the baseline matches " + ("no norm" if not found else "several norms") + " of the records",
        key="--baseline",
        given=given,
        allowed=allowed + (f" (did you mean {hint!r}?)" if hint else ""),
    )


def _closest_norm(name: str, present: Sequence[str]) -> str | None:
    """The recorded norm whose name is closest to ``name``, matched by name rather than by the
    whole spec string: ``batch_norm`` means ``dp_batch_norm[stats=public]``, not
    ``scale_norm``."""
    by_name: dict[str, str] = {}
    for norm in present:
        try:
            by_name.setdefault(parse_spec(norm)[0], norm)
        except SpecError:
            continue
    hint = closest(name, by_name)
    return by_name[hint] if hint else None


def _named_by(norm: str, name: str, params: Mapping[str, str], full: Mapping | None) -> bool:
    """Whether ``name[params]`` names the records' ``norm``, whose resolved parameters are
    ``full``."""
    try:
        norm_name, explicit = parse_spec(norm)
    except SpecError:
        return False
    # A parameter the record's spec shows differs from its default, so it must be given.
    if full is None or norm_name != name or not set(explicit) <= set(params):
        return False
    for key, text in params.items():
        if key not in full:
            return False
        try:
            if coerce_value(name, key, text, full[key]) != full[key]:
                return False
        except SpecError:
            return False
    return True
