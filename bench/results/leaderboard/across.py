"""The sections that rank norms across a page's tables: across backbones and across datasets,
each at fixed values of every other swept key, and the rank agreement of every other swept key.

A table is a backbone at one value of each swept key (`collect.block_of`). Ranking norms
"across backbones" takes as blocks only tables that differ in their backbone: a grid of
backbones x ``training.steps`` gives one ranking per budget, and a budget is never a block
there. A swept budget (or any other swept key) gets its own agreement section
(:mod:`bench.results.leaderboard.agreement`); a swept ``data.source`` gets the datasets
section, with datasets as blocks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations

from bench.results.leaderboard.agreement import agreement_sections, reading, tau_text
from bench.results.leaderboard.collect import Cell, Collected, block_of, is_simulated, is_tuning
from bench.results.leaderboard.markdown import NA, accuracy_text, code, pvalue_text, table
from bench.results.leaderboard.protocol import Protocol
from bench.results.leaderboard.survivorship import cell_outcomes
from bench.results.leaderboard.sweeps import Setting, value_key
from bench.results.record import grid_value_text
from bench.results.stats import BackboneAnalysis, average_ranks, friedman, mean_ci, rank_agreement
from bench.results.stats.descriptive import Seeds, values_of
from bench.results.stats.exact import ENUMERATED
from bench.results.stats.ranks import FriedmanResult

#: The grid key whose values are datasets.
DATASET_KEY = "data.source"

#: What every other swept key is held at: (key, sort key of the value, value as text) sorted by
#: key, so sorting puts numbers in numeric order (``training.steps=40`` before ``=120``).
Fixed = tuple[tuple[str, tuple, str], ...]


def across_sections(
    analyses: Mapping[str, BackboneAnalysis], collected: Collected, protocol: Protocol
) -> list[str]:
    """Across backbones, agreement across each other swept key, across datasets.

    Args:
        analyses: Each table's statistics, by table (DP tables only, or simulations only).
        collected: The report's records, collected once.
        protocol: The report's protocol (the collapse threshold of intention to treat).

    Returns:
        The sections' Markdown lines; a section with nothing to compare is left out.
    """
    tables = tables_of(collected)
    ok = {block: runs for block, runs in collected.ok_runs().items() if block in analyses}
    return [
        *backbones_section(analyses, tables),
        *agreement_sections(
            ok,
            {block: itt_scores(collected.cells.get(block, {}), protocol.collapse) for block in ok},
            exclude=(DATASET_KEY,),
        ),
        *datasets_section(collected, tables, analyses, protocol),
    ]


def tables_of(collected: Collected) -> dict[str, Setting]:
    """Every final-stage table with records: its backbone and swept values."""
    out: dict[str, Setting] = {}
    for record in collected.records:
        block = block_of(record)
        if is_tuning(record) or not isinstance(record.get("backbone"), str) or block in out:
            continue
        overrides = record.get("overrides")
        swept = dict(overrides) if isinstance(overrides, Mapping) else {}
        out[block] = Setting(block, record["backbone"], swept, is_simulated(block))
    return out


def fixed_values(setting: Setting, varied: str) -> Fixed:
    """What a table holds fixed while ``varied`` (``backbone`` or a swept key) varies."""
    pairs = [] if varied == "backbone" else [("backbone", setting.backbone)]
    pairs += [(k, v) for k, v in sorted(setting.overrides.items()) if k != varied]
    return tuple((k, value_key(v), grid_value_text(v)) for k, v in pairs)


def fixed_text(fixed: Fixed) -> str:
    """``training.steps=40, ...`` as the table titles write it."""
    return ", ".join(f"{k}={text}" for k, _, text in fixed)


def backbones_section(
    analyses: Mapping[str, BackboneAnalysis], tables: Mapping[str, Setting]
) -> list[str]:
    """Average ranks over backbones and the Friedman test, once per combination of the other
    swept keys' values; empty with fewer than two backbones everywhere."""
    groups: dict[Fixed, dict[str, dict[str, float]]] = {}
    for block, analysis in sorted(analyses.items()):
        setting = tables.get(block)
        if setting is not None and analysis.results:
            groups.setdefault(fixed_values(setting, "backbone"), {})[setting.backbone] = {
                r.norm: r.accuracy.mean for r in analysis.results
            }
    groups = {fixed: means for fixed, means in groups.items() if len(means) >= 2}
    if not groups:
        return []
    lines = ["## Across backbones", ""]
    if any(groups):
        lines += [
            "Norms are ranked over backbones at the same values of every other swept key: one "
            "ranking per combination of those values.",
            "",
        ]
    for fixed in sorted(groups):
        if fixed:
            lines += [f"### At {code(fixed_text(fixed))}", ""]
        lines += rank_lines(groups[fixed], "backbone")
    return lines


