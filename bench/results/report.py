"""The leaderboard: renders ``leaderboard.md`` (and its figures) from a run directory's records."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from bench.config import DEFAULT_NORM, alpha_problem
from bench.errors import ConfigError, RecordsError
from bench.results import figures, stats, sweeps
from bench.results.record import Record, grid_value_text
from bench.results.records import RecordsRead, read_records
from bench.results.stacks import STACK_KEYS, stack_text, stacks

RECORDS_FILE = "records.jsonl"
SUITE_FILE = "suite.json"
LEADERBOARD_FILE = "leaderboard.md"
DEFAULT_ALPHA = 0.05
CONFIDENCE = 0.95

#: Provenance keys shown in the header, in this order: the stack's, then the interpreter's.
VERSION_KEYS = (*STACK_KEYS, "python")

_NA = "—"
_MAX_REASON_CHARS = 300


@dataclass
class _Cell:
    """The records of one (backbone, norm) pair, as the tables need them."""

    ok: dict[object, Record] = field(default_factory=dict)  # seed -> ok record
    failed: int = 0
    skipped: int = 0
    interrupted: int = 0
    invalid: int = 0  # ok records whose test_acc cannot be used
    failed_records: list[Record] = field(default_factory=list)

    @property
    def accuracy(self) -> dict[object, float]:
        return {seed: float(record["test_acc"]) for seed, record in self.ok.items()}


@dataclass
class _Collected:
    """Records sorted into cells, with everything the header and the lists need."""

    cells: dict[str, dict[str, _Cell]] = field(default_factory=dict)  # backbone -> norm -> cell
    not_ok: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _seed_key(seed: object) -> tuple:
    """Sort key that orders integer seeds numerically and anything else after them, as text."""
    if isinstance(seed, (int, float)) and not isinstance(seed, bool):
        return (0, seed, "")
    return (1, 0, "" if seed is None else str(seed))


def _block(entry: Mapping) -> object:
    """The table a record or planned cell belongs to: its backbone, plus the suite's extra grid
    keys when it swept any (``resnet9 [training.lr=0.5]``), so each swept configuration gets
    its own leaderboard instead of colliding with the others on (backbone, norm, seed)."""
    backbone, overrides = entry.get("backbone"), entry.get("overrides")
    # A TAN simulation is not private at the target: it never shares a table with DP runs.
    tan = " [TAN simulation, not DP]" if entry.get("dp_valid") is False else ""
    if not isinstance(backbone, str) or not isinstance(overrides, Mapping) or not overrides:
        return f"{backbone}{tan}" if tan and isinstance(backbone, str) else backbone
    shown = ", ".join(f"{k}={grid_value_text(v)}" for k, v in sorted(overrides.items()))
    return f"{backbone} [{shown}]{tan}"


def _is_tuning(entry: Mapping) -> bool:
    """A tuning-stage run: scored on the validation split, kept out of the leaderboard."""
    return entry.get("stage") == "tune"


def _collect(records: Sequence[Record]) -> _Collected:
    """Sort records into (backbone, norm) cells, noting records the tables cannot use.

    Numeric fields are finite numbers or None here: :func:`read_records` refused the rest.
    """
    out = _Collected()
    for record in records:
        key = record["run_key"]
        backbone, norm = _block(record), record.get("norm")
        if not isinstance(backbone, str) or not isinstance(norm, str):
            out.problems.append(f"run {key}: no backbone/norm spec string; left out of the tables")
            continue
        cell = out.cells.setdefault(backbone, {}).setdefault(norm, _Cell())
        if record["status"] != "ok":
            out.not_ok.append(record)
            if record["status"] == "failed":
                cell.failed += 1
                cell.failed_records.append(record)
            elif record["status"] == "interrupted":
                cell.interrupted += 1
            else:
                cell.skipped += 1
            continue
        acc = record.get("test_acc")
        if acc is None or not 0.0 <= acc <= 1.0:
            out.problems.append(
                f"run {key}: status ok but test_acc is {record.get('test_acc')!r} "
                "(need a fraction in [0, 1]); left out of the tables"
            )
            cell.invalid += 1
            continue
        seed = record.get("seed")
        if seed in cell.ok:
            # Two configurations with one (backbone, grid keys, norm, seed), e.g. records of an
            # edited suite: keep the newer and say so rather than average them.
            out.problems.append(
                f"runs {cell.ok[seed]['run_key']} and {key}: both ok for {backbone} / {norm} / "
                f"seed {seed}; using the later one ({key})"
            )
        cell.ok[seed] = record
    return out


def _load_suite(path: Path) -> dict:
    """The resolved suite the runner wrote, or an empty dict when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise RecordsError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        suite = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordsError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(suite, dict):
        raise RecordsError(f"{path}: expected a JSON object, got {type(suite).__name__}")
    return suite


def _section(suite: Mapping, name: str) -> Mapping:
    """A dict-valued section of the suite, or an empty one."""
    value = suite.get(name)
    return value if isinstance(value, Mapping) else {}


