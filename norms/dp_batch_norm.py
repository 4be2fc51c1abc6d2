"""DP-safe BatchNorm: normalise with frozen statistics taken from public data or estimated with DP.

Plain BatchNorm normalises each example with statistics of its batch, so one example changes
every other example's output and DP-SGD's per-sample sensitivity bound no longer holds. Here
the statistics are computed once, before training, and then frozen:

* ``stats=public``: from data the suite declares public (excluded from the private set);
  no privacy cost.
* ``stats=private_dp``: from the private data with the Gaussian mechanism: each example's
  per-channel (mean, second moment) vector is clipped in L2 norm and Gaussian noise is added to
  the sum, once per layer. The cost is returned as a `PrivacyCharge` that the run composes with
  DP-SGD's in the accountant (Tramer & Boneh's normalisation of ScatterNet features does the
  same).

Layers are calibrated one after the other in forward order, each with every earlier layer
already frozen, so each layer's statistics describe the inputs it will see.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

from norms.clipping import AffineRule, register_clip_rule
from norms.errors import NormSpecError
from norms.lifecycle import PrivacyCharge, RunData
from norms.registry import ResolvedNorm, register_norm

STATS_VARIANTS = ("public", "private_dp")


class ChannelAffine(nn.Module):
    """Per-channel scale and shift of an NCHW tensor (the affine part of a frozen-stats norm)."""

    def __init__(self, num_channels: int, *, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


@register_grad_sampler(ChannelAffine)
def channel_affine_grad_sample(
    layer: ChannelAffine, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients of `ChannelAffine`: sums over the spatial positions of one example."""
    x = activations[0]
    ret: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        ret[layer.weight] = (x * backprops).sum(dim=(2, 3))
    if layer.bias.requires_grad:
        ret[layer.bias] = backprops.sum(dim=(2, 3))
    return ret


@register_clip_rule(ChannelAffine)
class ChannelAffineClipRule(AffineRule):
    """Book-keeping rule of `ChannelAffine`: the weight multiplies the input itself."""

    def normalised(self, layer, x):
        return x, (2, 3)


