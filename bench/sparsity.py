"""Pre-pruning and gradient dropping (Adamczewski, He and Park 2023): fewer coordinates, less noise.

DP-SGD adds noise of the same scale to every coordinate it releases, so training fewer
coordinates spreads the budget over fewer of them. Two ways, both choosing without reading
private data, so the accounting is DP-SGD's own:

* **Pre-pruning** (``training.pre_prune``, "parameter freezing"): before training a fixed mask
  zeroes ``rate`` of the weights of every weight layer (a trainable ``weight`` of two or more
  dimensions: convolutions, KernelNorm's convolution, linear layers) except the first one (the
  stem convolution) and the last one (the classifier). Those two hold under 1% of the weights of
  every backbone here at full width (about 4% of ResNet-9's at the CPU suites' 1/8 width), so
  pruning them would save little noise, while the stem sees 3 input
  channels (a 3x3x3 filter at rate 0.8 keeps 5 weights) and each classifier row is one class's
  score. Per layer exactly ``round(rate * numel)`` weights are pruned:
  ``random`` (the run's ``prune`` stream), ``magnitude`` (the smallest initial weights) or
  ``snip_public`` (the smallest SNIP saliency |w * dL/dw| at the initial weights on the whole
  public split, before any norm is prepared; a norm whose statistics are filled by its
  preparation normalises with its initial statistics there). Pruned weights are zero from the
  start and stay exactly zero: they take no noise, count nothing in per-example norms and are
  never updated. For a weight-standardised conv (timm's ``ScaledStdConv2d``, the ``wrn16_4``
  convolutions) the mask freezes the raw weight at zero; the standardised weight the conv
  applies is not sparse (standardisation shifts every entry), so there pre-pruning freezes
  parameters rather than removing connections.
* **Gradient dropping** (``training.grad_drop``, "parameter selection"): at every step
  ``floor(rate * O)`` of the O output channels of every trainable layer are dropped, O being the
  first dimension of each of its parameters (a conv filter or a linear row with its bias entry;
  one entry of a norm's affine vectors). A dropped channel is neither clipped nor noised nor
  updated: per-example norms and clipping run over the kept coordinates only, so an example
  still moves the clipped sum by at most C, and the dropped coordinates of the noised gradient
  are zeroed. Its weights keep their values, whatever the optimiser's momentum or weight decay
  would do; the optimiser's state there (a momentum buffer, Adam's averages) still decays as it
  would with a zero gradient, and acts at the next step that keeps the channel. ``random``
  draws a fresh choice per layer at every step from the run's ``grad_drop`` stream;
  ``public`` keeps the channels whose gradient on the first ``public_examples`` public
  examples (current weights, eval mode, mean cross-entropy) has the
  largest norm, recomputed every ``refresh`` steps inside the timed step.

Both act on the clipper and the optimiser through `Sparsity`, never on a norm: `Sparsity` is
`bkclip`'s `CoordinateMasks`, through which `bkclip.steps.DPSGDStep`
masks the per-sample gradients (Opacus' paths) or has `bkclip.clipper` mask each layer's output
gradient along its channel dimension (or materialise the masked per-example gradients of a
pruned layer), then zeroes the masked coordinates of the noised gradient and restores their
weights after the update.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import GradDropConfig, PruneConfig
from bench.errors import ConfigError
from bkclip import CoordinateMasks, trainable_layers, trainable_parameters


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers with a trainable ``weight`` of 2 or more dimensions, in registration order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "weight", None), nn.Parameter)
        and m.weight.requires_grad
        and m.weight.dim() >= 2
    ]


def prunable_layers(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """The layers pre-pruning prunes, and the names of those it leaves whole (stem, classifier)."""
    layers = weight_layers(model)
    if len(layers) <= 2:
        return [], [name for name, _ in layers]
    return layers[1:-1], [layers[0][0], layers[-1][0]]


def _smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A bool mask of ``scores``' shape, False at its ``k`` smallest entries (ties by index)."""
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        order = torch.argsort(scores.flatten(), stable=True)
        keep[order[:k]] = False
    return keep.view_as(scores)