def _resolve_alpha(alpha: float | None, suite: Mapping) -> float:
    """The argument, else the suite's ``report.alpha``, else the default; validated."""
    source = "alpha"
    if alpha is None:
        alpha = _section(suite, "report").get("alpha")
        source = "report.alpha"
    if alpha is None:
        return DEFAULT_ALPHA
    problem = alpha_problem(alpha)
    if problem is not None:
        raise ConfigError(
            f"invalid significance level: {problem}",
            key=source,
            given=alpha,
            allowed="0 < alpha < 0.5",
        )
    return float(alpha)


def _distinct(values: Iterable[object]) -> list[str]:
    """Distinct non-empty values as sorted strings."""
    return sorted({str(v) for v in values if v is not None and v != ""})


def _join(values: Sequence[str], empty: str = "not recorded") -> str:
    return ", ".join(values) if values else empty


def _cell_text(text: object) -> str:
    """Text made safe for one Markdown table cell: one line, no bare pipes, bounded length."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    if len(text) > _MAX_REASON_CHARS:
        text = text[: _MAX_REASON_CHARS - 1] + "…"
    return text


def _code(text: object) -> str:
    """A spec string as inline code in a table cell."""
    return f"`{_cell_text(text)}`"


def _fmt_number(value: float) -> str:
    """A privacy parameter as written in a paper: 8, 0.5, 1e-05."""
    return f"{value:g}"


def _fmt_accuracy(acc: stats.MeanCI) -> str:
    if acc.half_width is None:
        return f"{stats.pp_text(acc.mean)} (n={acc.n}, no CI)"
    return f"{stats.pp_text(acc.mean)} ± {stats.pp_text(acc.half_width)} (n={acc.n})"


def _fmt_p(p: float | None, test: str | None) -> str:
    """A corrected p-value with the test that gave it."""
    if p is None:
        return _NA
    short = {stats.PAIRED: "paired", stats.WELCH: "Welch"}.get(test or "", test)
    return f"{stats.pvalue_text(p)} ({short})"


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    # fsum is exactly rounded, so the mean does not depend on the order of the records.
    return math.fsum(present) / len(present) if present else None


def _cell_measurements(cell: _Cell) -> dict[str, float | None]:
    """Throughput, DP/non-DP ratio, peak memory and epsilon spent of a cell's ok runs."""
    ratios = []
    for record in cell.ok.values():
        dp, plain = record.get("throughput_img_s"), record.get("nonprivate_throughput_img_s")
        ratios.append(dp / plain if dp is not None and plain else None)
    memory = [r.get("peak_mem_bytes") for r in cell.ok.values()]
    epsilon = [r.get("epsilon_spent") for r in cell.ok.values()]
    over = [
        r["epsilon_target"]
        for r, spent in zip(cell.ok.values(), epsilon, strict=True)
        if spent is not None
        and r.get("epsilon_target") is not None
        # Relative slack: accountants report epsilon through a numerical search.
        and spent > r["epsilon_target"] * (1 + 1e-6)
    ]
    return {
        "throughput": _mean(r.get("throughput_img_s") for r in cell.ok.values()),
        "ratio": _mean(ratios),
        "memory": max((m for m in memory if m is not None), default=None),
        "epsilon": max((e for e in epsilon if e is not None), default=None),
        "epsilon_target_exceeded": min(over) if over else None,
    }


def _fmt_optional(value: float | None, spec: str) -> str:
    return _NA if value is None else format(value, spec)


def _fmt_epsilon(spent: float | None, exceeded_target: float | None) -> str:
    """Epsilon spent, flagged when a run spent more than its target (the budget did not hold)."""
    if exceeded_target is None:
        return _fmt_optional(spent, ".2f")
    return f"{spent:.2f} (over target {_fmt_number(exceeded_target)}!)"


def _no_ok_text(cell: _Cell | None) -> str:
    """What the accuracy column says for a norm with no usable ok run."""
    counts = [] if cell is None else [(cell.failed, "failed"), (cell.skipped, "skipped")]
    counts += [] if cell is None else [(cell.interrupted, "interrupted")]
    counts += [] if cell is None else [(cell.invalid, "ok without a valid test_acc")]
    said = ", ".join(f"{n} {label}" for n, label in counts if n)
    return f"no ok run ({said or 'no record yet'})"


