"""The CPU tensor-memory tracker counts what a step allocates and holds, nothing else."""

from __future__ import annotations

import torch

from bench.measure import TensorPeak, tensor_peak_bytes

MIB = 2**20


def test_peak_counts_tensors_held_together_not_tensors_held_in_turn():
    def in_turn():
        for _ in range(3):
            t = torch.ones(MIB // 4)  # 1 MiB of float32, freed before the next
            del t

    def together():
        kept = [torch.ones(MIB // 4) for _ in range(3)]
        return kept

    assert tensor_peak_bytes(in_turn) == MIB
    assert tensor_peak_bytes(together) == 3 * MIB


def test_views_in_place_results_and_earlier_tensors_are_not_counted():
    before = torch.zeros(MIB)  # 4 MiB that existed before the context

    def step():
        before.view(-1, 4).t()[0]  # views of an old tensor
        before.add_(1.0)  # in place
        y = before[: MIB // 4] * 2  # 1 MiB, new
        y.mul_(3)
        return y.view(2, -1)

    assert tensor_peak_bytes(step) == MIB


def test_live_bytes_fall_back_when_tensors_die():
    with TensorPeak() as tracker:
        a = torch.ones(MIB // 4)
        b = a + 1
        assert tracker.live == 2 * MIB
        del a, b
    assert tracker.live == 0 and tracker.peak == 2 * MIB


def test_autograd_buffers_are_counted():
    w = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(1024, 256)

    def step():
        (x @ w).relu().sum().backward()

    # the (1024, 256) product and its ReLU (saved for backward), and w's gradient
    assert tensor_peak_bytes(step) >= 2 * MIB
