"""Tests of the leaderboard: golden file, determinism, edge cases, figures."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest

from bench.errors import ConfigError, RecordsError
from bench.results import figures, stats
from bench.results.figure_context import FigureContext
from bench.results.leaderboard import write_report
from tests.report_records import make_record, write_run

GOLDEN = Path(__file__).parent / "golden"
RENDER_FIGURES = figures.write_figures


@pytest.fixture(autouse=True)
def figure_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record figure requests instead of drawing them (matplotlib is slow on 2 cores)."""
    calls: list = []
    monkeypatch.setattr(figures, "write_figures", lambda run_dir, points, **_: calls.append(points))
    return calls


def table_row(text: str, backbone: str, norm: str) -> list[str]:
    """The cells of ``norm``'s row in ``backbone``'s table."""
    section = text.split(f"## Backbone `{backbone}`")[1].split("\n## ")[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1 and cells[1] == f"`{norm}`":
            return cells
    raise AssertionError(f"no row for {norm} on {backbone}")


def column(text: str, backbone: str, norm: str, header: str) -> str:
    """The cell of ``norm``'s row in ``backbone``'s table under the column whose name starts
    with ``header``."""
    section = text.split(f"## Backbone `{backbone}`")[1]
    first_line = next(line for line in section.splitlines() if line.startswith("|"))
    names = [c.strip() for c in first_line.strip("|").split("|")]
    index = next(i for i, name in enumerate(names) if name.startswith(header))
    return table_row(text, backbone, norm)[index]


def grid(norm_accs: dict[str, list[float]], backbone: str = "resnet9") -> list[dict]:
    return [
        make_record(backbone, norm, seed, acc)
        for norm, accs in norm_accs.items()
        for seed, acc in enumerate(accs)
    ]


def test_golden_leaderboard_is_reproduced_byte_for_byte(tmp_path: Path, figure_calls: list) -> None:
    """Regenerate with ``UPDATE_GOLDEN=1 pytest tests/test_report.py`` after a deliberate change."""
    for name in ("records.jsonl", "suite.json"):
        shutil.copy(GOLDEN / name, tmp_path / name)
    text = write_report(tmp_path).read_text(encoding="utf-8")
    golden = GOLDEN / "leaderboard.md"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert len(figure_calls) == 1


def test_report_does_not_depend_on_record_order(tmp_path: Path) -> None:
    records = grid({"group_norm": [0.6, 0.61, 0.62], "layer_norm": [0.55, 0.57, 0.56]})
    records += grid({"group_norm": [0.7, 0.72], "scale_norm": [0.71, 0.69]}, "wrn16_4")
    records.append(make_record("wrn16_4", "kernel_norm", 0, None, "failed"))
    first = write_report(write_run(tmp_path / "a", records)).read_text()
    random.Random(3).shuffle(records)
    second = write_report(write_run(tmp_path / "b", records)).read_text()
    assert first == second


def test_one_seed_cells_show_no_interval_and_are_not_tested(tmp_path: Path) -> None:
    records = grid({"group_norm": [0.6], "layer_norm": [0.65]})
    text = write_report(write_run(tmp_path, records)).read_text()
    row = table_row(text, "resnet9", "layer_norm")
    assert row[0] == "—"
    assert row[2] == "65.00 (n=1, no CI)"
    assert row[3] == "+5.00 (no CI, n<2)"
    assert row[5] == "not tested (n<2)"
    assert "Tests used here: none (too few seeds)." in text


def test_norm_whose_runs_all_failed_is_listed_with_reasons_and_not_ranked(tmp_path: Path) -> None:
    records = grid({"group_norm": [0.6, 0.61, 0.62], "layer_norm": [0.55, 0.57, 0.56]})
    records += [make_record("resnet9", "kernel_norm", s, None, "failed") for s in range(3)]
    text = write_report(write_run(tmp_path, records)).read_text()
    row = table_row(text, "resnet9", "kernel_norm")
    assert row[0] == "—" and row[2] == "no ok run (3 failed)"
    failed = text.split("## Failed and skipped runs")[1]
    assert failed.count("failed for a reason") == 3


def test_attempts_a_rerun_replaced_are_listed_but_not_in_the_tables(tmp_path: Path) -> None:
    """A run retried until it succeeded is one ok run in the tables; the failed attempt before
    it is listed with its reason from the superseded file. An interrupted attempt (resumed)
    and a record a kill left in both files are not attempts of their own."""
    records = grid({"group_norm": [0.6, 0.61, 0.62], "layer_norm": [0.55, 0.57, 0.56]})
    run_dir = write_run(tmp_path, records)
    assert "Attempts a re-run replaced" not in write_report(run_dir).read_text()
    failed = make_record("resnet9", "layer_norm", 1, None, "failed", error="CUDA out of memory")
    interrupted = make_record("resnet9", "layer_norm", 2, None, "interrupted")
    replaced = [failed, interrupted, failed, records[4]]  # a duplicate; and the current record
    (run_dir / "records.superseded.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in replaced)
    )
    text = write_report(run_dir).read_text()
    section = text.split("### Attempts a re-run replaced")[1].split("##")[0]
    assert "1 finished attempt(s) (1 of final runs)" in section
    rows = [line for line in section.splitlines() if line.startswith("| `resnet9`")]
    assert [[c.strip() for c in r.strip("|").split("|")] for r in rows] == [
        ["`resnet9`", "`layer_norm`", "1", "final", "failed", "CUDA out of memory", "ok"]
    ]
    assert table_row(text, "resnet9", "layer_norm")[2] == "56.00 ± 2.48 (n=3)"  # the 3 current


def test_missing_baseline_skips_comparisons_but_still_ranks(tmp_path: Path) -> None:
    records = grid({"layer_norm": [0.55, 0.57, 0.56], "scale_norm": [0.6, 0.61, 0.6]})
    suite = {"report": {"baseline": "group_norm"}}
    text = write_report(write_run(tmp_path, records, suite)).read_text()
    assert "The baseline `group_norm` has no ok run on this backbone" in text
    row = table_row(text, "resnet9", "layer_norm")
    assert row[3] == "—" and row[5] == "not compared (no baseline runs)"
    assert table_row(text, "resnet9", "scale_norm")[0] == "a"


def test_single_backbone_has_no_ranking_across_backbones(tmp_path: Path) -> None:
    records = grid({"group_norm": [0.6, 0.61], "layer_norm": [0.5, 0.52], "none": [0.3, 0.31]})
    text = write_report(write_run(tmp_path / "one", records)).read_text()
    assert "## Across backbones" not in text and "Friedman test (" not in text
    assert "Friedman test not run" not in text
    records += grid({"group_norm": [0.7, 0.72]}, "wrn16_4")
    text = write_report(write_run(tmp_path / "two", records)).read_text()
    assert "Friedman test not run: needs >= 3 norms with ok runs on >= 2 common backbones" in text
    assert "| `group_norm` | 1.00           | 2           |" in text


def test_tied_accuracies_share_rank_one_with_no_significant_difference(tmp_path: Path) -> None:
    records = grid({"group_norm": [0.6, 0.61, 0.62], "layer_norm": [0.6, 0.61, 0.62]})
    text = write_report(write_run(tmp_path, records)).read_text()
    row = table_row(text, "resnet9", "layer_norm")
    assert row[0] == "a" and table_row(text, "resnet9", "group_norm")[0] == "a"
    assert row[3] == "+0.00 [+0.00, +0.00]"
    assert row[4] == "1.0000 (paired)"
    assert row[5] == "no significant difference"


def test_missing_cells_of_the_suite_grid_are_listed(tmp_path: Path) -> None:
    records = grid({"group_norm": [0.6, 0.61]})
    cells = [
        {"run_key": f"resnet9|{n}|{s}", "backbone": "resnet9", "norm": n, "seed": s}
        for n in ("group_norm", "layer_norm")
        for s in range(2)
    ]
    text = write_report(write_run(tmp_path, records, {"cells": cells})).read_text()
    assert "2 of 4 cells of `suite.json` have no record" in text
    missing = text.split("## Missing cells")[1]
    assert "| `resnet9`  | `layer_norm` | 1      | resnet9\\|layer_norm\\|1 |" in missing
    assert table_row(text, "resnet9", "layer_norm")[2] == "no ok run (no record yet)"


def test_bad_lines_are_listed_by_line_number_relative_to_the_run_dir(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, grid({"group_norm": [0.6, 0.61]}))
    with (run_dir / "records.jsonl").open("a") as f:
        f.write('{"run_key": "x", "sta')
    text = write_report(run_dir).read_text()
    assert "- records.jsonl:3: truncated or invalid JSON (" in text
    assert str(tmp_path) not in text


def test_baseline_and_alpha_arguments_override_the_suite(tmp_path: Path) -> None:
    records = grid({"group_norm": [0.6, 0.61, 0.62], "layer_norm": [0.55, 0.57, 0.56]})
    run_dir = write_run(tmp_path, records, {"report": {"baseline": "layer_norm", "alpha": 0.1}})
    from_suite = write_report(run_dir).read_text()
    assert "**Baseline:** `layer_norm`; **α** = 0.1" in from_suite
    overridden = write_report(run_dir, baseline="group_norm", alpha=0.01).read_text()
    assert "**Baseline:** `group_norm`; **α** = 0.01" in overridden


def with_params(records: list[dict]) -> list[dict]:
    """The records as the runner writes them: each with its norm's name and resolved params."""
    params = {
        "group_norm": {"eps": 1e-05, "group_size": None, "num_groups": 16},
        "group_norm[num_groups=8]": {"eps": 1e-05, "group_size": None, "num_groups": 8},
        "layer_norm": {"eps": 1e-05, "over": "chw"},
    }
    return [
        {**r, "norm_name": r["norm"].split("[")[0], "norm_params": params[r["norm"]]}
        for r in records
    ]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("group_norm[num_groups=16]", "group_norm"),
        ("group_norm[eps=1e-5,num_groups=16]", "group_norm"),
        ("group_norm [ num_groups = 8 ]", "group_norm[num_groups=8]"),
        ("group_norm[num_groups=8,eps=0.00001]", "group_norm[num_groups=8]"),
        ("layer_norm", "layer_norm"),
    ],
    ids=str,
)
def test_baseline_argument_is_matched_to_the_records_canonical_spec(
    tmp_path: Path, given: str, expected: str
) -> None:
    accs = [0.6, 0.61, 0.62]
    records = grid({"group_norm": accs, "group_norm[num_groups=8]": accs, "layer_norm": accs})
    text = write_report(write_run(tmp_path, with_params(records)), baseline=given).read_text()
    assert f"**Baseline:** `{expected}`" in text
    assert table_row(text, "resnet9", expected)[5] == "baseline"