def rank_lines(means: Mapping[str, Mapping[str, float]], unit: str) -> list[str]:
    """Average ranks over blocks (backbones, datasets) and the Friedman test over them."""
    ranks = average_ranks(means)
    rows = [
        [code(norm), f"{rank.rank:.2f}", str(rank.n_backbones)]
        for norm, rank in sorted(ranks.items(), key=lambda item: (item[1].rank, item[0]))
    ]
    return [
        f"Rank by mean accuracy within each {unit} (1 = most accurate; ties share the average "
        f"rank), averaged over the {unit}s where the norm has an ok run.",
        "",
        table(rows, ["norm", "average rank", f"{unit}s"]),
        "",
        friedman_text(friedman(means, unit), unit),
        "",
    ]


def friedman_text(result: FriedmanResult, unit: str) -> str:
    """The Friedman test's sentence, or why it was not run."""
    if not result.ran:
        return f"Friedman test not run: {result.reason}."
    return (
        f"Friedman test (do the norms rank alike on every {unit}?): "
        f"χ² = {result.statistic:.2f}, p = {pvalue_text(result.pvalue)} (chi-square "
        f"approximation), {exact_text(result)}, over {len(result.norms)} norms "
        f"({', '.join(f'`{n}`' for n in result.norms)}) on "
        f"{len(result.backbones)} {unit}s ({', '.join(f'`{b}`' for b in result.backbones)})."
        f" With few {unit}s the chi-square approximation is rough: read the permutation p."
    )


def exact_text(result: FriedmanResult) -> str:
    """The Friedman test's permutation p-value and how it was found."""
    exact = result.exact
    if exact is None:
        return "no permutation p"
    if exact.method == ENUMERATED:
        return (
            f"exact permutation p = {pvalue_text(exact.pvalue)} (all {exact.count:,} "
            "arrangements enumerated)"
        )
    return (
        f"Monte Carlo permutation p = {pvalue_text(exact.pvalue)} ({exact.count:,} random "
        "arrangements, fixed seed)"
    )


def itt_scores(cells: Mapping[str, Cell], collapse: float) -> dict[str, Seeds]:
    """Each norm's accuracy per seed under intention to treat, as the tables score it."""
    return {norm: dict(o.scores) for norm, o in cell_outcomes(cells, collapse).items() if o.scores}


def datasets_section(
    collected: Collected,
    tables: Mapping[str, Setting],
    analyses: Mapping[str, BackboneAnalysis],
    protocol: Protocol,
) -> list[str]:
    """Norms ranked over the datasets of a grid that swept ``data.source``, once per
    combination of the other keys; empty when it did not."""
    groups: dict[Fixed, dict[str, dict[str, Seeds]]] = {}
    for block, setting in sorted(tables.items()):
        if block in analyses and DATASET_KEY in setting.overrides:
            scores = itt_scores(collected.cells.get(block, {}), protocol.collapse)
            dataset = grid_value_text(setting.overrides[DATASET_KEY])
            if scores:
                groups.setdefault(fixed_values(setting, DATASET_KEY), {})[dataset] = scores
    groups = {fixed: scores for fixed, scores in groups.items() if len(scores) >= 2}
    if not groups:
        return []
    lines = ["## Across datasets", "", DATASETS_INTRO, ""]
    for fixed in sorted(groups):
        lines += [f"### On {code(fixed_text(fixed))}", "", *dataset_lines(groups[fixed])]
    return lines


