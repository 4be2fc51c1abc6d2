"""Tuning a reviewer accepts (issue 27, item 6): three tuning seeds by default, a grid refined
around the coarse optimum, and a selection rule that rejects a candidate failing in any seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.errors import ConfigError
from bench.plan import plan_cells
from bench.privacy_tuning import composed, run_history
from bench.results.records import append_record, read_every_record, read_records, superseded_path
from bench.suite import load_suite
from bench.sweep.cost import cells_to_run
from bench.sweep.options import RunOptions
from bench.sweep.protocol import (
    refine_cells,
    refined_values,
    select,
    select_coarse,
    selection_lines,
    tune_cells,
    tuning_by_group,
)
from bench.sweep.restate import restate, taken_history
from bench.sweep.run import _final_stage, run_suite
from tests.tiny_suite import tiny_tune


def _suite(tmp_path: Path, text: str, name: str = "tune.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_suite(path)


def test_refined_values_are_geometric_midpoints_around_the_optimum():
    grid = [0.25, 0.5, 1.0, 2.0]
    assert refined_values(grid, 1.0) == [0.7071, 1.414]
    # At an edge: one half-step beyond it, so the optimum is bracketed from both sides.
    assert refined_values(grid, 2.0) == [1.414, 2.828]
    assert refined_values(grid, 0.25) == [0.1768, 0.3536]
    # Not refined: integer counts, a single value, non-positive values.
    assert refined_values([8, 16, 32], 16) == []
    assert refined_values([0.5], 0.5) == []
    assert refined_values([0.0, 1.0], 1.0) == []


def test_defaults_are_three_seeds_refinement_and_the_stable_rule(tmp_path):
    text = tiny_tune().replace("  seeds: [0]\n", "").replace("\n  refine: false", "")
    tune = _suite(tmp_path, text).tune
    assert (tune.seeds, tune.refine, tune.rule) == ((0, 1, 2), True, "stable")


@pytest.mark.parametrize(
    ("line", "match"),
    [("refine: 1", r"tune\.refine: must be true or false"), ("rule: best", r"tune\.rule: is not")],
)
def test_bad_refine_or_rule_is_one_clear_error(tmp_path, line, match):
    text = tiny_tune().replace("  refine: false", f"  {line}")
    with pytest.raises(ConfigError, match=match):
        _suite(tmp_path, text)


def test_tuning_runs_that_stop_on_the_private_loss_are_refused(tmp_path):
    """The selection reads whether a tuning run diverged: that must not come from the
    un-noised private loss, from the training section or the tuning overrides."""
    steps = "overrides: {training.steps: 2"
    checked = tiny_tune().replace("  lr: 1.0\n", "  lr: 1.0\n  divergence_check: private_loss\n")
    with pytest.raises(ConfigError, match=r"training\.divergence_check: is private_loss in tuning"):
        _suite(tmp_path, checked)
    fixed = checked.replace(steps, steps + ", training.divergence_check: parameters")
    assert ("training.divergence_check", "parameters") in _suite(tmp_path, fixed).tune.overrides
    broken = tiny_tune().replace(steps, steps + ", training.divergence_check: private_loss")
    with pytest.raises(ConfigError, match=r"tune\.overrides\.training\.divergence_check: is"):
        _suite(tmp_path, broken)


def _history(cell):
    """One run's planned accountant history (its DP-SGD steps and charges), composed."""
    (plan,) = plan_cells([cell])
    return composed(
        [run_history(plan.charges, plan.noise_multiplier, plan.sample_rate, plan.steps)]
    )


def _records(cells, scores):
    """Tuning records for ``cells``: ``scores[(lr, seed)]`` is a val_acc, or None for failed."""
    out = []
    for c in cells:
        acc = scores[(c.tuned["training.lr"], c.seed)]
        out.append(
            {
                "run_key": c.run_key,
                "status": "ok" if acc is not None else "failed",
                "val_acc": acc,
                "num_classes": 10,
                "stage": "tune",
            }
        )
    return out


