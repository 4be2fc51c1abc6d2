"""The leaderboard reads top-down: summary first, tables in numeric order of their grid values,
no empty columns, the tuning grid and every run key at the end (issue 31, item 5)."""

from __future__ import annotations

from pathlib import Path

from bench.results.leaderboard import leaderboard_text
from bench.results.leaderboard.order import numeric_sorted
from tests.report_records import make_record, write_run

NORMS = {"group_norm": 0.50, "layer_norm": 0.56}


def finals(overrides: dict | None = None, **extra: object) -> list[dict]:
    """Two norms × 3 seeds of final runs at one grid point."""
    shown = "".join(f"|{k}={v}" for k, v in sorted((overrides or {}).items()))
    records = []
    for norm, acc in NORMS.items():
        for seed in range(3):
            record = make_record("r9", norm, seed, acc + 0.01 * seed, num_classes=10, **extra)
            record["run_key"] += shown
            record["overrides"] = dict(overrides or {})
            records.append(record)
    return records


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The header and rows of the first table whose first column is ``first_header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|--"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_the_first_lines_under_the_title_are_the_summary(tmp_path: Path) -> None:
    text = leaderboard_text(write_run(tmp_path, finals()))
    lines = text.splitlines()
    assert lines[0].startswith("# Leaderboard")
    summary = lines[2:7]
    assert [line.split("**")[1] for line in summary] == [
        "What ran:",
        "Primary result",
        "Not told apart:",
        "Cost:",
        "Reading order:",
    ]
    assert "2 norms × 3 seeds (0–2)" in summary[0] and "6 records (6 ok)" in summary[0]
    # The primary result: the best norm against the baseline, with its Δ, CI, test and verdict.
    # "Highest mean", not "most accurate": no test compares it with every other norm.
    assert "`layer_norm` has the highest mean accuracy, 57.00 ± " in summary[1]
    assert "most accurate" not in summary[1]
    assert "Δ = +6.00 [+6.00, +6.00] pp" in summary[1] and "(paired)" in summary[1]
    assert "**better**" in summary[1]
    assert lines[7] == ""
    # The statistics statement closes the page, under its own heading.
    assert text.index("## Methods") > text.index("## Backbone `r9`")
    assert "**Statistics**" not in text.split("## Backbone")[0]


def test_norms_not_told_apart_are_named_with_the_difference_that_could_be_seen(
    tmp_path: Path,
) -> None:
    records = finals()
    for r in records:  # layer_norm as good as the baseline, give or take a seed
        if r["norm"] == "layer_norm":
            r["test_acc"] = 0.5 + (0.02 if r["seed"] == 1 else -0.01 * r["seed"])
    apart = leaderboard_text(write_run(tmp_path, records)).splitlines()[4]
    assert apart.startswith("- **Not told apart:** no significant difference from `group_norm`")
    assert "`layer_norm`" in apart and "with 80% power" in apart


def test_tables_of_swept_values_sort_numerically_after_the_primary_one(tmp_path: Path) -> None:
    records = [r for eps in (8.0, 0.5, 16.0, 2.0) for r in finals({"privacy.epsilon": eps})]
    for eps in (16.0, 2.0):
        failed = make_record(
            "r9", "scale_norm", 0, None, "failed", overrides={"privacy.epsilon": eps}
        )
        failed["run_key"] += f"|{eps}"
        records.append(failed)
    suite = {
        "grid": {"privacy.epsilon": [0.5, 2.0, 8.0, 16.0]},
        "report": {"primary": "privacy.epsilon=16.0"},
    }
    text = leaderboard_text(write_run(tmp_path, records, suite))
    order = [
        line.split("=")[1].rstrip("]`")
        for line in text.splitlines()
        if line.startswith("## Backbone `r9 [privacy.epsilon=")
    ]
    assert order == ["16.0", "0.5", "2.0", "8.0"]  # text order would put 16 before 2
    failed = text.split("## Failed and skipped runs")[1].split("\n## ")[0]
    assert failed.index("privacy.epsilon=2.0]") < failed.index("privacy.epsilon=16.0]")


def test_numeric_order_of_grid_values() -> None:
    assert numeric_sorted(["training.steps=120", "training.steps=40"]) == [
        "training.steps=40",
        "training.steps=120",
    ]
    assert numeric_sorted(["8", "0.5", "none", "1e-05", "2"]) == ["1e-05", "0.5", "2", "8", "none"]


