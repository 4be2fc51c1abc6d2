"""Filling `FrozenStatsNorm` statistics: from public data, with DP, or refreshed during training.

Layers are calibrated one after the other in forward order, each with every earlier layer
already frozen, so each layer's statistics describe the inputs it will see. The ``private_dp``
release of a layer is the subsampled Gaussian mechanism on its clipped per-example moments
(`gaussian_sum`), divided by the expected count; `planned_charge` is its cost.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from norms.errors import NormSpecError
from norms.frozen_stats import FrozenStatsNorm, frozen_stats_layers
from norms.lifecycle import PrivacyCharge, RunData


class PoissonSubsets:
    """The calibration input batches of a ``private_dp`` model: one fresh Poisson subsample of
    the private set per call (that is, per layer), each from its own named random stream.

    Each example joins call j's subsample independently with probability ``sample_rate``,
    decided by the j-th stream alone, so the coins of the other examples do not depend on
    whether one example is present (the coupling the add/remove analysis assumes).
    """

    def __init__(self, data: RunData, sample_rate: float, purpose: str):
        self.data, self.sample_rate, self.purpose = data, sample_rate, purpose
        self.calls = 0

    def __call__(self) -> Iterator[torch.Tensor]:
        generator = self.data.generator(f"{self.purpose}.{self.calls}")
        self.calls += 1
        n = self.data.num_private
        coins = torch.rand(n, generator=generator, device=generator.device)
        picked = torch.nonzero(coins < self.sample_rate, as_tuple=True)[0]
        return self.data.batches(self.data.private_x[picked.to(self.data.private_x.device)])()


class _StopForward(Exception):
    """Raised by a hook to cut a calibration forward pass short once its layer has been read."""


def per_example_moments(x: torch.Tensor) -> torch.Tensor:
    """Each example's per-channel (mean, mean of squares) over H and W, shape (N, 2C)."""
    x = x.double()
    return torch.cat([x.mean(dim=(2, 3)), x.square().mean(dim=(2, 3))], dim=1)


def clip_rows(v: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale each row of ``v`` down to L2 norm at most ``max_norm``."""
    norms = v.norm(dim=1, keepdim=True)
    return v * (max_norm / norms.clamp_min(max_norm))


def gaussian_sum(
    contributions: torch.Tensor,
    max_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Sum of the clipped rows plus N(0, (noise_multiplier * max_norm)^2) noise per coordinate.

    Adding or removing one example changes the clipped sum by at most ``max_norm`` in L2 norm,
    so this is the Gaussian mechanism with the given noise multiplier.
    """
    total = clip_rows(contributions, max_norm).sum(dim=0)
    noise = torch.randn(
        total.shape,
        generator=generator,
        dtype=total.dtype,
        device=generator.device if generator is not None else total.device,
    )
    return total + noise.to(total.device) * (noise_multiplier * max_norm)


def planned_charge(model: nn.Module, sample_rate: float = 1.0) -> PrivacyCharge | None:
    """The privacy charge `calibrate` will make on ``model``, known before any data is read.

    DP-SGD's noise is calibrated for the budget that remains after this charge, so it must be
    known up front; it depends only on the layers' configuration and on the sampling rate of
    the calibration examples (``k / N``; 1 when every private example is read), never on the
    data.
    """
    layers = frozen_stats_layers(model)
    private = [layer for layer in layers if layer.stats == "private_dp"]
    if not private:
        return None
    sigma = private[0].noise_multiplier
    if any(layer.noise_multiplier != sigma for layer in private) or len(private) != len(layers):
        raise NormSpecError("dp_batch_norm layers of one model must share stats and noise")
    if not 0 < sample_rate <= 1:
        raise NormSpecError(f"dp_batch_norm: sampling rate must be in (0, 1], got {sample_rate}")
    return PrivacyCharge(
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=len(private),
        description=f"dp_batch_norm statistics: {len(private)} Gaussian releases "
        f"(noise multiplier {sigma}, Poisson rate {sample_rate:.4g}) of clipped per-example "
        "channel moments",
    )


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Callable[[], Iterable[torch.Tensor]],
    *,
    generator: torch.Generator | None = None,
    expected_count: float | None = None,
    example: torch.Tensor | None = None,
    sample_rate: float = 1.0,
) -> PrivacyCharge | None:
    """Fill and freeze the statistics of every `FrozenStatsNorm` layer of ``model``.

    Args:
        model: The model; its other layers are used as they are (eval mode is set meanwhile).
        batches: Called once per layer; returns that layer's calibration inputs as batches.
            For ``public`` layers these must be public examples only; for ``private_dp``
            layers either every private example (``sample_rate`` 1) or a fresh Poisson
            subsample at ``sample_rate`` per call (`PoissonSubsets`), which may be empty.
        generator: Source of the Gaussian noise for ``private_dp`` layers.
        expected_count: For ``private_dp``: the public count the noisy sums are divided by
            (``sample_rate * N``); None divides by the count read, which is only private-safe
            when every example is read and N is public.
        example: An input whose forward pass fixes the order the layers are reached in;
            default: the first example of the first call of ``batches``.
        sample_rate: The rate the ``private_dp`` examples were sampled at, for the charge.

    Returns:
        The privacy cost to charge (``private_dp``), or None when nothing private was read.
    """
    if not frozen_stats_layers(model):
        return None
    was_training = model.training
    model.eval()
    try:
        if example is None:
            first = next(iter(batches()), None)
            if first is None:
                raise NormSpecError("dp_batch_norm calibration received no examples")
            example = first[:1]
        layers = frozen_stats_layers(model, example[:1])
    finally:
        model.train(was_training)
    variants = {layer.stats for layer in layers}
    if len(variants) > 1:
        raise NormSpecError(f"a model mixes dp_batch_norm variants {sorted(variants)}")
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            _calibrate_layer(model, layer, batches, generator, expected_count)
    finally:
        model.train(was_training)
    return planned_charge(model, sample_rate)