def _power_text(analysis: stats.BackboneAnalysis) -> str:
    """The backbone's power line: the smallest difference its verdicts could see, and the seeds
    that 1 pp would need."""
    power = analysis.power
    if power is None:
        if any(r.detectable is not None for r in analysis.results):
            return (
                "**Power:** no paired comparison with the baseline, so no pooled estimate; each "
                "row's detectable Δ comes from its own (Welch) test."
            )
        return "**Power:** not estimated: no comparison with the baseline was tested."
    seeds = (
        f"more than {stats.MAX_SEEDS}"
        if power.seeds_for_one_pp is None
        else str(power.seeds_for_one_pp)
    )
    head = (
        f"**Power** (paired t-test, two-sided, at α/m = {_fmt_number(analysis.alpha)}/{power.m} "
        f"= {power.level:.4g}: Holm's first step, so a lower bound on the verdicts' power): with "
        f"the pooled SD of the paired differences with the baseline, {100 * power.sd:.2f} pp "
        f"({power.sd_df} df), "
    )
    if power.detectable > 1.0:
        seen = (
            f"{power.n} seeds would find a difference with {power.power:.0%} power only above "
            f"100 pp, so **no difference an accuracy can have would be found with "
            f"{power.power:.0%} power** and 'no significant difference' rules out nothing."
        )
    else:
        detectable = f"{100 * power.detectable:.2f} pp"
        seen = (
            f"{power.n} seeds find a difference of {detectable} with {power.power:.0%} power, so "
            f"**differences below {detectable} could not be seen** and 'no significant "
            "difference' does not rule them out."
        )
    return head + seen + f" Seeing 1 pp with {power.power:.0%} power would need {seeds} seeds."


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


def _survivorship_lines(norms: Mapping[str, _Cell]) -> list[str]:
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
        ok_mean = _mean(cell.accuracy.values())
        rows.append(
            [
                _code(norm),
                f"{len(cell.ok)} / {len(cell.ok) + cell.failed}",
                _NA if ok_mean is None else stats.pp_text(ok_mean),
                _NA if norm not in imputed else stats.pp_text(imputed[norm]),
                _NA if norm not in ranks else f"{ranks[norm]:g}",
            ]
        )
    unknown = "chance unknown: no record names the classes"
    chance_text = unknown if chance is None else f"{stats.pp_text(chance)} %"
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
        tabulate(rows, headers, tablefmt="github", disable_numparse=True),
        "",
    ]


def _backbone_section(
    backbone: str,
    norms: Mapping[str, _Cell],
    planned_norms: Iterable[str],
    baseline: str,
    alpha: float,
) -> tuple[list[str], stats.BackboneAnalysis]:
    """The Markdown lines of one backbone's table, and the statistics behind it."""
    accuracy = {norm: cell.accuracy for norm, cell in norms.items() if cell.ok}
    analysis = stats.analyse_backbone(accuracy, baseline, alpha, CONFIDENCE)
    lines = [f"## Backbone `{backbone}`", ""]
    if not analysis.has_baseline:
        lines += [
            f"The baseline `{baseline}` has no ok run on this backbone, so no norm is compared "
            "with it here (verdicts say so); the letters do not depend on it.",
            "",
        ]
    headers = [
        "letters",
        "norm",
        "accuracy % (mean ± 95% CI, n)",
        "Δ vs baseline (pp, 95% CI)",
        "p (Holm)",
        "verdict",
        "detectable Δ (pp, 80% power)",
        "throughput (img/s)",
        "DP/non-DP throughput",
        "peak memory (MiB)",
        "ε spent (max)",
    ]
    rows = []
    for result in analysis.results:
        cell = norms[result.norm]
        measured = _cell_measurements(cell)
        comparison = result.vs_baseline
        rows.append(
            [
                result.letters or _NA,
                _code(result.norm),
                _fmt_accuracy(result.accuracy),
                stats.difference_text(comparison),
                _fmt_p(result.p_holm, comparison.test if comparison else None),
                result.verdict,
                stats.detectable_text(result.detectable),
                _fmt_optional(measured["throughput"], ".1f"),
                _fmt_optional(measured["ratio"], ".2f"),
                _fmt_optional(
                    None if measured["memory"] is None else measured["memory"] / 2**20, ".0f"
                ),
                _fmt_epsilon(measured["epsilon"], measured["epsilon_target_exceeded"]),
            ]
        )
    ranked = {result.norm for result in analysis.results}
    for norm in sorted((set(norms) | set(planned_norms)) - ranked):
        rows.append([_NA, _code(norm), _no_ok_text(norms.get(norm)), *[_NA] * (len(headers) - 3)])
    lines += [tabulate(rows, headers, tablefmt="github", disable_numparse=True), ""]
    lines += [_power_text(analysis), ""]
    if any(r.accuracy.n == 1 for r in analysis.results):
        lines += [
            "Cells with one seed (n=1) have no interval, are not tested and not ranked (—).",
            "",
        ]
    lines += _survivorship_lines(norms)
    return lines, analysis