class FrozenStatsNorm(nn.Module):
    """Normalise each channel with frozen statistics, then apply a learnable per-channel affine.

    The statistics are buffers of this container, which has no parameters of its own, and the
    affine is a child module without buffers: Opacus refuses trainable layers that hold buffers
    (their state would not be private), and this split keeps both facts true.

    Args:
        stats: ``public`` or ``private_dp``, how `calibrate` fills the statistics.
        clip: For ``private_dp``, the bound on one example's contribution per coordinate of its
            (mean, second moment) vector: the vector is clipped to L2 norm
            ``clip * sqrt(2 * num_channels)``.
        noise_multiplier: For ``private_dp``, noise std over the L2 sensitivity, per layer.
        calib_examples: How many examples (chosen at random, independent of their values) the
            statistics are computed from.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        stats: str = "public",
        clip: float = 3.0,
        noise_multiplier: float = 50.0,
        calib_examples: int = 10000,
        eps: float = 1e-5,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if stats not in STATS_VARIANTS:
            raise NormSpecError(
                f"dp_batch_norm: stats={stats!r} is not allowed; allowed: "
                f"{', '.join(STATS_VARIANTS)}"
            )
        if clip <= 0 or noise_multiplier <= 0 or calib_examples < 1:
            raise NormSpecError(
                "dp_batch_norm: clip and noise_multiplier must be > 0 and calib_examples >= 1"
            )
        self.num_channels, self.stats, self.eps = num_channels, stats, eps
        self.clip, self.noise_multiplier, self.calib_examples = (
            clip,
            noise_multiplier,
            calib_examples,
        )
        self.register_buffer("mean", torch.zeros(num_channels, device=device, dtype=dtype))
        self.register_buffer("var", torch.ones(num_channels, device=device, dtype=dtype))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool, device=device))
        self.affine = ChannelAffine(num_channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(self.var + self.eps).to(x.dtype)
        x_hat = (x - self.mean.to(x.dtype).view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
        return self.affine(x_hat)

    def extra_repr(self) -> str:
        extra = (
            f", clip={self.clip}, noise_multiplier={self.noise_multiplier}"
            if self.stats == "private_dp"
            else ""
        )
        return f"{self.num_channels}, stats={self.stats}{extra}"


def _charge(model: nn.Module, norm: ResolvedNorm) -> PrivacyCharge | None:
    return planned_charge(model)


def _prepare(model: nn.Module, norm: ResolvedNorm, data: RunData) -> None:
    """Fill the statistics: from the public examples, or with DP from a private subset."""
    if norm.needs_public_data:
        if data.public_x is None:
            raise NormSpecError(
                f"{norm} needs public data but the run has none (set data.public_split)"
            )
        source = data.public_x
    else:
        k = min(int(norm.params["calib_examples"]), data.num_private)
        # A random subset chosen without looking at the examples; its size is public.
        generator = data.generator("dp_batch_norm.calibration_subset")
        pick = torch.randperm(data.num_private, generator=generator, device=generator.device)
        source = data.private_x[pick[:k].to(data.private_x.device)]
    calibrate(model, data.batches(source), generator=data.generator("dp_batch_norm.noise"))


@register_norm(
    "dp_batch_norm",
    choices={"stats": STATS_VARIANTS},
    grad_sampler="custom",
    needs_public_data=lambda p: p["stats"] == "public",
    privacy_cost=lambda p: p["stats"] == "private_dp",
    always_shown=("stats",),
    prepare=_prepare,
    charge=_charge,
    test_variants=("stats=private_dp",),
)
def dp_batch_norm(
    num_channels: int,
    *,
    stats: str = "public",
    clip: float = 3.0,
    noise_multiplier: float = 50.0,
    calib_examples: int = 10000,
    eps: float = 1e-5,
    device=None,
    dtype=None,
) -> FrozenStatsNorm:
    """BatchNorm with frozen statistics from public data (``public``) or from DP estimates.

    ``private_dp`` charges one Gaussian mechanism (``noise_multiplier``, every example) per
    layer to the run's accountant; DP-SGD's noise is then calibrated for the remaining budget.
    """
    return FrozenStatsNorm(
        num_channels,
        stats=stats,
        clip=clip,
        noise_multiplier=noise_multiplier,
        calib_examples=calib_examples,
        eps=eps,
        device=device,
        dtype=dtype,
    )


def frozen_stats_layers(
    model: nn.Module, example: torch.Tensor | None = None
) -> list[FrozenStatsNorm]:
    """The model's `FrozenStatsNorm` layers, in the order a forward pass on ``example`` reaches
    them (registration order when no example is given)."""
    layers = [m for m in model.modules() if isinstance(m, FrozenStatsNorm)]
    if example is None or not layers:
        return layers
    order: list[FrozenStatsNorm] = []
    handles = [m.register_forward_pre_hook(lambda m, _i: order.append(m)) for m in layers]
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    seen = {id(m) for m in order}
    return order + [m for m in layers if id(m) not in seen]


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


def planned_charge(model: nn.Module) -> PrivacyCharge | None:
    """The privacy charge `calibrate` will make on ``model``, known before any data is read.

    DP-SGD's noise is calibrated for the budget that remains after this charge, so it must be
    known up front; it depends only on the layers' configuration, never on the data.
    """
    layers = frozen_stats_layers(model)
    private = [layer for layer in layers if layer.stats == "private_dp"]
    if not private:
        return None
    sigma = private[0].noise_multiplier
    if any(layer.noise_multiplier != sigma for layer in private) or len(private) != len(layers):
        raise NormSpecError("dp_batch_norm layers of one model must share stats and noise")
    return PrivacyCharge(
        noise_multiplier=sigma,
        sample_rate=1.0,
        steps=len(private),
        description=f"dp_batch_norm statistics: {len(private)} Gaussian releases "
        f"(noise multiplier {sigma}) of clipped per-example channel moments",
    )


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Callable[[], Iterable[torch.Tensor]],
    *,
    generator: torch.Generator | None = None,
) -> PrivacyCharge | None:
    """Fill and freeze the statistics of every `FrozenStatsNorm` layer of ``model``.

    Args:
        model: The model; its other layers are used as they are (eval mode is set meanwhile).
        batches: Called once per layer; returns the calibration inputs as batches. For
            ``public`` layers these must be public examples only; for ``private_dp`` layers a
            random subset of ``calib_examples`` private examples chosen without looking at them.
        generator: Source of the Gaussian noise for ``private_dp`` layers.

    Returns:
        The privacy cost to charge (``private_dp``), or None when nothing private was read.
    """
    if not frozen_stats_layers(model):
        return None
    was_training = model.training
    model.eval()
    try:
        first = next(iter(batches()), None)
        if first is None:
            raise NormSpecError("dp_batch_norm calibration received no examples")
        layers = frozen_stats_layers(model, first[:1])
    finally:
        model.train(was_training)
    variants = {layer.stats for layer in layers}
    if len(variants) > 1:
        raise NormSpecError(f"a model mixes dp_batch_norm variants {sorted(variants)}")
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            _calibrate_layer(model, layer, batches, generator)
    finally:
        model.train(was_training)
    return planned_charge(model)


def _calibrate_layer(
    model: nn.Module,
    layer: FrozenStatsNorm,
    batches: Callable[[], Iterable[torch.Tensor]],
    generator: torch.Generator | None,
) -> None:
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(per_example_moments(inputs[0]))
        raise _StopForward

    handle = layer.register_forward_pre_hook(hook)
    try:
        for batch in batches():
            with contextlib.suppress(_StopForward):
                model(batch)
    finally:
        handle.remove()
    if not captured:
        raise NormSpecError("dp_batch_norm calibration received no examples")
    moments = torch.cat(captured)
    n = moments.shape[0]
    if layer.stats == "public":
        total = moments.sum(dim=0)
    else:
        max_norm = layer.clip * math.sqrt(2 * layer.num_channels)
        total = gaussian_sum(moments, max_norm, layer.noise_multiplier, generator)
    # The number of calibration examples is fixed by the configuration, not by the data.
    mean, second = (total / n).split(layer.num_channels)
    var = (second - mean.square()).clamp_min(0.0)
    layer.mean.copy_(mean.to(layer.mean.dtype))
    layer.var.copy_(var.to(layer.var.dtype))
    layer.calibrated.fill_(True)