def test_the_stable_rule_rejects_a_candidate_that_failed_or_collapsed_in_any_seed(tmp_path):
    suite = _suite(tmp_path, tiny_tune(norms="group_norm", seeds="0", tune_seeds="0, 1, 2"))
    cells = tune_cells(suite)
    # lr 2 has the best mean over its ok runs but failed once; lr 0.5 never failed.
    failed = {(0.5, 0): 0.30, (0.5, 1): 0.31, (0.5, 2): 0.29}
    failed |= {(2.0, 0): 0.45, (2.0, 1): 0.46, (2.0, 2): None}
    (chosen,) = select(suite, _records(cells, failed)).values()
    assert chosen.values == {"training.lr": 0.5} and chosen.rule == "stable"
    assert [c.failures for c in chosen.table] == [0, 1]
    # A collapsed seed (ok, but within report.collapse_pp = 2 pp of chance 10 %) is a failure too.
    collapsed = {**failed, (2.0, 2): 0.11}
    (chosen,) = select(suite, _records(cells, collapsed)).values()
    assert chosen.values == {"training.lr": 0.5}
    # The old rule (best mean over ok runs) takes the unstable rate.
    mean_rule = _suite(
        tmp_path,
        tiny_tune(norms="group_norm", seeds="0", tune_seeds="0, 1, 2").replace(
            "refine: false", "refine: false\n  rule: mean"
        ),
        "mean.yaml",
    )
    (chosen,) = select(mean_rule, _records(tune_cells(mean_rule), collapsed)).values()
    assert chosen.values == {"training.lr": 2.0} and chosen.rule == "mean"
    # Every candidate failed somewhere: the fewest failures decide, and the rule says so.
    both = {**failed, (0.5, 1): None, (0.5, 2): None}
    (chosen,) = select(suite, _records(cells, both)).values()
    assert chosen.values == {"training.lr": 2.0} and chosen.rule == "stable, fallback"


def test_refinement_runs_after_the_coarse_optimum_and_the_selection_waits_for_it(tmp_path):
    suite = _suite(tmp_path, tiny_tune(norms="group_norm", seeds="0", refine=True))
    coarse = tune_cells(suite)
    records = _records(coarse, {(0.5, 0): 0.2, (2.0, 0): 0.4})
    best = select_coarse(suite, records)
    refined = refine_cells(suite, best)
    # Optimum 2.0 at the grid's top: sqrt(0.5 x 2) = 1 below it, 2 x sqrt(2 / 0.5) = 4 above.
    assert sorted(c.tuned["training.lr"] for c in refined) == [1.0, 4.0]
    (waiting,) = select(suite, records).values()
    assert waiting.values is None and waiting.missing == 2
    records += _records(refined, {(1.0, 0): 0.5, (4.0, 0): 0.1})
    (chosen,) = select(suite, records).values()
    assert chosen.values == {"training.lr": 1.0} and len(chosen.table) == 4
    # The procedure's privacy composes every run its selection read: coarse and refined.
    (group,) = tuning_by_group(suite, records).values()
    assert len(group) == 4


def test_a_refined_sweep_runs_coarse_refined_and_final_runs_and_sizes_them(tmp_path):
    suite = _suite(tmp_path, tiny_tune(norms="group_norm", seeds="0", refine=True))
    out = tmp_path / "out"
    todo, tuning, _ = cells_to_run(suite, out / "records.jsonl")
    assert (len(todo), tuning) == (2 + 2 + 1, 4)  # coarse, refined (sized), final
    summary = run_suite(suite, RunOptions(out_dir=out, progress=False, report=False))
    assert summary.total == summary.ran == 5 and summary.statuses == {"ok": 5}
    records = read_records(out / "records.jsonl").records
    tuned = sorted({r["tuned"]["training.lr"] for r in records if r["stage"] == "tune"})
    assert len(tuned) == 4 and {0.5, 2.0} <= set(tuned)
    (final,) = [r for r in records if r["stage"] == "final"]
    assert final["tuned"] == select(suite, records)[next(iter(select(suite, records)))].values
    # The record's own spending, read back from its fields, is what the engine composed with
    # the tuning runs: a current record is never revised (`bench.sweep.restate`).
    (cell,), _, _ = _final_stage(suite, out / "records.jsonl", RunOptions(out_dir=out))
    composed_now = composed([cell.tuning_history, taken_history(final)])
    assert [list(e) for e in composed_now] == final["epsilon_with_tuning_history"]
    assert restate(out / "records.jsonl", [cell]) == 0


def test_a_refinement_left_behind_by_a_moved_coarse_optimum_is_still_charged(tmp_path):
    """lr 2 fails, so the refinement goes around lr 0.5 (0.25 and 1); a retried lr 2 then
    scores best and the refinement moves around it (1 and 4). The run at 0.25 trained on the
    private set and its score is published: the procedure's epsilon composes it, though the
    selection no longer reads it."""
    suite = _suite(tmp_path, tiny_tune(norms="group_norm", seeds="0", refine=True))
    records = _records(tune_cells(suite), {(0.5, 0): 0.2, (2.0, 0): None})
    first = refine_cells(suite, select_coarse(suite, records))
    assert sorted(c.tuned["training.lr"] for c in first) == [0.25, 1.0]
    records += _records(first, {(0.25, 0): 0.1, (1.0, 0): 0.3})
    retried = [c for c in tune_cells(suite) if c.tuned["training.lr"] == 2.0]
    records += _records(retried, {(2.0, 0): 0.4})  # --retry-failed: the newest record counts
    moved = refine_cells(suite, select_coarse(suite, records))
    assert sorted(c.tuned["training.lr"] for c in moved) == [1.0, 4.0]
    (waiting,) = select(suite, records).values()
    assert waiting.values is None and waiting.missing == 1  # lr 4 has not run
    (group,) = tuning_by_group(suite, records).values()
    # lr 2 trained twice (failed, then retried): both runs are charged.
    assert sorted(c.tuned["training.lr"] for c in group) == [0.25, 0.5, 1.0, 2.0, 2.0, 4.0]
    assert len({c.run_key for c in group}) == 5