def _header(
    suite: Mapping,
    records: Sequence[Record],
    n_problems: int,
    run_dir: Path,
    baseline: str,
    alpha: float,
    analyses: Sequence[stats.BackboneAnalysis],
) -> list[str]:
    """Title, provenance and the statement of the statistics used."""
    name = suite.get("name") or _join(_distinct(r.get("suite") for r in records), run_dir.name)
    data = _section(suite, "data")
    datasets = _distinct(r.get("dataset") for r in records) or _distinct([data.get("dataset")])
    provenance = [r["provenance"] for r in records if isinstance(r.get("provenance"), Mapping)]
    versions = []
    for key in VERSION_KEYS:
        found = _distinct(p.get(key) for p in provenance)
        if found:
            versions.append(f"{key} {' / '.join(found)}")
    statuses = [r["status"] for r in records]
    shown = ("ok", "failed", "skipped", *(["interrupted"] if "interrupted" in statuses else []))
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in shown)
    seeds = sorted({r.get("seed") for r in records if r.get("seed") is not None}, key=_seed_key)
    tests: dict[str, int] = {}
    for analysis in analyses:
        for test, n in analysis.tests_used.items():
            tests[test] = tests.get(test, 0) + n
    used = _join([f"{test} ×{n}" for test, n in sorted(tests.items())], "none (too few seeds)")

    lines = [
        f"# Leaderboard: {name}",
        "",
        f"Generated from `{RECORDS_FILE}` by `python -m bench report`; do not edit by hand.",
        "",
        f"- **Suite:** {name}" + (f" — {suite['description']}" if suite.get("description") else ""),
        f"- **Dataset:** {_join(datasets)}",
        f"- **Privacy target:** "
        f"{_privacy_text(_section(suite, 'privacy'), records, _section(suite, 'grid'))}",
        *_tan_lines(records),
        f"- **Hardware:** {_join(_distinct(r.get('device') for r in records))}"
        + _hosts_text(provenance),
        f"- **Versions:** {_join(versions)}" + _mixed_note(records),
        f"- **Commit:** {_join(_distinct(p.get('git_commit') for p in provenance))}",
        f"- **Seeds:** {_join([str(s) for s in seeds], 'none')}",
        f"- **Records:** {len(records)} ({counts})"
        + (f"; {n_problems} problem(s) listed below" if n_problems else ""),
        f"- **Baseline:** `{baseline}`; **α** = {_fmt_number(alpha)}",
        "",
        f"**Statistics** (α = {_fmt_number(alpha)}):",
        "",
        "- Accuracy: mean over seeds with a 95% Student-t interval; one seed gives no interval.",
        "- Δ vs baseline (percentage points, 95% interval): paired t-test on the seeds both norms "
        "ran when they share at least 2 (pairing by seed removes the variance a seed shares "
        f"across norms), otherwise Welch's unpaired t-test. Tests used here: {used}.",
        "- p (Holm): Holm-corrected across the comparisons with the baseline on each backbone; a "
        "verdict of better or worse needs a corrected p ≤ α, otherwise no significant difference.",
        "- Letters (compact letter display): every pair of norms with at least 2 seeds on the "
        "backbone is tested as above and the p-values are Holm-corrected over all pairs of the "
        "backbone; norms sharing a letter are not significantly different, norms with no letter "
        "in common are. Each letter is a maximal set of mutually non-different norms (Piepho's "
        "insert-absorb algorithm), lettered in order of mean accuracy (the best norm is in a). "
        "Not being different is not transitive: a ~ b and b ~ c with a ≁ c reads a, ab, b. —: "
        "not tested (fewer than 2 seeds).",
        "- Detectable Δ (80% power): the smallest true difference from the baseline that the "
        "row's test finds with 80% probability, given its observed standard error: the "
        "noncentrality at which a noncentral t (the test's df) exceeds the two-sided critical "
        "value with probability 0.8, times the standard error. The level is α/m, m the number "
        "of baseline comparisons tested on the backbone: Holm's first threshold, which the "
        "verdict must pass when a single norm differs, so the verdicts' power is at least this. "
        "The power line under each table does the same with the pooled SD of the paired "
        "differences, and gives the seeds a 1 pp difference would need. The SDs are estimated "
        "from few seeds: read these figures as indicative.",
        "- Rank agreement (when the grid sweeps an extra key): Kendall's τ-b between the norms' "
        "rankings by mean accuracy at two values of the key, with a 95% percentile bootstrap "
        f"interval over seeds ({stats.BOOTSTRAP_RESAMPLES} resamples, each (value, norm) cell's "
        "seeds redrawn with replacement independently, fixed generator seed).",
        "- Across backbones: average rank by mean accuracy and a Friedman test on a complete "
        "norms × backbones table.",
        "- Failed runs (survivorship): the tests and letters above use ok runs only, so a norm "
        "whose seeds fail (a diverged loss, a crash) would look as good as its survivors. Under "
        "each table, ok / attempted counts every run that started (ok or failed; skipped and "
        "interrupted ones did not decide their outcome), and the norms are ranked again with "
        "each failed run counted at chance accuracy (1 / classes), beside the ok-only mean.",
        "",
    ]
    return lines


def _tan_lines(records: Sequence[Record]) -> list[str]:
    """The header's warning when any run is a TAN simulation."""
    simulated = [r for r in records if r.get("dp_valid") is False]
    if not simulated:
        return []
    targets = _distinct(
        f"(ε = {s['epsilon']}, δ = {s['delta']}) at batch {s['batch_size']}, run at batch "
        f"{s['simulated_batch_size']}"
        for s in (r.get("simulated") for r in simulated)
        if isinstance(s, Mapping)
    )
    return [
        f"- **TAN simulation** of {_join(targets, 'the target')}: predicts accuracy, gives no "
        "privacy. Its runs keep the steps and scale the noise by b/B (σ = σ_ref · b / B, "
        "Sander et al. 2023); their ε spent is what they really spent, far above the target, "
        "and their tables are marked *TAN simulation, not DP*, apart from any DP run."
    ]


