"""Survivorship under a backbone's table: ok / attempted runs, and the ranking with each failed
run counted at chance accuracy."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from bench.results.leaderboard.collect import Cell, mean
from bench.results.leaderboard.markdown import NA, code, pp_text, table
from bench.results.record import Record


def _chance(records: Iterable[Record]) -> float | None:
    """Chance accuracy, 1 / classes, of the data these records ran on: from a record's
    ``num_classes``, else from its config (synthetic data or CIFAR-10); None when unknown."""
    records = list(records)
    for record in records:
        classes = record.get("num_classes")
        if isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2:
            return 1 / classes
    for record in records:
        config = record.get("config")
        data = config.get("data") if isinstance(config, Mapping) else None
        if not isinstance(data, Mapping):
            continue
        if data.get("source") == "cifar10":
            return 0.1
        classes = data.get("num_classes")
        if data.get("source") == "synthetic" and isinstance(classes, int) and classes >= 2:
            return 1 / classes
    return None


def _ranks(values: Mapping[str, float]) -> dict[str, float]:
    """Rank 1 = largest value; tied values share the average of their ranks."""
    ordered = sorted(values.items(), key=lambda item: -item[1])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][1] == ordered[i][1]:
            j += 1
        for norm, _ in ordered[i : j + 1]:
            ranks[norm] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def survivorship_lines(norms: Mapping[str, Cell]) -> list[str]:
    """The table of ok / attempted runs per norm and the ranking with failed runs counted at
    chance accuracy, beside the ok-only mean."""
    attempted = {n: c for n, c in norms.items() if c.ok or c.failed}
    if not attempted:
        return []
    chance = _chance([r for c in norms.values() for r in (*c.ok.values(), *c.failed_records)])
    imputed: dict[str, float] = {}
    for norm, cell in attempted.items():
        if chance is not None or not cell.failed:
            scores = [*cell.accuracy.values(), *[chance or 0.0] * cell.failed]
            imputed[norm] = math.fsum(scores) / len(scores)
    ranks = _ranks(imputed)
    rows = []
    for norm in sorted(attempted, key=lambda n: (ranks.get(n, math.inf), n)):
        cell = attempted[norm]
        ok_mean = mean(cell.accuracy.values())
        rows.append(
            [
                code(norm),
                f"{len(cell.ok)} / {len(cell.ok) + cell.failed}",
                NA if ok_mean is None else pp_text(ok_mean),
                NA if norm not in imputed else pp_text(imputed[norm]),
                NA if norm not in ranks else f"{ranks[norm]:g}",
            ]
        )
    unknown = "chance unknown: no record names the classes"
    chance_text = unknown if chance is None else f"{pp_text(chance)} %"
    headers = [
        "norm",
        "ok / attempted",
        "accuracy % (ok runs)",
        "accuracy % (failed at chance)",
        "rank (failed at chance)",
    ]
    return [
        f"Failed runs counted at chance accuracy ({chance_text}):",
        "",
        table(rows, headers),
        "",
    ]