@pytest.mark.parametrize("given", ["group_norm[num_groups=4]", "gruop_norm", "scale_norm"])
def test_baseline_argument_naming_no_norm_of_the_records_is_a_config_error(
    tmp_path: Path, given: str
) -> None:
    records = with_params(grid({"group_norm": [0.6, 0.61], "layer_norm": [0.55, 0.57]}))
    with pytest.raises(ConfigError) as err:
        write_report(write_run(tmp_path, records), baseline=given)
    message = str(err.value)
    assert "matches no norm of the records" in message and "\n" not in message
    assert "allowed: group_norm, layer_norm" in message
    if given == "gruop_norm":
        assert "did you mean 'group_norm'?" in message


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.7, 1.0, -0.5, True], ids=str)
def test_alpha_outside_zero_one_half_is_a_config_error(tmp_path: Path, alpha: float) -> None:
    run_dir = write_run(tmp_path, grid({"group_norm": [0.6]}))
    with pytest.raises(ConfigError, match="alpha"):
        write_report(run_dir, alpha=alpha)


def test_epsilon_spent_above_target_is_flagged(tmp_path: Path) -> None:
    records = grid({"group_norm": [0.6, 0.61]})
    records[1]["epsilon_spent"] = 8.5
    text = write_report(write_run(tmp_path, records)).read_text()
    assert column(text, "resnet9", "group_norm", "ε spent") == "8.50 (over target 8!)"


