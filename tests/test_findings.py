"""The findings page: generated from the leaderboards' tested claims, rebuilt byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.results.findings import FINDINGS_FILE, findings_text, write_findings
from bench.results.findings.page import suite_dirs, suite_families
from bench.results.leaderboard.markdown import interval_text, pvalue_text
from tests.report_records import dp_and_tan_run, make_record, write_run

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"


def test_the_committed_findings_page_rebuilds_byte_for_byte() -> None:
    """A change to the records or the analyses that moves a claim must regenerate the page in
    the same commit (`python -m bench findings reports/`)."""
    committed = (REPORTS / FINDINGS_FILE).read_text(encoding="utf-8")
    assert findings_text(REPORTS) == committed


def test_every_tested_claim_carries_its_leaderboards_numbers() -> None:
    """The page reads the families the leaderboards print; each tested member's interval and
    Holm p stand on one row of its suite's committed leaderboard (a p such as 1.0000 alone is
    found anywhere), so the two cannot drift apart."""
    for run_dir in suite_dirs(REPORTS):
        rows = (run_dir / "leaderboard.md").read_text(encoding="utf-8").splitlines()
        families, _, _ = suite_families(run_dir)
        tested = [m for f in families for m in f.members if m.p_holm is not None]
        assert tested, run_dir.name
        for member in tested:
            assert member.half_width is not None, (run_dir.name, member.subject)
            effect = interval_text(member.estimate, member.half_width)
            p = f"| {pvalue_text(member.p_holm)}"
            assert any(effect in row and p in row.split(effect, 1)[1] for row in rows), (
                run_dir.name,
                member.subject,
                effect,
                p,
            )


def _steps_suite(tmp_path: Path) -> Path:
    """A suite at 40 and 120 steps (120 primary): `good` clearly above the baseline at both,
    `same` within its noise."""
    offsets = {"group_norm": (0.0, 0.02, 0.01), "good": (0.10, 0.13, 0.11)}
    offsets["same"] = (0.01, 0.0, 0.03)
    records = [
        make_record(
            "r9",
            norm,
            seed,
            0.4 + steps / 1000 + offset[seed],
            num_classes=10,
            overrides={"training.steps": steps},
            run_key=f"{norm}|{seed}|{steps}",
        )
        for steps in (40, 120)
        for norm, offset in offsets.items()
        for seed in range(3)
    ]
    grid = {"backbone": ["r9"], "norm": sorted(offsets), "seed": [0, 1, 2]}
    grid["training.steps"] = [40, 120]
    suite = {"grid": grid, "report": {"baseline": "group_norm"}, "data": {"dataset": "toy"}}
    return write_run(tmp_path / "reports" / "steps", records, suite)


def _section(text: str, heading: str) -> list[str]:
    """The bullet lines under a ``###`` heading."""
    body = text.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    return [line for line in body.splitlines() if line.startswith("- ")]


def test_a_significant_primary_comparison_is_a_claim_with_interval_test_and_family(
    tmp_path: Path,
) -> None:
    run_dir = _steps_suite(tmp_path)
    text = findings_text(run_dir.parent)
    assert "## [steps](steps/leaderboard.md)" in text
    primary = _section(text, "Primary claims")
    claims = [line for line in primary if line.startswith("- `good` is more accurate")]
    assert len(claims) == 1
    claim = claims[0]
    assert "+10.33 pp, 95% CI [" in claim  # mean of +.10, +.11, +.10
    assert "paired t-test, 3 seeds" in claim
    family = 'in the primary family "`r9 [training.steps=120]`, every norm against `group_norm`"'
    assert family in claim
    assert "(m = 2; intention to treat)" in claim
    assert "Holm p = " in claim


def test_a_non_significant_comparison_is_only_in_the_not_told_apart_sentence(
    tmp_path: Path,
) -> None:
    text = findings_text(_steps_suite(tmp_path).parent)
    primary = _section(text, "Primary claims")
    assert not any(line.startswith("- `same`") for line in primary)
    untold = [line for line in primary if line.startswith("- Not told apart in the primary")]
    assert len(untold) == 1
    assert "`same` (+0.33 pp, 95% CI [" in untold[0]
    assert "detectable " in untold[0].split("`same`")[1]
    assert "by TOST" in untold[0]
    assert "the table's power line: differences below " in untold[0]
    assert "`good`" not in untold[0]


