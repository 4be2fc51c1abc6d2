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

``stats=public,refresh=k`` lets the public statistics follow the weights: Davody et al.'s
public auxiliary batch in its DP-safe form (the statistics of a fixed public reference batch
alone, never mixed with the private batch, no gradient through them). Before training and then
before every k-th step (steps k, 2k, ..., counted from 0), `refresh_statistics` recomputes
every layer's statistics from the reference batch through the current network, in one forward
pass. The reference batch is ``reference`` examples of the public split, fixed for the run
(`reference_indices`); it costs one no-grad forward of ``reference`` examples every k steps.

This module registers the norm and its run hooks; the layer is `norms.frozen_stats`, the
statistics' computation `norms.stats_calibration`.
"""

from __future__ import annotations

import torch
from torch import nn

from norms.errors import NormSpecError
from norms.frozen_stats import STATS_VARIANTS, FrozenStatsNorm
from norms.lifecycle import PrivacyCharge, RunData
from norms.registry import ResolvedNorm, register_norm
from norms.stats_calibration import (
    calibrate,
    calibrate_private,
    planned_charge,
    refresh_statistics,
)


def _charge(model: nn.Module, norm: ResolvedNorm, n_private: int) -> PrivacyCharge | None:
    return planned_charge(model, sample_rate=calibration_rate(norm, n_private))


def calibration_rate(norm: ResolvedNorm, n_private: int) -> float:
    """q = k / N: the Poisson rate at which each layer samples the private set (1: all of it)."""
    return min(int(norm.params["calib_examples"]), n_private) / n_private


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


# The layer class is the factory: its keyword arguments, with their defaults, are the norm's
# parameters, and its docstring's first line is the norm's description.
dp_batch_norm = register_norm(
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
)(FrozenStatsNorm)