def test_missing_records_file_raises_records_error(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match=r"records\.jsonl"):
        write_report(tmp_path)


def test_no_ok_record_skips_figures_and_says_so(tmp_path: Path, figure_calls: list) -> None:
    records = [make_record("resnet9", "group_norm", 0, None, "skipped")]
    text = write_report(write_run(tmp_path, records)).read_text()
    assert "No figures: there is no ok run." in text
    assert "![" not in text
    assert figure_calls == []


def test_figures_are_written_as_png_and_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(figures, "write_figures", RENDER_FIGURES)
    records = grid({"group_norm": [0.6, 0.61], "layer_norm": [0.55]})
    records += grid({"group_norm": [0.7, 0.72]}, "wrn16_4")
    text = write_report(write_run(tmp_path, records)).read_text()
    for name in figures.FIGURE_FILES:
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"]({name})" in text


def test_swept_grid_keys_get_their_own_tables(tmp_path: Path) -> None:
    """A suite sweeping training.lr has two ok runs per (backbone, norm, seed): each lr is its
    own table, and neither run is dropped."""
    records = [
        make_record(
            "resnet9",
            norm,
            seed,
            acc + (0.1 if lr == 1.0 else 0.0),
            overrides={"training.lr": lr},
            run_key=f"{norm}|{seed}|{lr}",
        )
        for lr in (0.5, 1.0)
        for norm, accs in {"group_norm": [0.50, 0.52], "scale_norm": [0.55, 0.56]}.items()
        for seed, acc in enumerate(accs)
    ]
    text = write_report(write_run(tmp_path, records)).read_text()
    assert "## Problems in the records" not in text
    assert table_row(text, "resnet9 [training.lr=0.5]", "group_norm")[2].startswith("51.00 ±")
    assert table_row(text, "resnet9 [training.lr=1.0]", "group_norm")[2].startswith("61.00 ±")
    assert table_row(text, "resnet9 [training.lr=1.0]", "scale_norm")[2].startswith("65.50 ±")


