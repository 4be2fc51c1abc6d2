"""Sections that group the right tables: across backbones (backbones only), agreement across a
swept key, across datasets (issue 29 item 5, issue 31 item 5)."""

from __future__ import annotations

import json
from itertools import permutations, product
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.errors import ComparisonError
from bench.results import stats
from bench.results.across import ACROSS_FILE, across_text
from bench.results.leaderboard import leaderboard_text
from tests.report_records import make_record, write_run

#: Mean accuracy per norm; each seed adds a small offset.
ACCS = {"group_norm": 0.60, "layer_norm": 0.55, "scale_norm": 0.65}


def records(
    backbone: str, overrides: dict, accs: dict[str, float] = ACCS, seeds: int = 3, **extra
) -> list[dict]:
    """Ok records of one table: every norm of ``accs`` over ``seeds`` seeds."""
    tag = "|".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return [
        make_record(
            backbone,
            norm,
            seed,
            acc + 0.01 * ((seed * 7 + len(norm)) % 3),
            overrides=overrides,
            run_key=f"{backbone}|{norm}|{seed}|{tag}|{extra.get('dataset', '')}",
            wall_s=10.0,
            num_classes=10,
            **extra,
        )
        for norm, acc in accs.items()
        for seed in range(seeds)
    ]


def section(text: str, heading: str) -> str:
    """The text of the ``## heading`` section, up to the next ``## `` heading."""
    assert f"\n## {heading}\n" in text, heading
    return text.split(f"\n## {heading}\n")[1].split("\n## ")[0]


def friedman_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("Friedman test"))


def test_a_backbone_by_steps_grid_ranks_backbones_per_budget(tmp_path: Path) -> None:
    rows = []
    for steps in (120, 40):
        for backbone in ("resnet9", "wrn16_4"):
            rows += records(backbone, {"training.steps": steps})
    text = leaderboard_text(write_run(tmp_path, rows))
    across = section(text, "Across backbones")
    # One ranking per budget, each over the two backbones only (a budget is no backbone).
    lines = [line for line in across.splitlines() if line.startswith("Friedman test")]
    assert len(lines) == 2
    for line in lines:
        assert "on 2 backbones (`resnet9`, `wrn16_4`)" in line
        assert "training.steps" not in line
    assert across.index("### At `training.steps=40`") < across.index("### At `training.steps=120`")


def test_one_backbone_with_two_budgets_has_no_across_backbones_section(tmp_path: Path) -> None:
    rows = records("resnet9", {"training.steps": 40}) + records("resnet9", {"training.steps": 120})
    text = leaderboard_text(write_run(tmp_path, rows))
    assert "## Across backbones" not in text
    assert "\n## Agreement across `training.steps`\n" in text


def test_the_agreement_section_lists_budgets_numerically(tmp_path: Path) -> None:
    # The dearer budget is the larger one, except 1000 steps ran faster than 120: numeric
    # order, not cost, orders each pair (and the values are not sorted as text).
    walls = {40: 10.0, 120: 30.0, 1000: 20.0}
    rows = []
    for steps in (1000, 40, 120):
        for record in records("resnet9", {"training.steps": steps}):
            rows.append({**record, "wall_s": walls[steps]})
    text = leaderboard_text(write_run(tmp_path, rows))
    agreement = section(text, "Agreement across `training.steps`")
    pairs = [
        line.split("|")[2].strip() for line in agreement.splitlines() if line.startswith("| `")
    ]
    assert pairs == ["`40`, `120`", "`40`, `1000`", "`120`, `1000`"]
    assert "(the cheaper)" in agreement
    assert "Rank agreement across swept values" not in text  # said once, in its own section


PLANTED = {  # dataset -> norm -> mean accuracy: d3 swaps the last two norms
    "d1": {"kernel_norm": 0.70, "scale_norm": 0.60, "group_norm": 0.50, "layer_norm": 0.40},
    "d2": {"kernel_norm": 0.90, "scale_norm": 0.85, "group_norm": 0.80, "layer_norm": 0.75},
    "d3": {"kernel_norm": 0.30, "scale_norm": 0.25, "group_norm": 0.15, "layer_norm": 0.20},
}


def dataset_folder(root: Path, dataset: str, accs: dict, backbone: str = "wrn16_4", **extra):
    config = {"training": {"steps": 300, "lr": 2.0}, "privacy": {"epsilon": 8.0, "delta": 1e-5}}
    config["training"].update(extra.pop("training", {}))
    rows = records(backbone, {}, accs, dataset=dataset, steps=300, config=config, **extra)
    return write_run(root / dataset, rows)


def brute_force_friedman_p(blocks: list[list[float]]) -> float:
    """Share of all rank arrangements (every block permuted) whose sum of squared rank sums
    reaches the observed one."""
    ranks = [np.argsort(np.argsort(b)) + 1.0 for b in blocks]
    observed = (np.sum(ranks, axis=0) ** 2).sum()
    hits = total = 0
    for arranged in product(*(list(permutations(r)) for r in ranks)):
        total += 1
        hits += (np.sum(arranged, axis=0) ** 2).sum() >= observed - 1e-9
    return hits / total


