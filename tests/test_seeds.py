"""Named random streams: no two (seed, purpose) pairs share a stream, and a run uses them all."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import bench.data
from bench.seeds import (
    RUN_STREAMS,
    SECRET_STREAMS,
    STREAM_SCHEME,
    cell_stream_seed,
    stream,
    stream_seed,
)
from bench.suite import load_suite
from bench.train.cell import train_cell
from bench.train.setup import Run, cell_stream, setup_run
from tests.tiny_suite import TINY


def test_streams_of_different_seeds_and_purposes_are_distinct():
    seeds = {stream_seed(s, p) for s in range(64) for p in RUN_STREAMS}
    assert len(seeds) == 64 * len(RUN_STREAMS)
    # the collision the old `seed + k` scheme had: seed s's noise was seed s+4's sampling
    assert stream_seed(0, "noise") != stream_seed(4, "sampling")


def test_a_stream_is_reproducible_and_device_local():
    a = torch.rand(5, generator=stream(3, "sampling"))
    assert torch.equal(a, torch.rand(5, generator=stream(3, "sampling")))
    assert not torch.equal(a, torch.rand(5, generator=stream(3, "augmentation")))


def test_a_run_draws_each_source_from_its_own_named_stream(tmp_path, monkeypatch):
    """Augmentation and the non-private timing each get their own stream of the seed, seed 1's
    streams are none of seed 0's, and the secret streams (sampling, noise) are not the seed's:
    they are the cell's own (`test_cells_that_differ_only_in_..._share_no_secret_stream`)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    cells = load_suite(path, ["grid.norm=[group_norm]", "grid.seed=[0, 1]"]).cells()
    asked: list[tuple[int, str]] = []
    real = bench.data.DeviceData.generator

    def spy(self, seed, purpose):
        asked.append((seed, purpose))
        return real(self, seed, purpose)

    monkeypatch.setattr(bench.data.DeviceData, "generator", spy)
    for cell in cells:
        train_cell(cell, torch.device("cpu"))
    purposes = {p for _s, p in asked}
    assert {"augmentation", "nonprivate"} <= purposes
    assert not purposes & set(SECRET_STREAMS)
    streams = {seed: {stream_seed(seed, p) for s, p in asked if s == seed} for seed in (0, 1)}
    assert len(streams[0]) == len(purposes)  # one stream per purpose within a run
    assert streams[0].isdisjoint(streams[1])


def _secret_draws(run: Run, cell=None) -> dict[str, torch.Tensor]:
    """What ``cell`` (default: the run's) draws first from each secret stream: a Poisson batch,
    DP-SGD noise and a norm's statistics coins, on ``run``'s data."""
    cell = cell or run.cell
    sampling = cell_stream(cell, run.data, "sampling")
    return {
        "sampling": run.data.poisson_batch(run.plan.batch_size, sampling),
        "noise": torch.randn(16, generator=cell_stream(cell, run.data, "noise")),
        "norm": torch.rand(16, generator=cell_stream(cell, run.data, "norm.stats.0")),
    }


@pytest.mark.parametrize(
    "grid",
    [
        "grid.privacy.epsilon=[2.0, 8.0]",
        "grid.training.lr=[0.5, 1.0]",
        "grid.training.steps=[3, 4]",
    ],
)
def test_cells_that_differ_only_in_one_key_share_no_secret_stream(tiny, grid):
    """Issue 26, item 2: two cells of one seed that differ only in epsilon, the learning rate or
    the step count draw different noise (the optimizer's own generator included) and different
    Poisson batches; the same cell set up twice draws the same."""
    cells = load_suite(tiny, ["grid.seed=[0]", "grid.norm=[group_norm]", grid]).cells()
    assert len(cells) == 2 and cells[0].seed == cells[1].seed
    runs = [setup_run(c, torch.device("cpu")) for c in cells]
    again = setup_run(cells[0], torch.device("cpu"))
    first, second, repeat = (_secret_draws(r) for r in (*runs, again))
    for purpose in first:
        assert not torch.equal(first[purpose], second[purpose]), purpose
        assert torch.equal(first[purpose], repeat[purpose]), purpose
    optimizer_noise = [torch.randn(16, generator=r.dp_step.optimizer.generator) for r in runs]
    assert not torch.equal(*optimizer_noise)
    assert torch.equal(optimizer_noise[0], first["noise"])  # the optimizer draws the cell's own
    # Not secret: initialisation and augmentation stay common random numbers of the seed.
    weights = [list(r.model.state_dict().values()) for r in runs]
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    augmentation = [torch.rand(4, generator=r.stream("augmentation")) for r in runs]
    assert torch.equal(*augmentation)


def test_a_tuning_run_and_the_final_run_of_its_seed_share_no_secret_stream(tiny):
    """The tuning stage is part of a cell's identity: tuning seed 0 and final seed 0 at the same
    learning rate draw different noise and batches."""
    (final,) = load_suite(tiny, ["grid.seed=[0]", "grid.norm=[group_norm]"]).cells()
    tune = dataclasses.replace(final, stage="tune")
    assert tune.run_key != final.run_key
    run = setup_run(final, torch.device("cpu"))
    at_final, at_tune = _secret_draws(run), _secret_draws(run, tune)
    for purpose in at_final:
        assert not torch.equal(at_final[purpose], at_tune[purpose]), purpose


def test_secret_stream_seeds_hash_the_run_key_and_the_record_says_so(tiny):
    assert cell_stream_seed(0, "noise", "a" * 16) != cell_stream_seed(0, "noise", "b" * 16)
    assert cell_stream_seed(0, "noise", "a" * 16) != stream_seed(0, "noise")
    (cell,) = load_suite(tiny, ["grid.seed=[0]", "grid.norm=[group_norm]"]).cells()
    record = train_cell(
        dataclasses.replace(
            cell, training=dataclasses.replace(cell.training, measure_nonprivate=False)
        ),
        torch.device("cpu"),
    )
    assert record["stream_scheme"] == STREAM_SCHEME
    assert "run key" in record["random_streams"]
