"""Tests of suite loading: every user mistake is a ConfigError that says where and what."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.config import (
    Cell,
    DataConfig,
    PrivacyConfig,
    ReportConfig,
    Suite,
    TrainingConfig,
    alpha_problem,
    cell_to_dict,
    public_path,
    suite_to_dict,
)
from bench.errors import ConfigError
from bench.suite import load_suite, reload_with_overrides

ROOT = Path(__file__).resolve().parent.parent
SUITES = ROOT / "suites"
DELETE = object()

BASE = {
    "name": "tiny",
    "description": "a small valid suite",
    "data": {"source": "synthetic", "num_train": 256, "num_test": 64},
    "privacy": {"epsilon": 8.0, "delta": 1.0e-5},
    "training": {"batch_size": 32, "steps": 5},
    "grid": {"backbone": "resnet9", "norm": ["group_norm", "layer_norm"], "seed": [0, 1]},
}


def write_suite(tmp_path: Path, changes: dict | str | None = None, name="suite.yaml") -> Path:
    """Write BASE with ``changes`` (dotted path -> value, or DELETE) applied, or raw YAML text."""
    path = tmp_path / name
    if isinstance(changes, str):
        path.write_text(changes)
        return path
    raw = copy.deepcopy(BASE)
    for dotted, value in (changes or {}).items():
        parts = dotted.split(".")
        if parts[0] == "grid" and len(parts) > 2:
            parts = ["grid", ".".join(parts[1:])]
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_image_folder(root: Path, per_class: int = 40) -> Path:
    """Empty files with image names: enough for the cheap count done at load time."""
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i:03d}.png").touch()
    return root


# (changes, overrides, fragments the message must contain besides the file name)
MALFORMED = [
    pytest.param(
        {"trainig": {"steps": 5}},
        (),
        ["trainig", "did you mean 'training'"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        {"training.stepz": 5},
        (),
        ["training.stepz", "'stepz'", "did you mean 'steps'"],
        id="unknown-nested-key",
    ),
    pytest.param(
        {"training.batch_size": "big"},
        (),
        ["training.batch_size", "'big'", "an integer"],
        id="string-for-integer",
    ),
    pytest.param(
        {"training.steps": True},
        (),
        ["training.steps", "True", "an integer"],
        id="bool-is-not-an-integer",
    ),
    pytest.param(
        {"privacy.accountant": "rpd"},
        (),
        ["privacy.accountant", "'rpd'", "did you mean 'rdp'"],
        id="unknown-choice",
    ),
    pytest.param({"privacy.epsilon": -1}, (), ["privacy.epsilon", "-1"], id="epsilon-negative"),
    pytest.param({"privacy.epsilon": 0}, (), ["privacy.epsilon", "0"], id="epsilon-zero"),
    pytest.param(
        {"privacy.delta": 0.01}, (), ["privacy.delta", "0.01", "1/N"], id="delta-above-1-over-n"
    ),
    pytest.param(
        {"grid.norm": ["group_norm", "layer_nrom"]},
        (),
        ["grid.norm[1]", "'layer_nrom'", "did you mean 'layer_norm'"],
        id="unknown-norm",
    ),
    pytest.param(
        {"grid.backbone": "resnet_9"},
        (),
        ["grid.backbone", "'resnet_9'", "did you mean 'resnet9'"],
        id="unknown-backbone",
    ),
    pytest.param(
        {"training.batch_size": 1000},
        (),
        ["training.batch_size", "1000", "256"],
        id="batch-larger-than-dataset",
    ),
    pytest.param(
        {"data.source": "imagefolder"},
        (),
        ["data.root", "required", "imagefolder"],
        id="imagefolder-without-root",
    ),
    pytest.param(
        {"data.source": "imagefolder", "data.root": "/nonexistent/images"},
        (),
        ["data.root", "/nonexistent/images", "does not exist"],
        id="imagefolder-root-missing",
    ),
    pytest.param(
        {"data.source": "cifar10", "data.root": "/nonexistent/cifar"},
        (),
        ["data.root", "/nonexistent/cifar", "download: true"],
        id="cifar10-root-missing-without-download",
    ),
    pytest.param({"grid.seed": []}, (), ["grid.seed", "[]", "empty"], id="empty-grid-list"),
    pytest.param(
        {"grid.norm": ["group_norm", "group_norm[num_groups=16]"]},
        (),
        ["grid.norm[1]", "'group_norm[num_groups=16]'", "duplicate"],
        id="duplicate-cells",
    ),
    pytest.param(
        {"grid.norm": ["group_norm", "dp_batch_norm[stats=public]"]},
        (),
        ["grid.norm[1]", "dp_batch_norm", "public_split"],
        id="public-norm-without-public-split",
    ),
    pytest.param(
        {"training.epochs": 2},
        (),
        ["training.steps", "both are set", "5"],
        id="steps-and-epochs-both",
    ),
    pytest.param(
        {"training.steps": DELETE},
        (),
        ["training.steps", "neither is set"],
        id="steps-and-epochs-neither",
    ),
    pytest.param(
        {"training.augment": False, "training.augmult": 4},
        (),
        ["training.augmult", "4"],
        id="augmult-without-augment",
    ),
    pytest.param({"training.ema": 1.5}, (), ["training.ema", "1.5"], id="ema-outside-unit"),
    pytest.param({"training.lr": 0}, (), ["training.lr", "0"], id="lr-zero"),
    pytest.param(
        {"training.max_physical_batch": 0},
        (),
        ["training.max_physical_batch", "0"],
        id="physical-batch-zero",
    ),
    pytest.param(
        {"report": {"baseline": "group_nrm"}},
        (),
        ["report.baseline", "'group_nrm'", "did you mean 'group_norm'"],
        id="unknown-baseline-norm",
    ),
    pytest.param(
        {"report": {"rope_pp": 0}}, (), ["report.rope_pp", "must be in (0, 100)"], id="rope-zero"
    ),
    pytest.param(
        {"report": {"primary": "training.steps"}},
        (),
        ["report.primary", "key=value"],
        id="primary-without-value",
    ),
    pytest.param(
        {"report": {"primary": "training.steps=120"}},
        (),
        ["report.primary", "must give one listed value", "null (the grid sweeps no key"],
        id="primary-not-swept",
    ),
    pytest.param(
        {"privacy": 5}, (), ["privacy", "must be a mapping", "5"], id="section-not-mapping"
    ),
    pytest.param({"name": "My Suite"}, (), ["name", "'My Suite'"], id="name-not-snake-case"),
    pytest.param({"name": DELETE}, (), ["name", "required"], id="missing-name"),
    pytest.param({"grid": DELETE}, (), ["grid", "required"], id="missing-grid"),
    pytest.param({"grid.seed": DELETE}, (), ["grid.seed", "required"], id="missing-grid-seed"),
    pytest.param(
        {"grid.training.lrr": [1.0, 2.0]},
        (),
        ["grid.training.lrr", "did you mean 'lr'"],
        id="unknown-grid-key",
    ),
    pytest.param(
        {"grid.training.lr": [1.0, "x"]},
        (),
        ["grid.training.lr[1]", "'x'"],
        id="grid-value-wrong-type",
    ),
    pytest.param(
        {"grid.training.lr": [1.0, -2.0]},
        (),
        ["grid.training.lr[1]", "-2.0"],
        id="grid-value-impossible",
    ),
    pytest.param(
        {},
        ("training.stepz=3",),
        ["training.stepz (from --set)", "did you mean 'steps'"],
        id="override-unknown-key",
    ),
    pytest.param(
        {},
        ("training.lr=fast",),
        ["training.lr (from --set)", "'fast'"],
        id="override-wrong-type",
    ),
    pytest.param(
        {},
        ("grid.norm=[group_nrom]",),
        ["grid.norm[0] (from --set)", "'group_nrom'"],
        id="override-unknown-norm",
    ),
    pytest.param({}, ("training.steps",), ["--set", "'training.steps'"], id="override-no-equals"),
    pytest.param(
        "name: x\ngrid: [resnet9, group_norm\n",
        (),
        ["YAML syntax error", "line 3"],
        id="yaml-syntax-error",
    ),
    pytest.param("- a\n- b\n", (), ["top level", "mapping", "'list'"], id="top-level-a-list"),
]


@pytest.mark.parametrize(("changes", "overrides", "fragments"), MALFORMED)
def test_malformed_suite_is_a_config_error_naming_file_key_and_value(
    tmp_path, changes, overrides, fragments
):
    path = write_suite(tmp_path, changes)
    with pytest.raises(ConfigError) as info:
        load_suite(path, overrides)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_imagefolder_root_without_train_folder_is_a_config_error(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    path = write_suite(tmp_path, {"data.source": "imagefolder", "data.root": str(root)})
    with pytest.raises(ConfigError, match=r"data\.root.*train/"):
        load_suite(path)


def test_missing_suite_file_suggests_the_closest_suite():
    with pytest.raises(ConfigError) as info:
        load_suite(SUITES / "smok.yaml")
    message = str(info.value)
    assert "smok.yaml" in message
    assert "did you mean 'smoke.yaml'" in message


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_suite_loads_and_expands(path):
    # Downsampled ImageNet cannot be downloaded, so its suite checks its files on loading; with
    # download on, the check is skipped (the loader itself refuses to download them).
    suite = load_suite(path, ["data.download=true"] if path.stem.startswith("imagenet") else [])
    sizes = [len(values) for _, values in suite.grid]
    assert len(suite.cells()) == math.prod(sizes)
    assert suite.name == path.stem
    json.dumps(suite_to_dict(suite))
    json.dumps(cell_to_dict(suite.cells()[0]))


def test_grid_expands_to_cartesian_product_in_documented_order(tmp_path):
    path = write_suite(
        tmp_path,
        {
            "grid.backbone": ["resnet9", "wrn16_4"],
            "grid.seed": [1, 0],
            "grid.training.lr": [2.0, 1],
            "grid.privacy.epsilon": [4, 8],
        },
    )
    suite = load_suite(path)
    assert [key for key, _ in suite.grid] == [
        "backbone",
        "norm",
        "seed",
        "privacy.epsilon",
        "training.lr",
    ]
    expected = list(
        itertools.product(
            ["resnet9", "wrn16_4"], ["group_norm", "layer_norm"], [1, 0], [4.0, 8.0], [2.0, 1.0]
        )
    )
    got = [(c.backbone, c.norm, c.seed, c.privacy.epsilon, c.training.lr) for c in suite.cells()]
    assert got == expected
    cell = suite.cells()[0]
    assert cell.overrides == {"privacy.epsilon": 4.0, "training.lr": 2.0}
    assert suite.training.lr == 1.0  # the base config keeps its own value


def _keys(suite: Suite) -> list[str]:
    return [cell.run_key for cell in suite.cells()]


def test_run_keys_are_stable_and_distinct(tmp_path):
    path = write_suite(tmp_path)
    first, second = _keys(load_suite(path)), _keys(load_suite(path))
    assert first == second
    assert len(set(first)) == len(first)
    assert all(len(key) == 16 and int(key, 16) >= 0 for key in first)


@pytest.mark.parametrize(
    "override",
    [
        "privacy.epsilon=4",
        "privacy.delta=2e-5",
        "privacy.max_grad_norm=2",
        "training.lr=2",
        "training.steps=6",
        "training.augmult=2",
        "training.ema=0.99",
        "privacy.secure_noise=true",
        "training.divergence_check=private_loss",
        "data.split_seed=1",
        "data.num_train=200",
        "data.normalize=false",
        "grid.backbone=resnet18",
    ],
)
def test_run_key_changes_with_any_result_changing_field(tmp_path, override):
    path = write_suite(tmp_path)
    base = load_suite(path)
    changed = load_suite(path, [override])
    assert not set(_keys(base)) & set(_keys(changed))


@pytest.mark.parametrize(
    "override",
    [
        "description=reworded",
        "name=renamed",
        "report.alpha=0.01",
        "report.baseline=layer_norm",
        "report.rope_pp=2",
        "report.collapse_pp=5",
        "data.dataset=renamed",
        "grid.norm=['group_norm[num_groups=16]', layer_norm]",
        "data.num_test=64",
        "training.lr=1",
        "privacy.delta=1e-5",
        "training.log_private_loss=true",
    ],
    ids=lambda o: o.split("=")[0],
)
def test_run_key_ignores_fields_and_spellings_that_do_not_change_the_result(tmp_path, override):
    path = write_suite(tmp_path)
    assert _keys(load_suite(path)) == _keys(load_suite(path, [override]))


def test_a_declared_primary_grid_point_leaves_the_run_keys_alone(tmp_path):
    path = write_suite(tmp_path, {"grid.training.steps": [5, 10]})
    assert _keys(load_suite(path)) == _keys(load_suite(path, ["report.primary=training.steps=10"]))


def test_overrides_apply_before_validation(tmp_path):
    root = make_image_folder(tmp_path / "images")
    path = write_suite(tmp_path)
    suite = load_suite(
        path,
        [
            "training.steps=100",
            "grid.seed=[0,1,2]",
            "grid.training.lr=[2.0,4.0]",
            "data.source=imagefolder",
            f"data.root={root}",
            "data.num_train=null",
        ],
    )
    assert suite.training.steps == 100
    assert dict(suite.grid)["seed"] == (0, 1, 2)
    assert dict(suite.grid)["training.lr"] == (2.0, 4.0)
    assert suite.data.source == "imagefolder"
    assert suite.data.dataset_name == "images"
    assert len(suite.cells()) == 1 * 2 * 3 * 2
    assert suite.overrides[0] == "training.steps=100"
    again = reload_with_overrides(suite, ["training.steps=7"])
    assert again.training.steps == 7
    assert again.data.source == "imagefolder"


def test_imagefolder_delta_is_checked_against_the_counted_files(tmp_path):
    root = make_image_folder(tmp_path / "images", per_class=40)
    path = write_suite(
        tmp_path,
        {
            "data.source": "imagefolder",
            "data.root": str(root),
            "data.num_train": DELETE,
            "privacy.delta": 0.02,
        },
    )
    with pytest.raises(ConfigError, match=r"privacy\.delta.*N = 80"):
        load_suite(path)


def test_root_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    make_image_folder(tmp_path / "images")
    path = write_suite(tmp_path, {"data.source": "imagefolder", "data.root": "~/images"})
    assert load_suite(path).data.root == str(tmp_path / "images")


def test_spellings_of_one_data_root_give_one_run_key(tmp_path, monkeypatch):
    """A trailing slash on data.root once changed every run key: a finished sweep looked
    unfinished."""
    make_image_folder(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    path = write_suite(tmp_path)
    base = ["data.source=imagefolder", "data.num_train=null"]
    keys = {
        root: _keys(load_suite(path, [*base, f"data.root={root}"]))
        for root in ("images", "images/", "./images", "./images//", "images/../images/.")
    }
    assert len({tuple(k) for k in keys.values()}) == 1, keys


def test_normalising_data_root_moves_no_published_run_key():
    """Published roots are normal once expanded: normalising changes none of their keys."""
    for path in sorted((ROOT / "reports").glob("*/records.jsonl")):
        for line in path.read_text().splitlines():
            root = json.loads(line)["config"]["data"].get("root")
            if isinstance(root, str):
                assert os.path.normpath(os.path.expanduser(root)) == os.path.expanduser(root)


def test_yaml_1_1_exponent_without_dot_reads_as_a_number(tmp_path):
    path = write_suite(tmp_path, {"privacy.delta": "1e-5"})
    assert load_suite(path).privacy.delta == 1e-5


def test_epochs_convert_to_steps_rounding_up():
    config = TrainingConfig(batch_size=256, epochs=2.5)
    assert config.num_steps(1000) == 10  # ceil(2.5 * 1000 / 256) = ceil(9.77)
    assert TrainingConfig(steps=7).num_steps(1000) == 7


def test_a_suite_built_in_code_cannot_be_reloaded_with_overrides(tmp_path):
    suite = load_suite(write_suite(tmp_path))
    in_code = dataclasses.replace(suite, path=None)
    with pytest.raises(ConfigError, match="built in code"):
        reload_with_overrides(in_code, ["training.steps=7"])


@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.499, 1e-9], ids=str)
def test_alpha_in_zero_one_half_is_valid(alpha):
    assert alpha_problem(alpha) is None
    assert list(ReportConfig(alpha=alpha).problems()) == []


@pytest.mark.parametrize(
    "alpha", [0, 0.5, 0.7, 1, -0.1, math.nan, math.inf, True, "0.05", None], ids=repr
)
def test_alpha_outside_zero_one_half_or_not_a_number_is_a_problem(alpha):
    assert alpha_problem(alpha)
    assert [field for field, _, _ in ReportConfig(alpha=alpha).problems()] == ["alpha"]


def test_importing_the_schema_loads_neither_yaml_nor_torch():
    heavy = ("yaml", "torch", "norms", "bench.data", "bench.backbones", "bench.suite")
    code = f"import sys, bench.config; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def _cell_from_record(record: dict) -> Cell:
    """The cell a record was made from, rebuilt from the config it stores."""
    config = record["config"]
    data = {k: v for k, v in config["data"].items() if k not in ("num_train", "num_test")}
    data.update(num_train=None, num_test=None, mean=tuple(data["mean"]), std=tuple(data["std"]))
    for name in ("num_train", "num_test"):
        # The stored sizes have per-source defaults filled in; the synthetic defaults are None.
        stored = config["data"][name]
        default = getattr(DataConfig(source=data["source"]), f"{name[4:]}_size")
        data[name] = None if stored == default else stored
    training = {**config["training"], "lr_milestones": tuple(config["training"]["lr_milestones"])}
    return Cell(
        suite=record["suite"],
        backbone=record["backbone"],
        norm=record["norm"],
        seed=record["seed"],
        overrides=record["overrides"],
        data=DataConfig(**{k: v for k, v in data.items() if k != "dataset" or v != "synthetic"}),
        privacy=PrivacyConfig(**config["privacy"]),
        training=TrainingConfig(**training),
    )


def test_published_records_keep_their_run_keys():
    """Config fields added since (``privacy.secure_noise`` at its default, the diagnostic
    ``training.log_private_loss``) and public paths in records must not move a published key,
    or a resumed sweep would redo every finished run."""
    checked = 0
    for path in sorted((ROOT / "reports").glob("*/records.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            root = record["config"]["data"].get("root")
            if isinstance(root, str) and not os.path.isabs(root):
                continue  # a home-relative root hashes as expanded on the machine that ran it
            assert _cell_from_record(record).run_key == record["run_key"], (path, record["norm"])
            checked += 1
    assert checked >= 10


def test_public_paths_are_home_or_directory_relative_and_never_absolute(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert public_path(str(tmp_path / "home" / "data" / "x")) == "~/data/x"
    assert public_path(str(tmp_path / "work" / "y")) == "work/y"
    assert public_path("/elsewhere/z") == "…/z"
    assert public_path("relative/w") == "relative/w"
    cell = load_suite(write_suite(tmp_path, {"data.cache_dir": "~/cache"})).cells()[0]
    assert cell_to_dict(cell)["data"]["cache_dir"] == "~/cache"
    assert cell.data.cache_dir == str(tmp_path / "home" / "cache")  # the run itself sees it all
