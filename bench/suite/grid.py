"""The grid and tune sections: swept values, canonical backbone, norm and dataset specs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from bench.backbones import resolve_backbone
from bench.config import (
    GRID_REQUIRED,
    GRID_SECTIONS,
    SCORE_NOISE,
    SECTIONS,
    TUNE_RULES,
    TUNE_SEEDS,
    TuneConfig,
)
from bench.data.registry import resolve_source
from bench.errors import BackboneError, DataError
from bench.suite.coercion import coerce, field_hints, is_tuple_hint, reject_unknown
from bench.suite.reading import Context
from norms import resolve_norm
from norms.errors import NormError

#: What a grid is, for errors about a missing or malformed one.
GRID_ALLOWED = "a mapping with backbone, norm and seed"
_TUNE_KEYS = ("keys", "seeds", "overrides", "score_noise", "refine", "rule")


def parse_tune(raw: Any, grid: Mapping[str, Any], data: Any, ctx: Context) -> TuneConfig | None:
    """The ``tune`` section: dotted keys with the values to try, tuning seeds, overrides
    applied to tuning runs only (a shorter budget), the noise on their validation scores, the
    refinement around the coarse optimum and the selection rule."""
    if raw is None:
        return None
    allowed = (
        "keys: {training.lr: [0.5, 1, 2]}, seeds: [0, 1], overrides: {training.steps: 40}, "
        f"score_noise: {SCORE_NOISE:g}, refine: true, rule: {TUNE_RULES[0]}"
    )
    if not isinstance(raw, dict):
        raise ctx.error("tune", "must be a mapping", given=raw, allowed=allowed)
    reject_unknown(raw, _TUNE_KEYS, "tune.", ctx)
    keys = raw.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise ctx.error(
            "tune.keys", "must map dotted keys to values to try", given=keys, allowed=allowed
        )
    parsed = []
    for key in sorted(keys):
        if key in GRID_REQUIRED or key in grid:
            raise ctx.error(
                f"tune.keys.{key}",
                "is swept by the grid or names a grid axis; a key is either tuned or swept",
                given=key,
                allowed="a dotted data/privacy/training key the grid does not sweep",
            )
        values = keys[key] if isinstance(keys[key], list) else [keys[key]]
        parsed.append((key, parse_grid_values(key, values, ctx, where="tune.keys")))
    seeds = raw.get("seeds", list(TUNE_SEEDS))
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise ctx.error(
            "tune.seeds", "must be a list of distinct seeds", given=seeds, allowed="e.g. [0, 1]"
        )
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ctx.error("tune.overrides", "must be a mapping", given=overrides, allowed=allowed)
    parsed_overrides = []
    for key in sorted(overrides):
        (value,) = parse_grid_values(key, [overrides[key]], ctx, where="tune.overrides")
        parsed_overrides.append((key, value))
    if data.val_split < 1:
        raise ctx.error(
            "data.val_split",
            "is 0, but tuning needs a validation split (the test set is never read to tune)",
            given=data.val_split,
            allowed="data.val_split > 0 examples held out of the private set",
        )
    score_noise = _score_noise(raw.get("score_noise", SCORE_NOISE), ctx)
    refine, rule = _refine_and_rule(raw, ctx)
    return TuneConfig(
        tuple(parsed), tuple(seeds), tuple(parsed_overrides), score_noise, refine, rule
    )


def _refine_and_rule(raw: Mapping[str, Any], ctx: Context) -> tuple[bool, str]:
    """``tune.refine`` (a boolean) and ``tune.rule`` (one of `TUNE_RULES`)."""
    refine = raw.get("refine", True)
    if not isinstance(refine, bool):
        raise ctx.error(
            "tune.refine",
            "must be true or false: whether to refine each float key around the coarse optimum",
            given=refine,
            allowed="true (the default) or false",
        )
    rule = raw.get("rule", TUNE_RULES[0])
    if rule not in TUNE_RULES:
        raise ctx.error(
            "tune.rule", "is not a selection rule", given=rule, allowed=" or ".join(TUNE_RULES)
        )
    return refine, rule


def _score_noise(raw: Any, ctx: Context) -> float:
    """``tune.score_noise``: a finite number > 0 (an exact score would leave the run un-noised)."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < math.inf:
        raise ctx.error(
            "tune.score_noise",
            "must be a number > 0: the std of the Gaussian noise on each tuning run's count of "
            "correct validation examples (an exact count is not private)",
            given=raw,
            allowed=f"a number > 0, e.g. {SCORE_NOISE:g} (the default)",
        )
    return float(raw)