def _calibrate_layer(
    model: nn.Module,
    layer: FrozenStatsNorm,
    batches: Callable[[], Iterable[torch.Tensor]],
    generator: torch.Generator | None,
    expected_count: float | None,
) -> None:
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(per_example_moments(inputs[0]))
        raise _StopForward

    handle = layer.register_forward_pre_hook(hook)
    try:
        for batch in batches():
            if batch.shape[0] == 0:
                continue
            with contextlib.suppress(_StopForward):
                model(batch)
    finally:
        handle.remove()
    private = layer.stats == "private_dp"
    if not captured and not (private and expected_count is not None):
        raise NormSpecError("dp_batch_norm calibration received no examples")
    # A Poisson subsample may be empty: the release is then noise alone.
    moments = (
        torch.cat(captured)
        if captured
        else torch.zeros(0, 2 * layer.num_channels, dtype=torch.float64, device=layer.mean.device)
    )
    if private:
        max_norm = layer.clip * math.sqrt(2 * layer.num_channels)
        total = gaussian_sum(moments, max_norm, layer.noise_multiplier, generator)
    else:
        total = moments.sum(dim=0)
    # Private sums are divided by the expected count, which the configuration fixes: the
    # realised count of a Poisson subsample depends on the data and is not released.
    count = expected_count if private and expected_count is not None else moments.shape[0]
    _set_statistics(layer, total, count)


def _set_statistics(layer: FrozenStatsNorm, total: torch.Tensor, count: float) -> None:
    """Set the layer's mean and variance from a (sum of means, sum of second moments) vector."""
    mean, second = (total / count).split(layer.num_channels)
    var = (second - mean.square()).clamp_min(0.0)
    layer.mean.copy_(mean.to(layer.mean.dtype))
    layer.var.copy_(var.to(layer.var.dtype))
    layer.calibrated.fill_(True)


@torch.no_grad()
def refresh_statistics(model: nn.Module, reference: torch.Tensor) -> None:
    """Recompute every `FrozenStatsNorm` layer's statistics from ``reference`` through the
    current network, in one forward pass.

    When the pass reaches a layer, a forward pre-hook sets the layer's statistics from its own
    input, which the layer then normalises with; so each layer's statistics describe the inputs
    it will see given the earlier layers' new statistics, as `calibrate` on the same batch
    computes layer by layer, at the cost of one forward pass instead of one per layer. The
    model is in eval mode meanwhile (no dropout); nothing is differentiated.

    Args:
        model: The model, with ``stats=public`` layers only (this reads no private data).
        reference: Model inputs of public examples only, taken as one batch.

    Raises:
        NormSpecError: A layer is not ``public``, ``reference`` is empty, or the pass does not
            reach every layer.
    """
    layers = frozen_stats_layers(model)
    if not layers:
        return
    if any(layer.stats != "public" for layer in layers):
        raise NormSpecError("dp_batch_norm: only stats=public statistics can be refreshed")
    if reference.shape[0] == 0:
        raise NormSpecError("dp_batch_norm: the public reference batch is empty")
    reached: set[int] = set()

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if id(layer) in reached:  # a layer run twice keeps its first input's statistics
            return
        reached.add(id(layer))
        moments = per_example_moments(inputs[0])
        _set_statistics(layer, moments.sum(dim=0), moments.shape[0])

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        model(reference)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if len(reached) < len(layers):
        raise NormSpecError(
            f"dp_batch_norm: {len(layers) - len(reached)} of {len(layers)} layers were not "
            "reached by the reference batch's forward pass"
        )


def calibrate_private(
    model: nn.Module, data: RunData, *, sample_rate: float, expected_count: float
) -> PrivacyCharge | None:
    """The ``private_dp`` mechanism: each layer's noisy clipped moment sum over its own Poisson
    subsample of ``data.private_x`` at ``sample_rate``, divided by ``expected_count``.

    Returns:
        Its charge: (noise multiplier, ``sample_rate``, one release per layer).
    """
    return calibrate(
        model,
        PoissonSubsets(data, sample_rate, "dp_batch_norm.calibration_subset"),
        generator=data.generator("dp_batch_norm.noise"),
        expected_count=expected_count,
        # One example fixes the order the layers are reached in (the architecture's, not the
        # data's); no statistic reads it.
        example=data.to_input(data.private_x[:1]),
        sample_rate=sample_rate,
    )
