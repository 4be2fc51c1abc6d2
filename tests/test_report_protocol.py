"""The leaderboard under the declared protocol: failures counted at chance in the primary table,
collapsed runs flagged, each table's family named, sweeps as one blocked model."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.errors import ConfigError
from bench.results import figures
from bench.results.leaderboard import leaderboard_text
from tests.report_records import dp_and_tan_run, make_record, write_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figures, "write_figures", lambda run_dir, points, **_: None)


def table_rows(section: str, first_header: str) -> dict[str, list[str]]:
    """Norm -> cells of the first Markdown table in ``section`` whose header starts with
    ``first_header``."""
    table = section.split(f"| {first_header}", 1)[1].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[next(c for c in cells if c.startswith("`")).strip("`")] = cells
    return rows


def backbone_text(text: str, block: str) -> str:
    return text.split(f"## Backbone `{block}`")[1].split("\n## ")[0]


def three_seeds(norm: str, acc: float, **extra: object) -> list[dict]:
    return [make_record("r9", norm, s, acc + 0.01 * s, num_classes=10, **extra) for s in range(3)]


def test_a_failed_run_changes_the_primary_mean_and_n(tmp_path: Path) -> None:
    records = three_seeds("group_norm", 0.5)
    records += [make_record("r9", "shaky", s, 0.7, num_classes=10) for s in (0, 1)]
    records += [make_record("r9", "shaky", 2, None, status="failed")]
    text = backbone_text(leaderboard_text(write_run(tmp_path, records)), "r9")
    primary = table_rows(text, "letters")["shaky"]
    assert primary[2].startswith("50.00 ± ") and primary[2].endswith("(n=3)")  # (.7+.7+.1)/3
    assert primary[11] == "1/3 (0.8–90.6%)"
    per_protocol = table_rows(text.split("Per-protocol sensitivity")[1], "norm")["shaky"]
    assert per_protocol[1:3] == ["2 / 3", "70.00 ± 0.00 (n=2)"]


def test_a_run_that_collapses_to_chance_is_flagged_and_counted_as_a_failure(
    tmp_path: Path,
) -> None:
    records = three_seeds("group_norm", 0.5)
    records += [make_record("r9", "fragile", s, 0.6, num_classes=10) for s in (0, 1)]
    records += [make_record("r9", "fragile", 2, 0.1002, num_classes=10)]
    run = write_run(tmp_path / "a", records)
    text = backbone_text(leaderboard_text(run), "r9")
    assert "**Collapsed**" in text and "`fragile` seed 2" in text
    assert table_rows(text, "letters")["fragile"][11].startswith("1/3 ")
    # Declared off (collapse_pp 0), the same run is an ordinary ok run.
    off = write_run(tmp_path / "b", records, {"report": {"collapse_pp": 0}})
    text = backbone_text(leaderboard_text(off), "r9")
    assert "**Collapsed**" not in text and table_rows(text, "letters")["fragile"][11].startswith(
        "0/3"
    )


def stepped_records() -> list[dict]:
    records = []
    for steps in (40, 120):
        for norm, acc in (("group_norm", 0.4), ("other", 0.45)):
            for s in range(3):
                records.append(
                    make_record(
                        "r9",
                        norm,
                        s,
                        acc + steps / 1000 + 0.003 * s,
                        num_classes=10,
                        overrides={"training.steps": steps},
                        run_key=f"{norm}|{s}|{steps}",
                    )
                )
    return records


GRID = {
    "backbone": ["r9"],
    "norm": ["group_norm", "other"],
    "seed": [0, 1, 2],
    "training.steps": [40, 120],
}


@pytest.mark.parametrize(
    ("report", "primary", "exploratory", "declared"),
    [({}, "120", "40", False), ({"primary": "training.steps=40"}, "40", "120", True)],
)
def test_each_table_names_its_family_and_the_declared_one_is_primary(
    tmp_path: Path, report: dict, primary: str, exploratory: str, declared: bool
) -> None:
    suite = {"grid": GRID, "report": report}
    text = leaderboard_text(write_run(tmp_path, stepped_records(), suite))
    first = backbone_text(text, f"r9 [training.steps={primary}]")
    second = backbone_text(text, f"r9 [training.steps={exploratory}]")
    assert "**Family: primary** — the 1 comparison(s) with `group_norm`" in first
    assert f"(training.steps={primary}; " in first
    assert ("declared by `report.primary`" in first) == declared
    assert "**Family: exploratory**" in second and "**Family: primary**" not in second


def test_a_primary_point_the_grid_does_not_have_is_one_line_exit_2(tmp_path: Path) -> None:
    run = write_run(
        tmp_path, stepped_records(), {"grid": GRID, "report": {"primary": "training.steps=80"}}
    )
    with pytest.raises(ConfigError, match=r"report\.primary.*training\.steps=40\|120"):
        leaderboard_text(run)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "report", str(run)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "report.primary" in done.stderr


def test_blocked_model_finds_the_planted_slope_and_interaction_the_per_cell_tests_miss(
    tmp_path: Path,
) -> None:
    """Two seeds with large offsets; `steep` gains 0.6 pp per doubling of epsilon, the baseline
    is flat. The per-value paired tests (1 df each) find nothing; the blocked model finds the
    slope and its difference from the baseline's."""
    rng = np.random.default_rng(1)
    records = []
    for eps in (1.0, 2.0, 4.0, 8.0):
        for norm, gain in (("group_norm", 0.0), ("steep", 0.006)):
            for seed, offset in ((0, -0.03), (1, 0.03)):
                acc = 0.5 + offset + gain * math.log2(eps) + rng.normal(0, 0.001)
                records.append(
                    make_record(
                        "r9",
                        norm,
                        seed,
                        acc,
                        num_classes=10,
                        overrides={"privacy.epsilon": eps},
                        run_key=f"{norm}|{seed}|{eps}",
                    )
                )
    grid = {
        "backbone": ["r9"],
        "norm": ["group_norm", "steep"],
        "seed": [0, 1],
        "privacy.epsilon": [1.0, 2.0, 4.0, 8.0],
    }
    text = leaderboard_text(write_run(tmp_path, records, {"grid": grid}))
    effects = text.split("## Effect of each swept value")[1].split("\n## ")[0]
    steep_rows = [line for line in effects.splitlines() if line.startswith("| `steep`")]
    assert len(steep_rows) == 3 and all("no significant difference" in r for r in steep_rows)
    blocked = text.split("## Swept keys as one blocked model")[1].split("\n## ")[0]
    trend = table_rows(blocked.split("Trend along")[1], "norm")["steep"]
    slope, p_slope, difference, p_difference = trend[1:5]
    assert slope.startswith("+0.6") and float(p_slope.lstrip("<")) < 0.01
    assert difference.startswith("+0.6") and float(p_difference.lstrip("<")) < 0.01