def test_a_tuning_run_replaced_by_a_rerun_is_charged_again(tmp_path):
    """A failed (or, under --force, ok) tuning run a re-run replaced trained on the private set
    and decided the re-run: it stays charged, from the superseded file. An interrupted record
    is not a run of its own, and a record left in both files by a kill counts once."""
    suite = _suite(tmp_path, tiny_tune(norms="group_norm", seeds="0"))
    cells = tune_cells(suite)
    path = tmp_path / "out" / "records.jsonl"
    lr2 = next(c for c in cells if c.tuned["training.lr"] == 2.0)
    (interrupted,) = _records([lr2], {(2.0, 0): None})
    interrupted["status"] = "interrupted"
    for record in [
        interrupted,  # resumed from its checkpoint: the failed record below is the same run
        *_records(cells, {(0.5, 0): 0.2, (2.0, 0): None}),
        *_records([lr2], {(2.0, 0): 0.3}),  # --retry-failed
        {**_records([lr2], {(2.0, 0): 0.4})[0], "finished": "later"},  # --force
    ]:
        append_record(path, record)
    replaced = read_every_record(superseded_path(path))
    assert [r["status"] for r in replaced] == ["interrupted", "failed", "ok"]
    (group,) = tuning_by_group(suite, read_records(path).records, replaced).values()
    assert sorted(c.tuned["training.lr"] for c in group) == [0.5, 2.0, 2.0, 2.0]
    replaced.append(replaced[1])  # left in both files by a kill
    (group,) = tuning_by_group(suite, read_records(path).records, replaced).values()
    assert len(group) == 4
    # The final cell composes all four runs: 4 x (the run's steps and its noisy score).
    (final,) = _final_stage(suite, path, RunOptions(out_dir=path.parent, progress=False))[0]
    per_run = _history(tune_cells(suite)[0])
    assert final.tuning_history == tuple((s, q, 4 * n) for s, q, n in per_run)


def test_a_replaced_run_left_in_the_records_file_is_charged_too(tmp_path):
    """A records file written before a re-run's record replaced the old one (or merged by
    hand) holds the failed run beside its retry: both trained, both are charged."""
    suite = _suite(tmp_path, tiny_tune(norms="group_norm", seeds="0"))
    cells = tune_cells(suite)
    lr2 = next(c for c in cells if c.tuned["training.lr"] == 2.0)
    lines = [*_records(cells, {(0.5, 0): 0.2, (2.0, 0): None}), *_records([lr2], {(2.0, 0): 0.3})]
    path = tmp_path / "out" / "records.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    (final,) = _final_stage(suite, path, RunOptions(out_dir=path.parent, progress=False))[0]
    per_run = _history(tune_cells(suite)[0])
    assert final.tuning_history == tuple((s, q, 3 * n) for s, q, n in per_run)


def test_a_final_run_retried_after_it_failed_charges_the_failed_attempt(tmp_path):
    """--retry-failed on a final run: the failed attempt trained on the private set and its
    failure decided the retry, so the retry's epsilon_with_tuning composes it (once per
    earlier finished attempt); the first attempt composes the tuning stage alone."""
    suite = _suite(tmp_path, tiny_tune(norms="group_norm", seeds="0"))
    path = tmp_path / "out" / "records.jsonl"
    for record in _records(tune_cells(suite), {(0.5, 0): 0.2, (2.0, 0): 0.3}):
        append_record(path, record)
    options = RunOptions(out_dir=path.parent, progress=False, retry_failed=True)
    _, (first,), _ = _final_stage(suite, path, options)
    own = _history(first)
    append_record(path, {"run_key": first.run_key, "status": "failed", "stage": "final"})
    _, (retry,), _ = _final_stage(suite, path, options)
    assert retry.run_key == first.run_key
    assert retry.tuning_history == composed([first.tuning_history, own])
    append_record(path, {"run_key": first.run_key, "status": "failed", "stage": "final", "n": 2})
    _, (third,), _ = _final_stage(suite, path, options)
    assert third.tuning_history == composed([first.tuning_history, own, own])


def test_a_point_whose_every_tuning_run_failed_says_so(tmp_path):
    suite = _suite(tmp_path, tiny_tune(norms="group_norm", seeds="0"))
    records = _records(tune_cells(suite), {(0.5, 0): None, (2.0, 0): None})
    (line,) = selection_lines(select(suite, records))
    assert "no selection (every tuning run failed" in line and "not finished" not in line