def test_no_significant_difference_comes_with_the_difference_that_could_not_be_seen(
    tmp_path: Path,
) -> None:
    records = grid(
        {
            "group_norm": [0.60, 0.62, 0.61, 0.63],
            "layer_norm": [0.605, 0.615, 0.62, 0.625],
            "scale_norm": [0.62, 0.63, 0.625, 0.645],
        }
    )
    text = write_report(write_run(tmp_path, records)).read_text()
    assert table_row(text, "resnet9", "layer_norm")[5] == "no significant difference"
    detectable = column(text, "resnet9", "layer_norm", "detectable Δ")
    assert float(detectable) > 0
    assert column(text, "resnet9", "group_norm", "detectable Δ") == "—"
    assert "at α/m = 0.05/2 = 0.025" in text
    assert "**differences below " in text and " pp could not be seen**" in text
    assert "Seeing 1 pp with 80% power would need " in text


def test_two_wild_seeds_say_no_difference_could_be_seen_not_a_detectable_number(
    tmp_path: Path,
) -> None:
    # Paired differences +30 and -30 pp: se 30 pp on 1 df puts 80% power far above 100 pp.
    records = grid({"group_norm": [0.30, 0.60], "layer_norm": [0.60, 0.30]})
    text = write_report(write_run(tmp_path, records)).read_text()
    assert column(text, "resnet9", "layer_norm", "detectable Δ") == "> 100"
    assert "**no difference an accuracy can have would be found with 80% power**" in text
    assert "could not be seen**" not in text