def _privacy_text(privacy: Mapping, records: Sequence[Record], grid: Mapping | None = None) -> str:
    """The privacy target: the grid's values of a key it sweeps (``privacy.epsilon``), else the
    suite's, else the distinct values the records hold.

    A swept key must not print the suite's single default: an epsilon sweep's header would name
    one budget when its tables are at four.
    """
    grid = grid or {}

    def values(suite_key: str, record_key: str) -> tuple[list[str], bool]:
        swept = grid.get(f"privacy.{suite_key}")
        if isinstance(swept, Sequence) and not isinstance(swept, str) and swept:
            return _numeric_order(_distinct(swept)), True
        if privacy.get(suite_key) is not None:
            return _distinct([privacy[suite_key]]), False
        return _numeric_order(_distinct(r.get(record_key) for r in records)), False

    def compact(text: str) -> str:
        try:
            return _fmt_number(float(text))
        except ValueError:
            return text

    def shown(found: tuple[list[str], bool]) -> str:
        texts, swept = found
        texts = list(dict.fromkeys(compact(t) for t in texts))  # 8 and 8.0 are one budget
        text = _join(texts, "?")
        return f"{text} (swept by the grid)" if swept and len(texts) > 1 else text

    epsilons, deltas = values("epsilon", "epsilon_target"), values("delta", "delta")
    if not epsilons[0] and not deltas[0]:
        return "not recorded"
    text = f"(ε = {shown(epsilons)}, δ = {shown(deltas)})"
    accountants, _ = values("accountant", "accountant")
    return text + (f", accountant {_join(accountants)}" if accountants else "")


def _numeric_order(texts: list[str]) -> list[str]:
    """Numbers in numeric order (``2`` before ``16``); anything else keeps its sorted order."""
    try:
        return sorted(texts, key=float)
    except ValueError:
        return texts


def _summary_section(analyses: Mapping[str, stats.BackboneAnalysis]) -> list[str]:
    """Average ranks across backbones and the Friedman test (or why it was not run)."""
    means = {
        backbone: {r.norm: r.accuracy.mean for r in analysis.results}
        for backbone, analysis in analyses.items()
        if analysis.results
    }
    lines = ["## Across backbones", ""]
    if not means:
        return [*lines, "No ok run on any backbone: nothing to rank.", ""]
    ranks = stats.average_ranks(means)
    rows = [
        [_code(norm), f"{rank.rank:.2f}", str(rank.n_backbones)]
        for norm, rank in sorted(ranks.items(), key=lambda item: (item[1].rank, item[0]))
    ]
    lines += [
        "Rank by mean accuracy within each backbone (1 = most accurate; ties share the average "
        "rank), averaged over the backbones where the norm has an ok run.",
        "",
        tabulate(
            rows, ["norm", "average rank", "backbones"], tablefmt="github", disable_numparse=True
        ),
        "",
    ]
    result = stats.friedman(means)
    if result.ran:
        lines.append(
            f"Friedman test (do the norms rank alike on every backbone?): "
            f"χ² = {result.statistic:.2f}, p = {stats.pvalue_text(result.pvalue)}, "
            f"over {len(result.norms)} norms ({', '.join(f'`{n}`' for n in result.norms)}) on "
            f"{len(result.backbones)} backbones ({', '.join(f'`{b}`' for b in result.backbones)})."
            " With few backbones the chi-square approximation is rough."
        )
    else:
        lines.append(f"Friedman test not run: {result.reason}.")
    return [*lines, ""]


def _hosts_text(provenance: Sequence[Mapping]) -> str:
    """The records' platforms (OS and kernel build) with their counts, when recorded.

    Records made before ``provenance.platform`` existed say nothing, and add nothing here. Two
    platforms mean two machines (or one machine updated between parts), on which the same cell
    need not give the same accuracy (floating point differs, and DP-SGD amplifies it), which
    the header says; one platform does not prove one machine (two hosts built alike read the
    same)."""
    counts = Counter(p.get("platform") for p in provenance)
    if set(counts) <= {None}:
        return ""
    parts = [
        ("platform not recorded" if platform is None else f"`{platform}`")
        + f" ({n} record{'s' if n != 1 else ''})"
        for platform, n in sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or ""))
    ]
    platforms = len(set(counts) - {None})
    note = (
        f"; **{platforms} platforms**: one cell's accuracy can differ between machines by about "
        "a seed's spread, so compare within a platform where it matters"
        if platforms > 1
        else ""
    )
    return f", on {', '.join(parts)}{note}"


def _mixed_note(records: Sequence[Record]) -> str:
    n = len(stacks(records))
    return f" (**{n} software stacks**: see below)" if n > 1 else ""