def test_exploratory_families_are_labelled_with_their_name_and_size(tmp_path: Path) -> None:
    text = findings_text(_steps_suite(tmp_path).parent)
    exploratory = _section(text, "Exploratory")
    assert exploratory
    assert all(line.startswith("- Exploratory: ") for line in exploratory)
    at_40 = [line for line in exploratory if 'family "`r9 [training.steps=40]`' in line]
    assert any(line.startswith("- Exploratory: `good` is more accurate") for line in at_40)
    assert all("(m = 2; intention to treat)" in line for line in at_40)
    blocked = [line for line in exploratory if 'family "blocked model, `training.steps`' in line]
    assert blocked and all("(m = " in line for line in blocked)
    # 40 -> 120 steps adds 8 pp to every norm: each norm's change is a claim of the effect family
    effect = [line for line in exploratory if 'family "effect of `training.steps`' in line]
    assert sum("is more accurate than at `40`" in line for line in effect) == 3
    assert all("(m = 3; ok runs only)" in line for line in effect)


def test_the_page_is_deterministic_and_links_relative_to_where_it_is_written(
    tmp_path: Path,
) -> None:
    run_dir = _steps_suite(tmp_path)
    path = write_findings(run_dir.parent)
    assert path == run_dir.parent / FINDINGS_FILE
    assert path.read_text(encoding="utf-8") == findings_text(run_dir.parent)
    elsewhere = tmp_path / "docs" / "findings.md"
    other = findings_text(run_dir.parent, elsewhere)
    assert "## [steps](../reports/steps/leaderboard.md)" in other
    assert str(tmp_path) not in other


def test_a_folder_with_no_suite_is_one_line_and_exit_2_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from bench.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "findings", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert proc.stdout.splitlines()[-1] == "2 False", proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"error: {tmp_path}: no suite folder with a records.jsonl")
    assert not (tmp_path / FINDINGS_FILE).exists()


def test_a_verdict_that_needs_the_failed_run_left_out_is_no_claim(tmp_path: Path) -> None:
    """Under intention to treat `shaky` (0.70, 0.721, a failed run) is not told apart from the
    baseline; the per-protocol verdict, better, is named as a sensitivity, not claimed."""
    records = [
        make_record("r9", "group_norm", s, a, num_classes=10)
        for s, a in enumerate((0.5, 0.52, 0.51))
    ]
    records += [make_record("r9", "shaky", s, 0.7 + 0.021 * s, num_classes=10) for s in (0, 1)]
    records += [make_record("r9", "shaky", 2, None, status="failed")]
    run_dir = write_run(tmp_path / "r" / "one", records, {"report": {"baseline": "group_norm"}})
    with (run_dir / "records.jsonl").open("a") as f:
        f.write("not json\n")
    text = findings_text(tmp_path / "r")
    assert "1 line(s) or record(s) left out, listed in the leaderboard." in text
    primary = _section(text, "Primary claims")
    assert not any(line.startswith("- `shaky`") for line in primary)
    assert len(primary) == 1 and primary[0].startswith("- Not told apart in the primary family")
    assert (
        "with failed runs left out (per-protocol sensitivity, not a claim) it reads better"
        in (primary[0])
    )


def test_a_tan_simulation_table_is_exploratory_and_named_so(tmp_path: Path) -> None:
    dp_and_tan_run(tmp_path / "r" / "tan")
    text = findings_text(tmp_path / "r")
    primary, exploratory = _section(text, "Primary claims"), _section(text, "Exploratory")
    assert len(primary) == 1 and "`r9 [privacy.simulate_batch_size=none]`" in primary[0]
    tan = [line for line in exploratory if "[TAN simulation, not DP]`, every norm" in line]
    assert len(tan) == 1 and tan[0].startswith("- Exploratory: `other` is more accurate")