def test_a_tan_simulation_is_never_the_primary_family(tmp_path: Path) -> None:
    text = leaderboard_text(dp_and_tan_run(tmp_path))
    dp = backbone_text(text, "r9 [privacy.simulate_batch_size=none]")
    tan = backbone_text(text, "r9 [privacy.simulate_batch_size=16] [TAN simulation, not DP]")
    assert "**Family: primary**" in dp and "privacy.simulate_batch_size=none; " in dp
    assert "**Family: exploratory**" in tan


def test_the_primary_tables_of_two_backbones_are_one_holm_family(tmp_path: Path) -> None:
    """Each backbone's `better` holds alone (paired p 0.031 and 0.046) but not once the suite's
    two primary comparisons are Holm-corrected together (0.061): the tables, the summary and
    the findings say no significant difference, and name the joint family."""
    from scipy import stats

    from bench.results.findings.page import suite_families
    from bench.results.stats import holm

    base = [0.50, 0.52, 0.51, 0.53, 0.49]
    lifts = {"ra": [0.010, 0.030, 0.002, 0.020, 0.015], "rb": [0.012, 0.03, 0.0, 0.025, 0.01]}
    records = []
    for backbone, lift in lifts.items():
        for s, (b, d) in enumerate(zip(base, lift, strict=True)):
            records += [
                make_record(backbone, "group_norm", s, b, num_classes=10),
                make_record(backbone, "other", s, b + d, num_classes=10),
            ]
    raw = [
        stats.ttest_rel([b + d for b, d in zip(base, lift, strict=True)], base).pvalue
        for lift in lifts.values()
    ]
    assert all(p < 0.05 for p in raw) and min(holm(raw)) > 0.05
    suite = {
        "grid": {"backbone": ["ra", "rb"], "norm": ["group_norm", "other"], "seed": [0, 1, 2, 3, 4]}
    }
    run = write_run(tmp_path, records, suite)
    text = leaderboard_text(run)
    for backbone, other, p in (("ra", "rb", holm(raw)[0]), ("rb", "ra", holm(raw)[1])):
        section = backbone_text(text, backbone)
        row = table_rows(section, "letters")["other"]
        assert row[4].startswith(f"{p:.4f}") and row[5] == "no significant difference"
        assert (
            f"**Family: primary** — the 2 comparisons with `group_norm` in the 2 tables at the "
            f"primary grid point (this table's 1 and those of `{other}`)"
        ) in section
        assert "α/m = 0.05/2" in section
    summary = text.split("\n## ")[0]
    assert "over 2 comparisons: **no significant difference**" in summary
    families, _, _ = suite_families(run)
    (primary,) = [f for f in families if f.primary]
    assert primary.m == 2 and "on the primary tables `ra`, `rb`" in primary.name
    assert [m.subject for m in primary.members] == ["`other` on `ra`", "`other` on `rb`"]
    assert [m.direction for m in primary.members] == [0, 0]
    # One backbone alone: its own family, and `better`.
    alone = write_run(tmp_path / "one", [r for r in records if r["backbone"] == "ra"])
    section = backbone_text(leaderboard_text(alone), "ra")
    assert table_rows(section, "letters")["other"][5] == "better"