def _stacks_section(records: Sequence[Record]) -> list[str]:
    """Which records came from which software stack, when there is more than one (a sweep
    resumed under ``--allow-mixed-env``): a confound the statistics cannot see."""
    groups = stacks(records)
    if len(groups) < 2:
        return []
    rows = [
        [
            stack_text(stack),
            str(len(group)),
            _cell_text(
                ", ".join(
                    sorted(f"{_block(r)} {r.get('norm')} seed={r.get('seed')}" for r in group)
                )
            ),
        ]
        for stack, group in sorted(groups.items(), key=lambda item: -len(item[1]))
    ]
    table = tabulate(rows, ["stack", "records", "runs"], tablefmt="github", disable_numparse=True)
    return [
        "## Software stacks",
        "",
        "These records were made under more than one software stack; differences between "
        "norms may partly be differences between stacks.",
        "",
        table,
        "",
    ]


def _privacy_section(records: Sequence[Record]) -> list[str]:
    """What each norm reads across examples and what it costs, from the records' own words
    (``norm_dp_status``, ``norm_dp_note``, ``privacy_charges``), and what the sparsity masks
    read: the leaderboard says which choices are free and which are paid for in ε."""
    finals = [r for r in records if not _is_tuning(r) and r.get("norm_dp_status")]
    if not finals:
        return []
    by_norm: dict[str, list[Record]] = {}
    for r in finals:
        by_norm.setdefault(str(r.get("norm")), []).append(r)
    rows = []
    for norm, runs in sorted(by_norm.items()):
        # A charge's description already names its mechanism's parameters (the norm writes
        # it); the fields are spelled out only for a charge that comes without one.
        charges = _distinct(
            str(c["description"])
            if c.get("description")
            else f"σ = {c.get('noise_multiplier')}, q = {c.get('sample_rate')}, "
            f"{c.get('steps')} releases"
            for r in runs
            for c in (r.get("privacy_charges") or [])
            if isinstance(c, Mapping)
        )
        rows.append(
            [
                _code(norm),
                _cell_text(_join(_distinct(r.get("norm_dp_status") for r in runs))),
                _cell_text(_join(_distinct(r.get("norm_dp_note") for r in runs))),
                _cell_text(_join(charges, "none")),
            ]
        )
    lines = [
        "## How each norm is private",
        "",
        "From the records: what the norm reads across examples, and what that costs. A charge "
        "is composed with the DP-SGD steps by the run's accountant, so the ε spent above "
        "includes it; public data costs nothing.",
        "",
        tabulate(
            rows,
            ["norm", "status", "what it reads, what it costs", "charges in ε"],
            tablefmt="github",
            disable_numparse=True,
        ),
        "",
    ]
    masks = [r["sparsity"] for r in finals if isinstance(r.get("sparsity"), Mapping)]
    if masks:
        private = [m for m in masks if m.get("reads_private_data") is not False]
        lines += [
            f"Pre-pruning and gradient-dropping masks ({len(masks)} runs): "
            + (
                "none of them read private data, so they cost no ε."
                if not private
                else f"**{len(private)} runs' masks are not recorded as private-data-free.**"
            ),
            "",
        ]
    return lines


def _failed_section(not_ok: Sequence[Record]) -> list[str]:
    lines = ["## Failed and skipped runs", ""]
    if not not_ok:
        return [*lines, "None.", ""]
    rows = [
        [
            _code(_block(r)),
            _code(r["norm"]),
            _NA if r.get("seed") is None else str(r.get("seed")),
            r["status"],
            _cell_text(r.get("error") or "no reason recorded"),
        ]
        for r in sorted(
            not_ok,
            key=lambda r: (str(_block(r)), r["norm"], _seed_key(r.get("seed")), r["run_key"]),
        )
    ]
    table = tabulate(
        rows,
        ["backbone", "norm", "seed", "status", "reason"],
        tablefmt="github",
        disable_numparse=True,
    )
    if any(r["status"] == "interrupted" for r in not_ok):
        lines += [
            "`interrupted` runs ended by the infrastructure (a time limit, preemption, a lost "
            "worker, a job that ended without a record), not by the cell: re-running the suite "
            "runs them again. `failed` runs belong to the cell; `--retry-failed` re-runs them.",
            "",
        ]
    return [*lines, table, ""]