def parse_grid(raw: Any, ctx: Context) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(raw, dict):
        raise ctx.error("grid", "must be a mapping", given=raw, allowed=GRID_ALLOWED)
    for key in GRID_REQUIRED:
        if key not in raw:
            raise ctx.error(f"grid.{key}", "is required", allowed="a value or a list of values")
    extras = sorted(k for k in raw if k not in GRID_REQUIRED)
    grid = []
    for key in (*GRID_REQUIRED, *extras):
        grid.append((key, parse_grid_values(str(key), raw[key], ctx)))
    return tuple(grid)


def parse_grid_values(key: str, raw: Any, ctx: Context, where: str = "grid") -> tuple[Any, ...]:
    gkey = f"{where}.{key}"
    hint: Any = None
    if key not in GRID_REQUIRED:
        section, _, name = key.partition(".")
        if section not in GRID_SECTIONS or not name:
            valid = [*GRID_REQUIRED, *(f"{s}.<field>" for s in GRID_SECTIONS)]
            raise ctx.error(
                gkey,
                "unknown grid key",
                given=key,
                allowed=", ".join(valid),
                choices=[*GRID_REQUIRED, *GRID_SECTIONS],
            )
        fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if name not in fields:
            raise ctx.error(
                gkey, "unknown key", given=name, allowed=", ".join(fields), choices=fields
            )
        hint = field_hints(SECTIONS[section])[name]
    # A list sweeps; for list-valued fields (data.mean) only a list of lists sweeps.
    list_field = hint is not None and is_tuple_hint(hint)
    swept = isinstance(raw, list) and (not list_field or all(isinstance(v, list) for v in raw))
    items = raw if swept else [raw]
    if not items:
        raise ctx.error(
            gkey,
            "is an empty list, so the grid has no cells",
            given=raw,
            allowed="at least one value",
        )
    values: list[Any] = []
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        ikey = f"{gkey}[{i}]" if swept else gkey
        if key == "backbone":
            value = canonical_spec("backbone", item, ikey, ctx)
        elif key == "norm":
            value = canonical_spec("norm", item, ikey, ctx)
        elif key == "seed":
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                raise ctx.error(
                    ikey, "must be a non-negative integer", given=item, allowed="an integer >= 0"
                )
            value = item
        elif key == "data.source":
            value = canonical_spec("dataset", item, ikey, ctx)
        else:
            value = coerce(item, hint, ikey, ctx)
        if value in seen:
            raise ctx.error(
                ikey,
                f"duplicate cells: it means {value!r}, as {gkey}[{seen[value]}] does",
                given=item,
                allowed="distinct values",
            )
        seen[value] = i
        values.append(value)
    return tuple(values)


#: What a spec string names, how to resolve it, its errors and an example of the form.
_SPEC_KINDS = {
    "norm": (resolve_norm, NormError, "a name or name[key=value,...] that `bench list` shows"),
    "backbone": (resolve_backbone, BackboneError, "e.g. wrn16_4 or wrn16_4[width=0.5]"),
    "dataset": (resolve_source, DataError, "a name or name[key=value,...] that `bench list` shows"),
}


def canonical_spec(kind: str, spec: Any, key: str, ctx: Context) -> str:
    """The canonical spec string of a norm, backbone or dataset, or an error naming file and
    key."""
    resolve, error, example = _SPEC_KINDS[kind]
    if not isinstance(spec, str):
        raise ctx.error(key, f"must be a {kind} spec string", given=spec, allowed=example)
    try:
        return str(resolve(spec))
    except error as err:
        raise ctx.error(key, str(err), given=spec) from None