def snip_saliency(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    public_x: torch.Tensor,
    public_y: torch.Tensor,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """SNIP's connection saliency |w * dL/dw| of each layer's weight, L the mean cross-entropy
    over the public examples (accumulated over batches), in eval mode."""
    weights = [m.weight for _, m in layers]
    totals = [torch.zeros_like(w) for w in weights]
    was_training = model.training
    model.eval()
    try:
        n = public_x.shape[0]
        for xs, ys in zip(public_x.split(batch_size), public_y.split(batch_size), strict=True):
            loss = F.cross_entropy(model(to_input(xs)), ys, reduction="sum") / n
            for total, grad in zip(totals, torch.autograd.grad(loss, weights), strict=True):
                total += grad
    finally:
        model.train(was_training)
    return {
        name: (w.detach() * g).abs()
        for (name, _), w, g in zip(layers, weights, totals, strict=True)
    }


@dataclass(frozen=True)
class PublicData:
    """The public split as the selection reads it: images, labels, the input transform."""

    x: torch.Tensor
    y: torch.Tensor
    to_input: Callable[[torch.Tensor], torch.Tensor]
    batch_size: int


def prune_masks(
    model: nn.Module,
    cfg: PruneConfig,
    generator: torch.Generator,
    public: PublicData | None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Each pruned layer's weight mask (True: kept), by layer name, and the layers left whole.

    Reads the initial weights, the ``prune`` stream and (``snip_public``) the public split,
    never a private example.

    Raises:
        ConfigError: ``snip_public`` without public data.
    """
    layers, whole = prunable_layers(model)
    if cfg.method == "snip_public":
        if public is None:
            raise ConfigError(
                "training.pre_prune.method snip_public reads public data but the run has "
                "none (set data.public_split)"
            )
        scores = snip_saliency(
            model, layers, public.x, public.y, public.to_input, public.batch_size
        )
    masks = {}
    for name, layer in layers:
        w = layer.weight.detach()
        k = round(cfg.rate * w.numel())
        if cfg.method == "random":
            drop = torch.randperm(w.numel(), generator=generator, device=generator.device)[:k]
            keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
            keep[drop.to(w.device)] = False
            masks[name] = keep.view_as(w)
        elif cfg.method == "magnitude":
            masks[name] = _smallest(w.abs(), k)
        else:
            masks[name] = _smallest(scores[name], k)
    return masks, whole


def dropped_count(rate: float, channels: int) -> int:
    """``floor(rate * channels)``, without the float error that makes 0.29 * 100 give 28."""
    return math.floor(rate * channels + 1e-9)


class Sparsity(CoordinateMasks):
    """The coordinates a run trains: pre-pruning's fixed masks and the step's dropped channels.

    Args:
        model: The model (not a wrapper); pruned weights are zeroed in place here.
        prune: Pre-pruning, or None.
        drop: Gradient dropping, or None.
        streams: ``streams(purpose)``: the run's generator for ``prune`` and ``grad_drop``.
        public: The public split, for ``snip_public`` and the ``public`` drop method.

    Attributes:
        pruned: Weight masks (True: kept) by parameter id.
        keep: This step's kept output channels, a float 0/1 vector by layer id.
        generator: The ``grad_drop`` stream (checkpointed with the run's streams).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        prune: PruneConfig | None,
        drop: GradDropConfig | None,
        streams: Callable[[str], torch.Generator],
        public: PublicData | None,
    ):
        self.model, self.prune_cfg, self.drop_cfg, self.public = model, prune, drop, public
        self.pruned: dict[int, torch.Tensor] = {}
        self.prune_layers: dict[str, float] = {}
        self.whole: list[str] = []
        if prune is not None and prune.rate > 0:
            masks, self.whole = prune_masks(model, prune, streams("prune"), public)
            layers = dict(model.named_modules())
            with torch.no_grad():
                for name, mask in masks.items():
                    weight = layers[name].weight
                    weight.mul_(mask)
                    self.pruned[id(weight)] = mask
                    self.prune_layers[name] = 1 - float(mask.float().mean())
        self.layers = trainable_layers(model)
        self.keep: dict[int, torch.Tensor] = {}
        self.generator: torch.Generator | None = None
        self._saliency_step: int | None = None
        if drop is not None and drop.rate > 0:
            if drop.method == "public" and public is None:
                raise ConfigError(
                    "training.grad_drop.method public reads public data but the run has none "
                    "(set data.public_split)"
                )
            names = {id(m): n for n, m in model.named_modules()}
            for layer in self.layers:
                sizes = {p.shape[0] if p.dim() else 1 for p in trainable_parameters(layer)}
                if len(sizes) != 1:
                    raise ConfigError(
                        f"training.grad_drop drops output channels, the first dimension of each "
                        f"parameter of a layer, but the parameters of layer {names[id(layer)]} "
                        f"({type(layer).__name__}) have first dimensions {sorted(sizes)}"
                    )
            self.generator = streams("grad_drop")

    @property
    def active(self) -> bool:
        """Whether anything is masked."""
        return bool(self.pruned) or self.generator is not None

    @property
    def dropping(self) -> bool:
        """Whether output channels are dropped at every step."""
        return self.generator is not None

    # --- selection ------------------------------------------------------------------------

    @staticmethod
    def _channels(layer: nn.Module) -> int:
        p = trainable_parameters(layer)[0]
        return p.shape[0] if p.dim() else 1

    def begin_step(self, step: int, hooks_off: Callable[[], Any] | None = None) -> None:
        """Choose step ``step``'s kept channels (``hooks_off``: a context that stops Opacus'
        per-sample hooks while the public saliency is computed)."""
        if not self.dropping:
            return
        cfg = self.drop_cfg
        if cfg.method == "random":
            self.keep = {}
            for layer in self.layers:
                o = self._channels(layer)
                drop = torch.randperm(o, generator=self.generator, device=self.generator.device)
                keep = torch.ones(o, device=trainable_parameters(layer)[0].device)
                keep[drop[: dropped_count(cfg.rate, o)].to(keep.device)] = 0.0
                self.keep[id(layer)] = keep
            return
        if step % cfg.refresh == 0 or not self.keep:
            with hooks_off() if hooks_off is not None else contextlib.nullcontext():
                self.keep = self._public_keep()
            self._saliency_step = step

    def _public_keep(self) -> dict[int, torch.Tensor]:
        """Keep the channels with the largest public-gradient norm, per layer."""
        public = self.public
        x, y = public.x[: self.drop_cfg.public_examples], public.y[: self.drop_cfg.public_examples]
        params = [p for layer in self.layers for p in trainable_parameters(layer)]
        was_training = self.model.training
        self.model.eval()
        try:
            grads = dict(zip(map(id, params), self._public_grads(x, y, params), strict=True))
        finally:
            self.model.train(was_training)
        keep = {}
        for layer in self.layers:
            o = self._channels(layer)
            score = torch.zeros(
                o, dtype=torch.float64, device=trainable_parameters(layer)[0].device
            )
            for p in trainable_parameters(layer):
                g = grads[id(p)]
                if id(p) in self.pruned:
                    g = g * self.pruned[id(p)]
                score += g.double().reshape(o, -1).square().sum(1)
            kept = torch.zeros(o, device=score.device)
            k = dropped_count(self.drop_cfg.rate, o)
            kept[torch.argsort(score, descending=True, stable=True)[: o - k]] = 1.0
            keep[id(layer)] = kept
        return keep

    def _public_grads(self, x, y, params) -> list[torch.Tensor]:
        public = self.public
        totals = [torch.zeros_like(p) for p in params]
        n = x.shape[0]
        for xs, ys in zip(x.split(public.batch_size), y.split(public.batch_size), strict=True):
            loss = F.cross_entropy(self.model(public.to_input(xs)), ys, reduction="sum") / n
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for total, g in zip(totals, grads, strict=True):
                if g is not None:
                    total += g
        return totals

    # --- masks ----------------------------------------------------------------------------

    def channel_keep(self, layer: nn.Module) -> torch.Tensor | None:
        """This step's kept channels of ``layer`` (0/1 floats), or None when none is dropped."""
        return self.keep.get(id(layer))

    def is_pruned(self, layer: nn.Module) -> bool:
        return any(id(p) in self.pruned for p in trainable_parameters(layer))

    def coordinate_mask(self, p: nn.Parameter) -> torch.Tensor | None:
        """The 0/1 mask of ``p``'s trained coordinates at this step, or None (all trained)."""
        owner = self._owner.get(id(p))
        keep = self.keep.get(owner) if owner is not None else None
        pruned = self.pruned.get(id(p))
        if keep is None and pruned is None:
            return None
        mask = torch.ones_like(p) if pruned is None else pruned.to(p.dtype)
        if keep is not None:
            shape = (-1, *([1] * (p.dim() - 1))) if p.dim() else ()
            mask = mask * keep.to(p.dtype).reshape(shape)
        return mask

    @property
    def _owner(self) -> dict[int, int]:
        if not hasattr(self, "_owners"):
            self._owners = {id(p): id(m) for m in self.layers for p in trainable_parameters(m)}
        return self._owners

    def masks(self, params: list[nn.Parameter]) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        """``(p, mask)`` for each of ``params`` with masked coordinates at this step."""
        for p in params:
            mask = self.coordinate_mask(p)
            if mask is not None:
                yield p, mask

    def dropped(self, params: list[nn.Parameter]) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        """``(p, mask)`` for each of ``params`` with channels dropped at this step."""
        for p in params:
            owner = self._owner.get(id(p))
            if owner is not None and owner in self.keep:
                yield p, self.coordinate_mask(p)

    # --- record and checkpoint ------------------------------------------------------------

    def trainable_coordinates(self) -> tuple[int, int]:
        """(coordinates that can be trained after pre-pruning, all trainable coordinates)."""
        params = [p for m in self.layers for p in trainable_parameters(m)]
        total = sum(p.numel() for p in params)
        pruned = sum(int((~self.pruned[id(p)]).sum()) for p in params if id(p) in self.pruned)
        return total - pruned, total

    def summary(self) -> dict[str, Any] | None:
        """What the record says: the rates realised, what the choices read, the coordinates."""
        if not self.active and self.prune_cfg is None and self.drop_cfg is None:
            return None
        trained, total = self.trainable_coordinates()
        out: dict[str, Any] = {
            "trainable_coordinates": trained,
            "total_coordinates": total,
            "reads_private_data": False,
        }
        if self.prune_cfg is not None:
            rates = list(self.prune_layers.values())
            reads = {
                "random": "the run's prune stream",
                "magnitude": "the initial weights",
                "snip_public": "the initial weights and the public split",
            }[self.prune_cfg.method]
            out["pre_prune"] = {
                "method": self.prune_cfg.method,
                "rate": self.prune_cfg.rate,
                "reads": reads,
                "layers_pruned": len(rates),
                "layers_whole": self.whole,
                "realised_rate_min": min(rates) if rates else 0.0,
                "realised_rate_max": max(rates) if rates else 0.0,
                "realised_rate_by_layer": dict(self.prune_layers),
            }
        if self.drop_cfg is not None:
            cfg = self.drop_cfg
            reads = (
                "the run's grad_drop stream"
                if cfg.method == "random"
                else f"the first {min(cfg.public_examples, self.public.x.shape[0])} public "
                f"examples and the current (DP-trained) weights, every {cfg.refresh} steps"
            )
            out["grad_drop"] = {
                "method": cfg.method,
                "rate": cfg.rate,
                "unit": "output channel (first dimension of each parameter) of every layer",
                "reads": reads,
                "refresh": cfg.refresh if cfg.method == "public" else None,
            }
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs beyond the streams: the pruning masks (SNIP's saliency is a
        float backward pass, not bit-reproducible across devices and thread counts, so the
        masks are restored rather than recomputed) and the public choice in force."""
        params = [p for m in self.layers for p in trainable_parameters(m)]
        return {
            "pruned": [self.pruned.get(id(p)) for p in params],
            "keep": [self.keep.get(id(m)) for m in self.layers],
            "saliency_step": self._saliency_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        params = [p for m in self.layers for p in trainable_parameters(m)]
        pruned = {id(p): m for p, m in zip(params, state["pruned"], strict=True) if m is not None}
        if pruned.keys() != self.pruned.keys():
            raise ValueError("the checkpoint prunes other layers than this run")
        self.pruned = {k: m.to(self.pruned[k].device) for k, m in pruned.items()}
        self.keep = {
            id(m): k for m, k in zip(self.layers, state["keep"], strict=True) if k is not None
        }
        self._saliency_step = state["saliency_step"]
