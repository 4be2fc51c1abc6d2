"""The spec grammar stands alone: torch-free, importing nothing from norms or bench."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from specs import (
    ResolvedSpec,
    SpecError,
    closest,
    coerce_value,
    format_spec,
    keyword_defaults,
    parse_spec,
    resolve_params,
    summary,
)

ROOT = Path(__file__).resolve().parents[1]


def test_parse_and_format_round_trip_with_sorted_keys():
    name, params = parse_spec(" group_norm[num_groups=8, eps=0.001] ")
    assert (name, params) == ("group_norm", {"num_groups": "8", "eps": "0.001"})
    assert format_spec(name, params) == "group_norm[eps=0.001,num_groups=8]"
    assert format_spec("none", {}) == "none"
    assert format_spec("x", {"flag": True}) == "x[flag=true]"


@pytest.mark.parametrize(
    "spec", ["group_norm[num_groups]", "Group", "a[k=1,k=2]", "a[=1]"], ids=str
)
def test_malformed_specs_raise_the_callers_error(spec):
    with pytest.raises(KeyError):
        parse_spec(spec, "norm", KeyError)
    with pytest.raises(SpecError):
        parse_spec(spec)


def test_values_take_the_type_of_the_default():
    assert coerce_value("n", "k", "8", 16) == 8
    assert coerce_value("n", "k", "1e-3", 1e-5) == 1e-3
    assert coerce_value("n", "k", "true", False) is True
    assert coerce_value("n", "k", "none", 4) is None
    assert coerce_value("n", "k", "4", None) == 4
    with pytest.raises(SpecError, match="k must be int"):
        coerce_value("n", "k", "many", 16)


def test_closest_suggests_a_near_name_or_nothing():
    assert closest("gruop_norm", ["group_norm", "layer_norm"]) == "group_norm"
    assert closest("zzz", ["group_norm"]) is None


def test_specs_imports_neither_torch_nor_the_project():
    code = (
        "import sys, specs; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'norms', 'bench'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_resolved_spec_names_its_spec_and_prints_its_explicit_parameters():
    class Spec:
        name = "group_norm"

    resolved = ResolvedSpec(Spec(), {"num_groups": 8, "eps": 1e-5}, {"num_groups": 8})
    assert resolved.name == "group_norm"
    assert str(resolved) == "group_norm[num_groups=8]"


def test_a_factory_declares_its_parameters_and_description():
    def factory(channels, *, groups=16, device=None, eps=1e-5):
        """GroupNorm.

        More."""

    def no_default(channels, *, groups):
        pass

    assert keyword_defaults(factory, skip=("device",)) == {"groups": 16, "eps": 1e-5}
    assert summary(factory) == "GroupNorm." and summary(no_default) == ""
    with pytest.raises(KeyError, match="'groups' needs a default"):
        keyword_defaults(no_default, error=KeyError)
    full, explicit = resolve_params("norm", "g", {"groups": 16, "eps": 1e-5}, {"groups": "8"})
    assert (full, explicit) == ({"groups": 8, "eps": 1e-5}, {"groups": 8})
    with pytest.raises(SpecError, match="takes no parameter 'x'; its parameters: eps, groups"):
        resolve_params("norm", "g", {"groups": 16, "eps": 1e-5}, {"x": 1})