def swept(key: str, accs_by_value: dict, wall_s: dict | None = None) -> list[dict]:
    """Records of one backbone sweeping ``key``: ``accs_by_value[value][norm]`` per seed."""
    return [
        make_record(
            "resnet9",
            norm,
            seed,
            acc,
            overrides={key: value},
            run_key=f"{norm}|{seed}|{value}",
            wall_s=(wall_s or {}).get(value, 10.0),
        )
        for value, norms in accs_by_value.items()
        for norm, accs in norms.items()
        for seed, acc in enumerate(accs)
    ]


NORM_ACCS = {
    "group_norm": [0.60, 0.61, 0.60],
    "layer_norm": [0.55, 0.56, 0.55],
    "scale_norm": [0.65, 0.64, 0.66],
    "none": [0.40, 0.41, 0.40],
}


def agreement_row(text: str) -> list[str]:
    section = text.split("\n## Agreement across ")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == 1
    return [c.strip() for c in rows[0].strip().strip("|").split("|")]


def test_a_swept_budget_gets_kendall_tau_in_numeric_order_naming_the_cheaper(
    tmp_path: Path,
) -> None:
    dearer = {n: [a + 0.1 for a in accs] for n, accs in NORM_ACCS.items()}
    records = swept("training.steps", {400: dearer, 100: NORM_ACCS}, wall_s={100: 12.0, 400: 48.0})
    row = agreement_row(write_report(write_run(tmp_path, records)).read_text())
    assert row[:4] == ["`resnet9`", "`100`, `400`", "12, 48", "4"]
    assert row[4] == "+1.00 [+1.00, +1.00]"
    assert (
        row[5] == "The ranking at `100` (the cheaper) predicts the one at `400` (interval above 0)."
    )


def test_a_swept_mapping_value_is_named_as_in_the_table_titles(tmp_path: Path) -> None:
    # A pruning setting is a mapping: the row names it as the tables do, not as a Python dict.
    prune = {"method": "random", "rate": 0.5}
    records = [
        make_record(
            "resnet9",
            norm,
            seed,
            acc - (0.02 if value else 0.0),
            overrides={"training.pre_prune": value},
            run_key=f"{norm}|{seed}|{bool(value)}",
        )
        for value in (None, prune)
        for norm, accs in NORM_ACCS.items()
        for seed, acc in enumerate(accs)
    ]
    row = agreement_row(write_report(write_run(tmp_path, records)).read_text())
    assert row[1] == "`none`, `random:0.5`"


def test_a_reversed_ranking_reads_as_reversed_and_dearer_by_wall_time(tmp_path: Path) -> None:
    reversed_accs = {n: [1.0 - a for a in accs] for n, accs in NORM_ACCS.items()}
    # The larger width ran faster here: "cheaper" follows the wall-clock time, not the value.
    records = swept(
        "backbone_width", {0.5: NORM_ACCS, 1.0: reversed_accs}, wall_s={0.5: 30.0, 1.0: 10.0}
    )
    row = agreement_row(write_report(write_run(tmp_path, records)).read_text())
    assert row[1:3] == ["`0.5`, `1.0`", "30, 10"]  # numeric order, whatever the cost
    assert row[4].startswith("-1.00")
    assert row[5] == "The ranking at `1.0` (the cheaper) is reversed at `0.5` (interval below 0)."


def test_rank_agreement_counts_failed_runs_at_chance_as_the_tables_do(tmp_path: Path) -> None:
    """Intention to treat is primary: a norm whose runs fail at one value ranks by its runs at
    chance there, not by the one run that survived (which would keep the order unchanged)."""
    dearer = {n: [a + 0.1 for a in accs] for n, accs in NORM_ACCS.items()}
    records = [
        {**r, "num_classes": 10}
        for r in swept("training.steps", {100: NORM_ACCS, 400: dearer})
        if not (
            r["norm"] == "scale_norm" and r["seed"] > 0 and r["overrides"]["training.steps"] == 400
        )
    ]
    records += [
        make_record(
            "resnet9",
            "scale_norm",
            seed,
            None,
            status="failed",
            overrides={"training.steps": 400},
            run_key=f"scale_norm|{seed}|400",
            num_classes=10,
        )
        for seed in (1, 2)
    ]
    row = agreement_row(write_report(write_run(tmp_path, records)).read_text())
    # At 400 the failures put scale_norm (first at 100) last: 3 of 6 pairs swap.
    assert row[3] == "4" and row[4].startswith("+0.00"), row


