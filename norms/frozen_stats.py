"""The frozen-statistics layer `FrozenStatsNorm`, its affine `ChannelAffine` and their DP rules."""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

from bkclip import AffineRule, register_clip_rule
from norms.errors import NormSpecError

STATS_VARIANTS = ("public", "private_dp")
#: Public examples in the reference batch of ``stats=public,refresh=k``, unless set.
DEFAULT_REFERENCE = 256


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_refresh(stats: str, refresh: object, reference: object) -> None:
    """Refuse a ``refresh`` or ``reference`` that the layer could not honour."""
    if refresh is not None and not (_is_int(refresh) and refresh >= 1):
        raise NormSpecError(
            f"dp_batch_norm: refresh={refresh!r} is not allowed; allowed: none (statistics "
            "once, before training) or an integer >= 1 (steps between recomputations)"
        )
    if refresh is not None and stats != "public":
        raise NormSpecError(
            f"dp_batch_norm: refresh={refresh} needs stats=public (got stats={stats}): "
            "only public statistics can be recomputed during training without a privacy cost"
        )
    if not (_is_int(reference) and reference >= 1):
        raise NormSpecError(
            f"dp_batch_norm: reference={reference!r} is not allowed; allowed: an integer >= 1 "
            "(public examples in the reference batch)"
        )
    if refresh is None and reference != DEFAULT_REFERENCE:
        raise NormSpecError(
            f"dp_batch_norm: reference={reference} is used only with refresh; set refresh=k "
            "(steps), or drop reference (without refresh every public example is read once)"
        )


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
    """BatchNorm with frozen statistics from public data (``public``) or from DP estimates.

    Each channel is normalised with frozen statistics, then a learnable per-channel affine is
    applied. ``private_dp`` charges one subsampled Gaussian mechanism (``noise_multiplier``,
    Poisson rate ``calib_examples / N``) per layer to the run's accountant; DP-SGD's noise is
    then calibrated for the remaining budget. ``public`` with ``refresh=k`` recomputes the
    statistics every k steps from a fixed reference batch of ``reference`` public examples
    (evenly spaced over the public split, which is a random subset of the training set), with
    the current weights; no privacy cost either.

    The statistics are buffers of this container, which has no parameters of its own, and the
    affine is a child module without buffers: Opacus refuses trainable layers that hold buffers
    (their state would not be private), and this split keeps both facts true.

    Args:
        stats: ``public`` or ``private_dp``, how `calibrate` fills the statistics.
        clip: For ``private_dp``, the bound on one example's contribution per coordinate of its
            (mean, second moment) vector: the vector is clipped to L2 norm
            ``clip * sqrt(2 * num_channels)``.
        noise_multiplier: For ``private_dp``, noise std over the L2 sensitivity, per layer.
        calib_examples: k, the expected number of private examples each layer's statistics are
            computed from: each layer reads its own Poisson subsample at rate k/N (all N when
            k >= N), and divides by k.
        refresh: For ``public``: recompute the statistics from the public reference batch
            every ``refresh`` steps (`refresh_statistics`); None computes them once, before
            training, from every public example.
        reference: With ``refresh``: the number of public examples in the fixed reference
            batch (`reference_indices`).
    """

    def __init__(
        self,
        num_channels: int,
        *,
        stats: str = "public",
        clip: float = 3.0,
        noise_multiplier: float = 50.0,
        calib_examples: int = 10000,
        refresh: int | None = None,
        reference: int = DEFAULT_REFERENCE,
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
        _check_refresh(stats, refresh, reference)
        self.refresh, self.reference = refresh, reference
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
            else f", refresh={self.refresh}, reference={self.reference}"
            if self.refresh is not None
            else ""
        )
        return f"{self.num_channels}, stats={self.stats}{extra}"


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
