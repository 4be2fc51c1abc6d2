"""Named random streams: no two (seed, purpose) pairs share a stream, and a run uses them all."""

from __future__ import annotations

import torch

import bench.data
from bench.seeds import RUN_STREAMS, stream, stream_seed
from bench.suite import load_suite
from bench.train.cell import train_cell
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
    """Sampling, augmentation, noise and the non-private timing each get their own stream, and
    seed 1's streams are none of seed 0's."""
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
    assert {"sampling", "augmentation", "noise", "nonprivate"} <= purposes
    streams = {seed: {stream_seed(seed, p) for s, p in asked if s == seed} for seed in (0, 1)}
    assert len(streams[0]) == len(purposes)  # one stream per purpose within a run
    assert streams[0].isdisjoint(streams[1])