def test_columns_empty_in_every_row_are_left_out_with_why(tmp_path: Path) -> None:
    cpu = {
        "peak_mem_bytes": None,
        "nonprivate_throughput_img_s": None,
        "memory_measure": "cpu: no per-run tensor peak",
        "config": {"training": {"measure_nonprivate": False}},
    }
    text = leaderboard_text(write_run(tmp_path / "cpu", finals(**cpu)))
    headers = table_rows(text, "letters")[0]
    assert "peak memory (MiB)" not in headers and "DP/non-DP throughput" not in headers
    assert "throughput (img/s)" in headers and "p (Holm)" in headers
    note = next(line for line in text.splitlines() if line.startswith("Columns left out"))
    assert "training.measure_nonprivate: false" in note
    assert "cpu: no per-run tensor peak" in note
    # A column that holds a value in one row stays.
    records = finals(**cpu)
    records[0]["peak_mem_bytes"] = 2**20
    text = leaderboard_text(write_run(tmp_path / "one", records))
    assert "peak memory (MiB)" in table_rows(text, "letters")[0]
    assert "Columns left out, empty in every row: DP/non-DP throughput" in text


def tune_record(norm: str, lr: float, seed: int, val: float | None, status: str = "ok") -> dict:
    record = make_record("r9", norm, seed, None, status, stage="tune", tuned={"training.lr": lr})
    record["run_key"] = f"tune|{norm}|{lr}|{seed}"
    record["val_acc"] = val
    return record


def test_the_tuning_table_is_a_norm_by_candidate_grid(tmp_path: Path) -> None:
    tuning = [
        tune_record("group_norm", 10.0, 0, 0.20),
        tune_record("group_norm", 0.5, 0, 0.40),
        tune_record("group_norm", 0.5, 1, 0.44),
        tune_record("group_norm", 2.0, 0, 0.30),
        tune_record("layer_norm", 0.5, 0, 0.35),
        tune_record("layer_norm", 2.0, 0, 0.41),
        tune_record("layer_norm", 10.0, 0, None, "failed"),
    ]
    records = finals()
    for r in records:  # the final runs' selection, which the grid marks (not the best mean)
        r["tuned"] = {"training.lr": 0.5 if r["norm"] == "group_norm" else 10.0}
    text = leaderboard_text(write_run(tmp_path, tuning + records))
    tuning_part = text.split("## Tuning")[1]
    header, *rows = table_rows(tuning_part, "norm")
    assert header == ["norm", "training.lr=0.5", "training.lr=2.0", "training.lr=10.0"]
    assert [row[0] for row in rows] == ["`group_norm`", "`layer_norm`"]
    group, layer = rows
    assert group[1].startswith("**42.00 ± 2.83 (n=2)**")
    assert group[2] == "30.00 (n=1)" and group[3] == "20.00 (n=1)"
    assert layer[1] == "35.00 (n=1)" and layer[2] == "41.00 (n=1)"
    assert layer[3] == "**no score, 1 failed**"
    # Before any final run, the highest mean is marked as that, not as the selection.
    text = leaderboard_text(write_run(tmp_path / "tuning_only", tuning))
    _, group, layer = table_rows(text.split("## Tuning")[1], "norm")
    assert group[1] == "**42.00 ± 2.83 (n=2)** *(highest mean)*"
    assert layer[2] == "**41.00 (n=1)** *(highest mean)*"


def test_the_records_table_lists_every_run_key(tmp_path: Path) -> None:
    records = [*finals(), tune_record("group_norm", 0.5, 0, 0.4)]
    records.append(make_record("r9", "scale_norm", 0, None, "failed"))
    for r in records:  # run keys are hex digests; these are readable, without table pipes
        r["run_key"] = r["run_key"].replace("|", "-")
    text = leaderboard_text(write_run(tmp_path, records))
    listed = text.split("\n## Records\n")[1]
    rows = table_rows(listed, "run key")[1:]
    assert sorted(row[0].strip("`") for row in rows) == sorted(r["run_key"] for r in records)
    assert rows[-1][1] == "tune"  # final runs first
    assert text.rstrip().endswith("</details>")