def test_across_ranks_a_planted_order_over_three_datasets(tmp_path: Path) -> None:
    folders = [dataset_folder(tmp_path, d, accs) for d, accs in PLANTED.items()]
    out = tmp_path / "out"
    assert main(["across", *map(str, folders), "--out", str(out)]) == 0
    text = (out / ACROSS_FILE).read_text()
    ranks = {
        line.split("|")[1].strip(): line.split("|")[-2].strip()
        for line in text.splitlines()
        if line.startswith("| `") and line.split("|")[1].strip().endswith("_norm`")
    }
    assert ranks == {
        "`kernel_norm`": "1.00",
        "`scale_norm`": "2.00",
        "`group_norm`": "3.33",
        "`layer_norm`": "3.67",
    }
    norms = sorted(PLANTED["d1"])
    blocks = [[PLANTED[d][n] for n in norms] for d in sorted(PLANTED)]
    brute = brute_force_friedman_p(blocks)
    means = {d: {n: float(np.mean(seeds_of(d, n))) for n in norms} for d in PLANTED}
    assert stats.friedman(means, "dataset").exact.pvalue == pytest.approx(brute)
    assert f"exact permutation p = {brute:.4f} (all 576 arrangements enumerated)" in text
    assert "on 3 datasets (`d1`, `d2`, `d3`)" in friedman_line(text)
    agreement = {
        line.split("|")[1].strip(): line.split("|")[3].strip()
        for line in text.splitlines()
        if line.startswith("| `d")
    }
    assert agreement["`d1`, `d2`"].startswith("+1.00")
    assert agreement["`d1`, `d3`"].startswith("+0.67")


def seeds_of(dataset: str, norm: str) -> list[float]:
    """The accuracies `records` gives ``norm`` on ``dataset``."""
    return [PLANTED[dataset][norm] + 0.01 * ((s * 7 + len(norm)) % 3) for s in range(3)]


def test_an_incomplete_norm_is_left_out_and_said(tmp_path: Path) -> None:
    accs = dict(PLANTED["d2"], dp_batch_norm=0.5)
    folders = [dataset_folder(tmp_path, "d1", PLANTED["d1"]), dataset_folder(tmp_path, "d2", accs)]
    text = across_text(folders)
    assert "Left out of the ranks and the Friedman test as incomplete: `dp_batch_norm`" in text
    assert "(no run on `d1`)" in text


def test_mismatched_suites_say_what_differs_in_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = dataset_folder(tmp_path, "cifar", PLANTED["d1"], backbone="resnet9")
    second = dataset_folder(tmp_path, "svhn", PLANTED["d2"], training={"steps": 100})
    for record_file in (second / "records.jsonl",):
        record_file.write_text(record_file.read_text().replace('"steps": 300', '"steps": 100'))
    assert main(["across", str(first), str(second), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: nothing comparable")
    assert "backbone: resnet9 (cifar) vs wrn16_4 (svhn)" in err
    assert "training.steps: 300 (cifar) vs 100 (svhn)" in err
    assert not (tmp_path / "out" / ACROSS_FILE).exists()


def test_a_grid_sweeping_data_source_ranks_its_datasets_on_the_page(tmp_path: Path) -> None:
    rows = []
    for source in ("svhn", "cifar10"):
        accs = PLANTED["d1" if source == "svhn" else "d2"]
        rows += records("wrn16_4", {"data.source": source}, accs)
    text = leaderboard_text(write_run(tmp_path, rows))
    datasets = section(text, "Across datasets")
    assert "### On `backbone=wrn16_4`" in datasets
    assert "on 2 datasets (`cifar10`, `svhn`)" in friedman_line(datasets)
    assert "Agreement across `data.source`" not in text  # said in the datasets section
    assert "## Across backbones" not in text


def test_two_folders_of_one_dataset_at_one_setting_are_refused(tmp_path: Path) -> None:
    first = dataset_folder(tmp_path / "a", "cifar", PLANTED["d1"])
    second = dataset_folder(tmp_path / "b", "cifar", PLANTED["d2"])
    with pytest.raises(ComparisonError, match="both hold cifar at backbone=wrn16_4, "):
        across_text([first, second])


def test_a_learning_rate_tuned_per_norm_is_compared_norm_by_norm(tmp_path: Path) -> None:
    """Both datasets tuned the same rate for every norm but one: only that difference is said,
    never the first record's rate as if it were the table's."""
    lr = {"d1": {"kernel_norm": 0.5}, "d2": {"kernel_norm": 1.0}}
    folders = []
    for dataset in ("d1", "d2"):
        folder = dataset_folder(tmp_path, dataset, PLANTED[dataset])
        rows = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
        for row in rows:
            row["config"]["training"]["lr"] = lr[dataset].get(row["norm"], 2.0)
        folders.append(write_run(folder, rows))
    text = across_text(folders)
    said = next(line for line in text.splitlines() if "configurations differ" in line)
    assert "training.lr (d1: per norm: group_norm 2.0, kernel_norm 0.5, " in said
    assert "d2: per norm: group_norm 2.0, kernel_norm 1.0, " in said
    folders[1].joinpath("records.jsonl").write_text(
        folders[1].joinpath("records.jsonl").read_text().replace('"lr": 1.0', '"lr": 0.5')
    )
    assert "identical" in next(
        line for line in across_text(folders).splitlines() if "configurations" in line
    )