def test_a_sweep_with_two_norms_says_why_tau_was_not_computed(tmp_path: Path) -> None:
    two = {n: NORM_ACCS[n] for n in ("group_norm", "layer_norm")}
    records = swept("training.lr", {0.5: two, 1.0: two})
    text = write_report(write_run(tmp_path, records)).read_text()
    section = text.split("\n## Agreement across `training.lr`\n")[1].split("\n## ")[0]
    assert section.strip() == (
        "Kendall's τ-b was computed for no pair of values of `training.lr`: needs >= 3 norms "
        "with ok runs at both values (have 2)."
    )


def test_a_swept_epsilon_gives_a_privacy_utility_table_and_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    curves: list = []
    monkeypatch.setattr(
        figures, "write_privacy_utility", lambda d, points, **_: curves.append(points)
    )
    low = {n: [a - 0.1 for a in accs] for n, accs in NORM_ACCS.items()}
    low["none"] = [0.3]  # one seed: no interval
    records = swept("privacy.epsilon", {8.0: NORM_ACCS, 1.0: low})
    text = write_report(write_run(tmp_path, records)).read_text()
    section = text.split("## Privacy–utility")[1].split("\n## ")[0]
    assert f"![privacy-utility]({figures.PRIVACY_UTILITY_PNG})" in section
    assert "| norm         | ε = 1              | ε = 8              |" in section
    assert "| `scale_norm` | 55.00 ± 2.48 (n=3) | 65.00 ± 2.48 (n=3) |" in section
    assert "| `none`       | 30.00 (n=1)        | 40.33 ± 1.43 (n=3) |" in section
    # scale_norm: +10 pp over 3 doublings; residuals 0, -1, +1 pp at each eps, so s^2 = 4e-4 / 4,
    # se = sqrt(1e-4 / 13.5) = 0.272 pp and t(0.975, 4) = 2.776 gives +-0.76 pp.
    [slope_row] = [line for line in section.splitlines() if line.startswith("| `scale_norm` | +")]
    assert "| +3.33 [+2.58, +4.09] " in slope_row and "| rises with ε |" in slope_row
    [points] = curves
    assert {(p.norm, p.epsilon) for p in points} == {(n, e) for n in NORM_ACCS for e in (1.0, 8.0)}
    assert (
        "## Privacy–utility"
        not in write_report(write_run(tmp_path / "plain", grid(NORM_ACCS))).read_text()
    )


def test_a_swept_epsilon_is_named_in_the_header_not_the_suites_default(tmp_path: Path) -> None:
    records = swept("privacy.epsilon", {8.0: NORM_ACCS, 1.0: NORM_ACCS, 16.0: NORM_ACCS})
    suite = {
        "name": "t",
        "privacy": {"epsilon": 8.0, "delta": 1e-5, "accountant": "prv"},
        "grid": {"privacy.epsilon": [8.0, 1.0, 16, 16.0]},  # 16 and 16.0: one budget
    }
    text = write_report(write_run(tmp_path, records, suite)).read_text()
    assert (
        "- **Privacy target:** (ε = 1, 8, 16 (swept by the grid), δ = 1e-05), accountant prv"
        in text
    )
    suite["grid"] = {}
    text = write_report(write_run(tmp_path / "fixed", records, suite)).read_text()
    assert "- **Privacy target:** (ε = 8, δ = 1e-05), accountant prv" in text