def _tuning_section(tuning: Sequence[Record], suite: Mapping) -> list[str]:
    """The protocol statement and the tuning table: each norm's mean validation accuracy per
    candidate value, the selected one marked (the best mean; the first listed wins a tie)."""
    if not tuning and not suite.get("tune"):
        return []
    n_val = _distinct(r.get("n_val") for r in tuning) or _distinct(
        [_section(suite, "data").get("val_split")]
    )
    lines = [
        "## Tuning (validation split)",
        "",
        f"Protocol: the hyperparameters below were tuned per norm on a validation split of "
        f"{_join(n_val)} private training examples, held out of the tuning runs, which are "
        "scored on it and never read the test set; the final runs above train on the whole "
        "private set (validation split included) at each norm's selected values and are scored "
        "on the test set. As in the literature, the privacy cost of the tuning stage itself is "
        "not in the reported ε (Papernot and Steinke, ICLR 2022, show how it could be "
        "accounted); each final run's ε is what that run spent.",
        "",
    ]
    tune = suite.get("tune") if isinstance(suite.get("tune"), Mapping) else {}
    changed = tune.get("overrides") if isinstance(tune.get("overrides"), Mapping) else {}
    if changed:
        text = ", ".join(f"`{k}={_cell_text(v)}`" for k, v in changed.items())
        swept = [k for k in changed if k in (suite.get("grid") or {})]
        lines += [
            f"The tuning runs ran with {text} (`tune.overrides`)"
            + (
                f"; {_join([f'`{k}`' for k in swept])} is swept by the grid, so every value of it "
                "shares these tuning runs and their selection, listed under the value the runs "
                "were made at."
                if swept
                else "."
            ),
            "",
        ]
    groups: dict[tuple[str, str], dict[tuple, list[float]]] = {}
    for r in tuning:
        values = r.get("tuned") if isinstance(r.get("tuned"), Mapping) else {}
        cell = groups.setdefault((str(_block(r)), str(r.get("norm"))), {})
        accs = cell.setdefault(tuple(sorted(values.items())), [])
        if r["status"] == "ok" and r.get("val_acc") is not None:
            accs.append(float(r["val_acc"]))
    rows = []
    for (block, norm), candidates in sorted(groups.items()):
        means = {c: sum(a) / len(a) for c, a in candidates.items() if a}
        best = max(means, key=means.get) if means else None
        for candidate, accs in candidates.items():
            text = ", ".join(f"{k}={v}" for k, v in candidate) or "-"
            acc = f"{100 * means[candidate]:.2f} (n={len(accs)})" if candidate in means else _NA
            rows.append(
                [_code(block), _code(norm), text, acc, "selected" if candidate == best else ""]
            )
    if rows:
        lines += [
            tabulate(
                rows,
                ["backbone", "norm", "values", "val accuracy % (mean, n)", ""],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
        ]
    else:
        lines += ["No tuning run recorded yet.", ""]
    return lines


def _planned_cells(suite: Mapping) -> list[dict]:
    """The grid cells listed in suite.json that are well-formed enough to report."""
    cells = suite.get("cells")
    if not isinstance(cells, list):
        return []
    return [c for c in cells if isinstance(c, Mapping) and isinstance(c.get("run_key"), str)]


def _missing_section(planned: Sequence[Mapping], recorded_keys: set[str]) -> list[str]:
    lines = ["## Missing cells", ""]
    missing = [c for c in planned if c["run_key"] not in recorded_keys]
    if not missing:
        return [*lines, f"All {len(planned)} cells of `{SUITE_FILE}` have a record.", ""]
    rows = [
        [
            _code(_block(c)),
            _code(c.get("norm")),
            _cell_text(c.get("seed")),
            _cell_text(c["run_key"]),
        ]
        for c in sorted(
            missing,
            key=lambda c: (
                str(_block(c)),
                str(c.get("norm")),
                _seed_key(c.get("seed")),
                c["run_key"],
            ),
        )
    ]
    return [
        *lines,
        f"{len(missing)} of {len(planned)} cells of `{SUITE_FILE}` have no record (not run yet, "
        "or the sweep was interrupted; re-running the suite resumes them).",
        "",
        tabulate(
            rows, ["backbone", "norm", "seed", "run key"], tablefmt="github", disable_numparse=True
        ),
        "",
    ]


def render_leaderboard(
    records: Sequence[Record],
    problems: Sequence[str],
    suite: Mapping,
    *,
    run_dir: Path,
    baseline: str,
    alpha: float,
) -> str:
    """The leaderboard's Markdown, from records already read.

    Deterministic: the output depends only on the arguments, everything is sorted, and no clock
    is read.

    Args:
        records: Records as returned by :func:`bench.results.records.read_records` (numeric
            fields finite numbers or None).
        problems: Messages about unusable lines of the records file.
        suite: The resolved suite (``suite.json``), or an empty dict.
        run_dir: The run directory (its name is the fallback suite name).
        baseline: The baseline norm's spec string.
        alpha: Family-wise significance level.

    Returns:
        The Markdown text, ending with a newline.
    """
    tuning = [r for r in records if _is_tuning(r)]
    collected = _collect([r for r in records if not _is_tuning(r)])
    planned = [c for c in _planned_cells(suite) if not _is_tuning(c)]
    planned_norms: dict[str, set[str]] = {}
    for c in planned:
        if isinstance(c.get("backbone"), str) and isinstance(c.get("norm"), str):
            planned_norms.setdefault(_block(c), set()).add(c["norm"])
    body: list[str] = []
    analyses: dict[str, stats.BackboneAnalysis] = {}
    for backbone in sorted(set(collected.cells) | set(planned_norms)):
        lines, analyses[backbone] = _backbone_section(
            backbone,
            collected.cells.get(backbone, {}),
            planned_norms.get(backbone, ()),
            baseline,
            alpha,
        )
        body += lines
    if not analyses:
        body += ["No records yet.", ""]
    body += _summary_section(analyses)
    body += _tuning_section(tuning, suite)
    body += _privacy_section(records)
    body += sweeps.rank_agreement_section(_ok_runs(collected))
    body += sweeps.value_effect_section(_ok_runs(collected), _section(suite, "grid"), alpha)
    body += sweeps.privacy_utility_section(_ok_runs(collected), alpha)

    has_ok = any(a.results for a in analyses.values())
    body += ["## Figures", ""]
    if has_ok:
        for name in figures.FIGURE_FILES:
            body += [f"![{Path(name).stem.replace('_', ' ')}]({name})", ""]
    else:
        body += ["No figures: there is no ok run.", ""]

    body += _failed_section(collected.not_ok)
    body += _stacks_section(records)
    planned_all = _planned_cells(suite)
    if planned_all:
        body += _missing_section(planned_all, {r["run_key"] for r in records})
    all_problems = [*problems, *collected.problems]
    if all_problems:
        body += ["## Problems in the records", ""]
        body += [f"- {_cell_text(p)}" for p in all_problems] + [""]

    header = _header(
        suite, records, len(all_problems), run_dir, baseline, alpha, list(analyses.values())
    )
    return "\n".join(header + body).rstrip("\n") + "\n"


def _ok_runs(collected: _Collected) -> dict[str, dict[str, dict[object, Record]]]:
    """The usable ok records by table, norm and seed, for the sections across swept values."""
    return {
        block: {norm: dict(cell.ok) for norm, cell in norms.items() if cell.ok}
        for block, norms in collected.cells.items()
    }


def figure_points(records: Sequence[Record]) -> list[figures.FigurePoint]:
    """One figure point per (backbone, norm) with ok runs, sorted by backbone then norm."""
    points = []
    cells = _collect(records).cells
    for backbone in sorted(cells):
        for norm, cell in sorted(cells[backbone].items()):
            if not cell.ok:
                continue
            acc = stats.mean_ci(list(cell.accuracy.values()), CONFIDENCE)
            points.append(
                figures.FigurePoint(
                    backbone=backbone,
                    norm=norm,
                    acc_pct=100 * acc.mean,
                    acc_half_width_pct=None if acc.half_width is None else 100 * acc.half_width,
                    throughput_img_s=_cell_measurements(cell)["throughput"],
                )
            )
    return points


def write_report(run_dir: Path, *, baseline: str | None = None, alpha: float | None = None) -> Path:
    """Write ``leaderboard.md`` and its figures into a run directory.

    Reads ``run_dir/records.jsonl`` and, when present, ``run_dir/suite.json`` (the resolved
    suite the runner writes: its name, description, data, privacy target, report settings and
    the full grid of cells, used to list cells that have no record yet). Bad lines of the
    records file are listed in the report, not raised. Same records give a byte-identical
    Markdown file.

    Args:
        run_dir: Directory holding ``records.jsonl`` (``reports/<suite>``).
        baseline: Baseline norm spec; default: the suite's ``report.baseline``, else
            ``group_norm``.
        alpha: Family-wise significance level; default: the suite's ``report.alpha``, else 0.05.

    Returns:
        The path of the leaderboard.

    Raises:
        RecordsError: When the records file is missing or unreadable, or suite.json is not
            valid JSON.
        ConfigError: When alpha is not in (0, 0.5).
    """
    run_dir = Path(run_dir)
    text, read = _leaderboard(run_dir, baseline, alpha)
    points = figure_points([r for r in read.records if not _is_tuning(r)])
    if points:
        figures.write_figures(run_dir, points)
    curve = sweeps.curve_points(_ok_runs(_collect(read.records)))
    if curve:
        figures.write_privacy_utility(run_dir, curve)
    path = run_dir / LEADERBOARD_FILE
    path.write_text(text, encoding="utf-8")
    return path


def leaderboard_text(
    run_dir: Path, *, baseline: str | None = None, alpha: float | None = None
) -> str:
    """The Markdown `write_report` would write for ``run_dir``, without writing it or figures."""
    return _leaderboard(Path(run_dir), baseline, alpha)[0]


def _leaderboard(
    run_dir: Path, baseline: str | None, alpha: float | None
) -> tuple[str, RecordsRead]:
    records_path = run_dir / RECORDS_FILE
    read = read_records(records_path)
    suite = _load_suite(run_dir / SUITE_FILE)
    resolved_alpha = _resolve_alpha(alpha, suite)
    resolved_baseline = baseline or _section(suite, "report").get("baseline") or DEFAULT_NORM
    # The leaderboard sits beside the records file, so the file's own name is the useful
    # reference (and an absolute path would make the report depend on where it was built).
    prefix = f"{records_path}:"
    problems = [
        RECORDS_FILE + ":" + p[len(prefix) :] if p.startswith(prefix) else p for p in read.problems
    ]
    text = render_leaderboard(
        read.records,
        problems,
        suite,
        run_dir=run_dir,
        baseline=str(resolved_baseline),
        alpha=resolved_alpha,
    )
    return text, read
