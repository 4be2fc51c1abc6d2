"""DP-safe BatchNorm: normalise with frozen statistics taken from public data or estimated with DP.

Plain BatchNorm normalises each example with statistics of its batch, so one example changes
every other example's output and DP-SGD's per-sample sensitivity bound no longer holds. Here
the statistics are computed once, before training, and then frozen:

* ``stats=public``: from data the suite declares public (excluded from the private set);
  no privacy cost.
* ``stats=private_dp``: from the private data with the subsampled Gaussian mechanism: for each
  layer, a Poisson subsample of the private set (each example independently, with probability
  q = k/N for k = min(calib_examples, N)) is drawn afresh, each sampled example's per-channel
  (mean, second moment) vector is clipped in L2 norm, Gaussian noise is added to the sum, and
  the sum is divided by the *expected* count k (public), never by the realised one. Adding or
  removing one example then changes one release by at most the clip bound, if it is sampled,
  which is exactly the mechanism DP-SGD's accountant analyses: the cost is the `PrivacyCharge`
  (sigma, q, one release per layer), composed with DP-SGD's in the accountant (Tramer &
  Boneh's normalisation of ScatterNet features does the same). A fixed-size random subset
  would not match that charge: adding one example could push another out, a substitution.

Layers are calibrated one after the other in forward order, each with every earlier layer
already frozen, so each layer's statistics describe the inputs it will see.

``stats=public,refresh=k`` lets the public statistics follow the weights: Davody et al.'s
public auxiliary batch in its DP-safe form (the statistics of a fixed public reference batch
alone, never mixed with the private batch, no gradient through them). Before training and then
before every k-th step (steps k, 2k, ..., counted from 0), `refresh_statistics` recomputes
every layer's statistics from the reference batch through the current network, in one forward
pass. The reference batch is ``reference`` examples of the public split, fixed for the run
(`reference_indices`); it costs one no-grad forward of ``reference`` examples every k steps.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

from bkclip import AffineRule, register_clip_rule
from norms.errors import NormSpecError
from norms.lifecycle import PrivacyCharge, RunData
from norms.registry import ResolvedNorm, register_norm

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


def _charge(model: nn.Module, norm: ResolvedNorm, n_private: int) -> PrivacyCharge | None:
    return planned_charge(model, sample_rate=calibration_rate(norm, n_private))


def calibration_rate(norm: ResolvedNorm, n_private: int) -> float:
    """q = k / N: the Poisson rate at which each layer samples the private set (1: all of it)."""
    return min(int(norm.params["calib_examples"]), n_private) / n_private


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


def _public_x(norm: ResolvedNorm, data: RunData) -> torch.Tensor:
    if data.public_x is None:
        raise NormSpecError(
            f"{norm} needs public data but the run has none (set data.public_split)"
        )
    return data.public_x


def reference_indices(n_public: int, reference: int) -> torch.Tensor:
    """Which public examples form the reference batch: ``min(reference, n_public)`` of them,
    evenly spaced over the public split (positions ``i * n_public // reference``).

    The public split is a random subset of the training set but is stored in the dataset's
    order, which for an image folder is class by class: its first examples would all be of the
    first class, while evenly spaced ones give each class its share. No random stream is
    drawn, so the batch is the same for every seed and after a resume.
    """
    count = min(reference, n_public)
    return torch.arange(count) * n_public // count


def reference_batch(norm: ResolvedNorm, data: RunData) -> torch.Tensor:
    """The model inputs of the norm's fixed public reference batch (`reference_indices`)."""
    public = _public_x(norm, data)
    index = reference_indices(public.shape[0], int(norm.params["reference"]))
    return data.to_input(public[index.to(public.device)])


def _prepare(model: nn.Module, norm: ResolvedNorm, data: RunData) -> None:
    """Fill the statistics: from the public examples (the reference batch alone with
    ``refresh``), or with DP from Poisson subsamples."""
    if norm.needs_public_data:
        if norm.params["refresh"] is not None:
            refresh_statistics(model, reference_batch(norm, data))
        else:
            calibrate(model, data.batches(_public_x(norm, data)))
        return
    # N is public, as for DP-SGD's q = B / N: the rate and the divisor are fixed before any
    # example is read, and `_charge` charges this same rate.
    q = calibration_rate(norm, data.num_private)
    calibrate_private(model, data, sample_rate=q, expected_count=q * data.num_private)


def _on_step(model: nn.Module, norm: ResolvedNorm, data: RunData, step: int) -> None:
    """With ``refresh=k``: recompute the statistics before steps k, 2k, ... (step 0 uses those
    `_prepare` computed with the same weights)."""
    k = norm.params["refresh"]
    if k is not None and step > 0 and step % k == 0:
        refresh_statistics(model, reference_batch(norm, data))


def _dp_note(params) -> str:
    if params["stats"] == "private_dp":
        return (
            "statistics estimated from private data with the subsampled Gaussian mechanism "
            f"(noise multiplier {params['noise_multiplier']}), once before training, "
            "charged to the budget (privacy_charges)"
        )
    if params["refresh"] is None:
        return "statistics of the public split, computed once before training: no privacy cost"
    return (
        f"statistics of a fixed public reference batch of {params['reference']} examples (the "
        f"whole public split if smaller), recomputed every {params['refresh']} steps with the "
        "current weights: no privacy cost"
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


@register_norm(
    "dp_batch_norm",
    choices={"stats": STATS_VARIANTS},
    grad_sampler="custom",
    needs_public_data=lambda p: p["stats"] == "public",
    privacy_cost=lambda p: p["stats"] == "private_dp",
    always_shown=("stats",),
    prepare=_prepare,
    charge=_charge,
    on_step=_on_step,
    dp_note=_dp_note,
    # refresh=k builds the same layers as stats=public (it changes when their statistics are
    # computed, not the forward pass), so the oracle sweeps need no variant of it;
    # tests/test_dp_batch_norm.py runs the oracles on refreshed statistics.
    test_variants=("stats=private_dp",),
)
def dp_batch_norm(
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
) -> FrozenStatsNorm:
    """BatchNorm with frozen statistics from public data (``public``) or from DP estimates.

    ``private_dp`` charges one subsampled Gaussian mechanism (``noise_multiplier``, Poisson
    rate ``calib_examples / N``) per layer to the run's accountant; DP-SGD's noise is then
    calibrated for the remaining budget. ``public`` with ``refresh=k`` recomputes the
    statistics every k steps from a fixed reference batch of ``reference`` public examples
    (evenly spaced over the public split, which is a random subset of the training set), with
    the current weights; no privacy cost either.
    """
    return FrozenStatsNorm(
        num_channels,
        stats=stats,
        clip=clip,
        noise_multiplier=noise_multiplier,
        calib_examples=calib_examples,
        refresh=refresh,
        reference=reference,
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