def test_the_per_protocol_sensitivity_of_a_joint_family_is_judged_in_it(tmp_path: Path) -> None:
    """A failure on one backbone shows its per-protocol sensitivity table; judged alone it said
    `better` (Holm over its own comparison, p 0.031) where the joint family says no
    significant difference (0.061), a difference that is the family's size, not the failure
    left out: it is judged in the joint family too, in the leaderboard and the findings (whose
    merged family names its tables' power lines, not one table's)."""
    from bench.results.findings.page import family_sentences, suite_families

    base = [0.50, 0.52, 0.51, 0.53, 0.49]
    lifts = {"ra": [0.010, 0.030, 0.002, 0.020, 0.015], "rb": [0.012, 0.03, 0.0, 0.025, 0.01]}
    records = [make_record("ra", "other", 5, None, status="failed", num_classes=10)]
    for backbone, lift in lifts.items():
        for s, (b, d) in enumerate(zip(base, lift, strict=True)):
            records += [
                make_record(backbone, "group_norm", s, b, num_classes=10),
                make_record(backbone, "other", s, b + d, num_classes=10),
            ]
    grid = {"backbone": ["ra", "rb"], "norm": ["group_norm", "other"], "seed": list(range(6))}
    run = write_run(tmp_path, records, {"grid": grid})
    section = backbone_text(leaderboard_text(run), "ra")
    assert table_rows(section, "letters")["other"][5] == "no significant difference"
    sensitivity = section.split("Per-protocol sensitivity")[1]
    assert "over the 2 comparisons of the joint primary family" in sensitivity
    assert table_rows(sensitivity, "norm")["other"][-1] == "no significant difference"
    families, _, _ = suite_families(run)
    (primary,) = [f for f in families if f.primary]
    assert not any("per-protocol" in note for m in primary.members for note in m.notes)
    (untold,) = family_sentences(primary, 0.05)
    assert "; the primary tables' power lines: `ra`: differences below " in untold
