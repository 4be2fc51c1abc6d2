"""TAN simulations never mix with DP runs in a report (issue 26, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.results import figures
from bench.results.leaderboard import write_report
from bench.results.leaderboard.collect import collect, split_simulated
from bench.results.leaderboard.privacy_utility import curve_points
from bench.results.leaderboard.simulated import SIMULATED_HEADING
from tests.report_records import make_record, write_run

#: Mean accuracy (%) of every DP run and of every simulated run: the two never meet.
DP_ACC, TAN_ACC = {2.0: 31.0, 8.0: 41.0}, {2.0: 77.0, 8.0: 88.0}
BACKBONES = ("resnet9", "wrn16_4")
NORMS = ("group_norm", "layer_norm")


def _records() -> list[dict]:
    """The issue's reproduction: a suite run as DP, then again with ``--set
    privacy.simulate_batch_size=32`` into the same folder. Both share every override."""
    out = []
    for simulated in (False, True):
        for backbone in BACKBONES:
            for epsilon in (2.0, 8.0):
                for n, norm in enumerate(NORMS):
                    for seed in (0, 1, 2):
                        mean = (TAN_ACC if simulated else DP_ACC)[epsilon] - 2.0 * n
                        record = make_record(
                            backbone,
                            norm,
                            seed,
                            (mean + seed - 1) / 100,
                            overrides={"privacy.epsilon": epsilon},
                            epsilon_target=epsilon,
                            epsilon_spent=epsilon * 29 if simulated else epsilon,
                            dp_valid=not simulated,
                            wall_s=10.0 * epsilon,
                        )
                        record["run_key"] += f"|{epsilon}|{'tan' if simulated else 'dp'}"
                        if simulated:
                            record["simulated"] = {
                                "epsilon": epsilon,
                                "delta": 1e-5,
                                "batch_size": 256,
                                "simulated_batch_size": 32,
                            }
                        out.append(record)
    return out


class _Drawn:
    """Stands for a drawn figure (matplotlib is slow on 2 cores): saving it notes its points."""

    def __init__(self, drawn: dict, points: list):
        self.drawn, self.points = drawn, points

    def savefig(self, path: Path, **_options: object) -> None:
        self.drawn[Path(path).name] = self.points


def test_simulated_runs_appear_only_under_their_heading_and_dp_points_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    drawn: dict[str, list] = {}
    for name in ("accuracy_figure", "throughput_figure", "privacy_utility_figure"):
        monkeypatch.setattr(figures, name, lambda points, _context: _Drawn(drawn, list(points)))
    # Saved by name, not through the atomic writer's temporary file.
    monkeypatch.setattr(figures, "_save", lambda fig, path: fig.savefig(path))
    run_dir = write_run(tmp_path / "run", _records(), {"grid": {"privacy.epsilon": [2.0, 8.0]}})
    board = write_report(run_dir).read_text()
    dp_part, heading, tan_part = board.partition(f"\n{SIMULATED_HEADING}\n")
    # Methods and the Records list of every run (DP and simulated alike) close the page.
    tan_part = tan_part.split("\n## Methods\n")[0]
    assert heading, "no TAN simulation heading"
    tan_accs = {a - 2 * n for a in TAN_ACC.values() for n in range(len(NORMS))}
    dp_accs = {a - 2 * n for a in DP_ACC.values() for n in range(len(NORMS))}
    tan_texts, dp_texts = ({f"{a:.1f}" for a in accs} for accs in (tan_accs, dp_accs))
    # Every DP section that groups settings is there, with DP numbers only.
    for section in (
        "## Across backbones",
        "## Agreement across `privacy.epsilon`",
        "## Effect of each swept value",
        "## Privacy–utility",
    ):
        assert section in dp_part, section
        assert section.replace("## ", "### ") in tan_part, section
    assert not any(t in dp_part for t in tan_texts)
    assert all(t in dp_part for t in dp_texts)
    assert "TAN simulation, not DP]" not in dp_part  # no simulated table above the heading
    assert not any(t in tan_part for t in dp_texts)
    assert all(t in tan_part for t in tan_texts)
    assert "(privacy_utility.png)" in dp_part and "(privacy_utility_tan.png)" in tan_part
    assert "(accuracy.png)" in dp_part and "(accuracy_tan.png)" in tan_part
    assert sorted(drawn) == sorted(
        f"{name}{tan}.png"
        for name in ("privacy_utility", "accuracy", "accuracy_vs_throughput")
        for tan in ("", "_tan")
    )
    for name, points in drawn.items():
        accuracies = {round(p.acc_pct, 6) for p in points}
        assert accuracies <= set(tan_accs if "_tan" in name else dp_accs), name


def test_the_privacy_utility_figure_keeps_every_dp_point_and_no_simulated_one():
    dp, tan = split_simulated(collect(_records()).ok_runs())
    for ok, acc in ((dp, DP_ACC), (tan, TAN_ACC)):
        points = curve_points(ok)
        assert len(points) == len(BACKBONES) * len(NORMS) * 2
        assert {round(p.acc_pct, 6) for p in points if p.norm == NORMS[0]} == set(acc.values())