#: How the datasets section and ``bench across`` read.
DATASETS_INTRO = (
    "Each norm's accuracy % on each dataset under intention to treat, as the tables score it "
    "(mean ± 95% CI, n; a failed or collapsed run at the dataset's chance), at the same "
    "backbone and values of every other key. Ranks by mean accuracy within each dataset (1 = "
    "most accurate; ties share the average rank), averaged over the datasets of the Friedman "
    "test's complete table; a norm without runs on every one of its datasets is left out of "
    "both. The Friedman test takes datasets as blocks. Kendall's τ-b compares two datasets' "
    "rankings over the norms they share, with its 95% seed-joint bootstrap interval (a seed "
    "fixes a run's non-secret streams, initialisation and augmentation, whatever the data)."
)


def dataset_lines(scores: Mapping[str, Mapping[str, Seeds]]) -> list[str]:
    """The norm x dataset table with average ranks, the Friedman test, what was left out as
    incomplete, and Kendall's tau between each pair of datasets."""
    datasets = sorted(scores)
    norms = sorted({norm for by_norm in scores.values() for norm in by_norm})
    means = {d: {n: _mean(s) for n, s in scores[d].items()} for d in datasets}
    result = friedman(means, "dataset")
    used_norms = set(result.norms) if result.ran else set(norms)
    used = list(result.backbones) if result.ran else datasets
    ranks = average_ranks({d: {n: m for n, m in means[d].items() if n in used_norms} for d in used})
    rows = [
        [
            code(norm),
            *(_cell(scores[d].get(norm)) for d in datasets),
            f"{ranks[norm].rank:.2f}" if norm in ranks else NA,
        ]
        for norm in sorted(norms, key=lambda n: (ranks[n].rank if n in ranks else math.inf, n))
    ]
    headers = ["norm", *(f"{code(d)} accuracy %" for d in datasets), "average rank"]
    lines = [table(rows, headers), "", friedman_text(result, "dataset"), ""]
    lines += _left_out_lines(scores, [n for n in norms if n not in used_norms], used)
    agreements = [
        [
            f"{code(a)}, {code(b)}",
            str(len(agreement.norms)),
            tau_text(agreement),
            reading(agreement, code(a), code(b), False, "on"),
        ]
        for a, b in combinations(datasets, 2)
        for agreement in [rank_agreement(scores[a], scores[b])]
    ]
    headers = ["datasets", "norms", "Kendall τ-b (95% CI)", "reading"]
    return [*lines, table(agreements, headers), ""]


def _left_out_lines(
    scores: Mapping[str, Mapping[str, Seeds]], norms: Sequence[str], used: Sequence[str]
) -> list[str]:
    """Which norms and datasets the ranks and the Friedman test left out, and why."""
    said = [
        f"{code(n)} (no run on {', '.join(code(d) for d in sorted(scores) if n not in scores[d])})"
        if any(n not in by_norm for by_norm in scores.values())
        else f"{code(n)} (complete, outside the larger complete table)"
        for n in norms
    ]
    said += [f"dataset {code(d)} (lacks a norm the others have)" for d in scores if d not in used]
    if not said:
        return []
    return [f"Left out of the ranks and the Friedman test as incomplete: {', '.join(said)}.", ""]


def _mean(seeds: Seeds) -> float:
    """A cell's mean, as its table computes it."""
    return mean_ci(list(values_of(seeds))).mean


def _cell(seeds: Seeds | None) -> str:
    return NA if not seeds else accuracy_text(mean_ci(list(values_of(seeds))), say_no_ci=False)