def test_each_swept_value_is_compared_with_the_grids_first_value_norm_by_norm(
    tmp_path: Path,
) -> None:
    short = {
        "group_norm": [0.50, 0.50, 0.51],  # 10 pp below its 120-step runs, seed by seed
        "layer_norm": [0.56, 0.55, 0.55],  # seeds 0 and 1 swapped: no change on average
        "none": [0.30, 0.31, 0.30],  # no run at the reference: named, not compared
    }
    long = {"group_norm": [0.60, 0.61, 0.60], "layer_norm": [0.55, 0.56, 0.55]}
    records = swept("training.steps", {40: short, 120: long})
    # The grid lists 200 first, which did not run, then 120: 120 is the reference although 40
    # sorts first.
    suite = {"name": "t", "grid": {"training.steps": [200, 120, 40]}}
    text = write_report(write_run(tmp_path, records, suite)).read_text()
    section = text.split("## Effect of each swept value")[1].split("\n## ")[0]
    assert "### `training.steps` on `resnet9`, against `120`" in section
    rows = {
        cells[0]: cells
        for line in section.splitlines()
        if line.startswith("| `")
        for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]
    }
    gn, ln = rows["`group_norm`"], rows["`layer_norm`"]
    # d = (-0.10, -0.11, -0.09): mean -10 pp, sd 1 pp, t(0.975, 2) = 4.303 -> ±2.48 pp; raw
    # p = 0.0033, Holm over 2 tests -> 0.0066.
    assert gn[1:4] == ["`40`", "50.33 ± 1.43 (n=3)", "60.33 ± 1.43 (n=3)"]
    assert gn[4:7] == ["-10.00 [-12.48, -7.52]", "0.0066", "lower"]
    assert ln[4:7] == ["+0.00 [-2.48, +2.48]", "1.0000", "no significant difference"]
    # se 1 pp / sqrt(3) on 2 df, at Holm's first threshold 0.05 / 2 (two tests in the table).
    assert ln[7] == f"{100 * stats.detectable_difference(0.01 / math.sqrt(3), 2, 0.025):.2f}"
    assert "`none`" not in rows
    assert "Not compared (no ok run at `120`): `none` at `40`." in section
    plain = write_report(write_run(tmp_path / "plain", grid(NORM_ACCS))).read_text()
    assert "## Effect of each swept value" not in plain


LONG_NORM = "dp_batch_norm[momentum=0.9,stats=private_dp,stats_epsilon_fraction=0.05]"
LONG_BACKBONE = "resnet9[width=0.125] [data.augmult=16, privacy.epsilon=8, training.steps=1600]"


def test_every_figure_keeps_its_labels_inside_the_image() -> None:
    points = [
        figures.FigurePoint(LONG_BACKBONE, LONG_NORM, 44.0, 5.0, 1500.0),
        figures.FigurePoint(LONG_BACKBONE, "none", 52.0, None, 1900.0),
        figures.FigurePoint("wrn16_4", "group_norm", 60.0, 2.0, 800.0),
    ]
    curve = [
        figures.CurvePoint(panel, norm, eps, 40.0 + eps, None if norm == "none" else 1.5)
        for panel in ("resnet9", LONG_BACKBONE, "wrn16_4")
        for norm in (LONG_NORM, "group_norm", "none")
        for eps in (1.0, 2.0, 8.0)
    ]
    context = FigureContext("t", (LONG_BACKBONE,), (8.0,), (1e-5,), (1600,), 10)
    drawn = {
        "accuracy": figures.accuracy_figure(points, context),
        "throughput": figures.throughput_figure(points, context),
        "privacy-utility": figures.privacy_utility_figure(curve, context),
    }
    for name, fig in drawn.items():
        assert figures.overflow_in(fig) == 0.0, name


def test_the_header_names_each_platform_and_warns_when_there_are_two(tmp_path: Path) -> None:
    def on(platform: str | None, seed: int) -> dict:
        provenance = {"torch": "2.6.0", "git_commit": "abc", "platform": platform}
        return make_record("resnet9", "group_norm", seed, 0.5, provenance=provenance)

    def hardware(records: list[dict], name: str) -> str:
        text = write_report(write_run(tmp_path / name, records)).read_text()
        return next(line for line in text.splitlines() if line.startswith("- **Hardware:**"))

    one = hardware([on("Linux-a", 0), on("Linux-a", 1)], "one")
    assert one == "- **Hardware:** cpu (2 threads), on `Linux-a` (2 records)"
    two = hardware([on("Linux-a", 0), on("Linux-b", 1), on(None, 2)], "two")
    assert "on `Linux-a` (1 record), `Linux-b` (1 record), platform not recorded (1 record)" in two
    assert "**2 platforms**" in two
    # Records from before the field existed add nothing.
    assert hardware([on(None, 0)], "old") == "- **Hardware:** cpu (2 threads)"


def test_an_accuracy_interval_stops_at_0_and_100_and_the_panels_share_one_axis() -> None:
    # Two seeds far apart give a t-interval beyond what an accuracy can be.
    points = [
        figures.FigurePoint("resnet9 [a]", "group_norm", 12.0, 27.0, 1000.0),
        figures.FigurePoint("resnet9 [a]", "scale_norm", 95.0, 10.0, 1000.0),
        figures.FigurePoint("resnet9 [b]", "group_norm", 40.0, 2.0, 1000.0),
    ]
    fig = figures.accuracy_figure(points, FigureContext())
    top, bottom = fig.axes
    bars = [seg for coll in top.collections for seg in coll.get_segments()]
    assert sorted((round(s[0][0], 6), round(s[1][0], 6)) for s in bars) == [
        (0.0, 39.0),
        (85.0, 100.0),
    ]
    assert "interval cut at the axis edge" in bottom.get_xlabel()
    assert top.get_xlim() == bottom.get_xlim()
    inside = figures.accuracy_figure(points[2:], FigureContext())
    assert "cut at" not in inside.axes[0].get_xlabel()


def test_the_privacy_section_says_what_each_norm_reads_and_what_is_charged(tmp_path: Path) -> None:
    charge = {
        "description": "dp_batch_norm statistics: 8 Gaussian releases",
        "noise_multiplier": 20.0,
        "sample_rate": 0.01,
        "steps": 8,
    }
    free = {"norm_dp_status": "per-sample", "norm_dp_note": "reads nothing across examples"}
    paid = {
        "norm_dp_status": "budget-charged",
        "norm_dp_note": "DP statistics of the private set, charged",
        "privacy_charges": [charge],
    }
    masks = {"sparsity": {"reads_private_data": False}}
    records = [
        *(make_record("resnet9", "group_norm", s, 0.5, **free, **masks) for s in range(2)),
        *(make_record("resnet9", "dp_batch_norm", s, 0.4, **paid) for s in range(2)),
    ]
    text = write_report(write_run(tmp_path, records)).read_text(encoding="utf-8")
    section = text.split("## How each norm is private")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if "| `" in line}
    assert "per-sample" in rows["`group_norm`"] and rows["`group_norm`"].rstrip(" |").endswith(
        "none"
    )
    assert "budget-charged" in rows["`dp_batch_norm`"]
    assert "dp_batch_norm statistics: 8 Gaussian releases" in rows["`dp_batch_norm`"]
    bare = {k: v for k, v in charge.items() if k != "description"}
    records = [
        make_record("resnet9", "dp_batch_norm", s, 0.4, **{**paid, "privacy_charges": [bare]})
        for s in range(2)
    ]
    text = write_report(write_run(tmp_path / "bare", records)).read_text(encoding="utf-8")
    assert "σ = 20.0, q = 0.01, 8 releases" in text.split("## How each norm is private")[1]
    assert "2 runs): none of them read private data" in section
    # records made before the DP status was recorded: no section rather than a wrong one
    old = [make_record("resnet9", "group_norm", s, 0.5) for s in range(2)]
    text = write_report(write_run(tmp_path / "old", old)).read_text(encoding="utf-8")
    assert "How each norm is private" not in text
