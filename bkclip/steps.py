"""One training step on a logical batch: DP-SGD (per-sample clipping and noise) or plain SGD.

The engine and the perf checks call the same step objects, so a benchmark times exactly what
a run does. A step takes the logical batch already on the device as views ``(B, K, C, H, W)``
(K augmented views per example) with labels ``(B,)``, and splits it into physical batches of
at most ``max_physical_batch`` examples to bound memory.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from bkclip.clipper import BookKeepingClipper
from bkclip.masks import CoordinateMasks
from bkclip.maths import at_least_fp32

#: Sums the clipped sums of the processes of one step: every process's physical batches'
#: sums (``parts``: per physical batch, one tensor or None per parameter) and the parameters
#: (``like``), to the totals per parameter, the same on every process.
Reduce = Callable[[list[list[torch.Tensor | None]], list[torch.Tensor]], list[torch.Tensor]]


def mean_of_chunks(chunks: Iterable[tuple[float, int]], n: int) -> float:
    """The mean loss of a batch of ``n`` examples from its physical batches' ``(mean loss,
    examples)``, added left to right (NaN when ``n`` is 0): the one order of additions, so
    that W processes, adding every rank's physical batches in turn, get one process's bits."""
    if not n:
        return math.nan
    total = 0.0
    for loss, size in chunks:
        total += loss * size / n
    return total


#: Per-sample-gradient modes a DP step can use.
MODES = ("hooks", "functorch", "bk")


def make_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict],
    *,
    optimizer: str = "sgd",
    lr: float = 1.0,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """The base optimiser (DP-SGD wraps it; its update rule is unchanged)."""
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on ``device`` when ``precision`` is ``bf16``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class SGDStep:
    """A non-private step: mean loss over every view of the logical batch, one update."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        max_physical_batch: int,
        precision: str = "fp32",
    ):
        self.model, self.optimizer = model, optimizer
        self.max_physical_batch, self.precision = max_physical_batch, precision

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        device = x.device
        n, k = x.shape[0], x.shape[1]
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for xc, yc in zip(
            x.split(self.max_physical_batch), y.split(self.max_physical_batch), strict=True
        ):
            with autocast(device, self.precision):
                loss = F.cross_entropy(self.model(xc.flatten(0, 1)), yc.repeat_interleave(k))
            (loss * (xc.shape[0] / n)).backward()
            total += float(loss.detach()) * xc.shape[0] / n
        self.optimizer.step()
        return total


class OpacusDPStep:
    """What every DP-SGD step on an Opacus DP optimiser shares: its privacy parameters, and a
    logical batch accumulated over physical batches into one noised update.

    A subclass says how the model is wrapped for per-sample gradients (`_wrap`) and which
    Opacus optimiser adds the noise (`dp_optimizer`).

    Attributes:
        model: The wrapped model (use ``module`` for the plain one).
    """

    #: The Opacus optimiser wrapped around the base one: clipping, noise, scaling, update.
    dp_optimizer: type[DPOptimizer] = DPOptimizer

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        max_physical_batch: int,
        precision: str = "fp32",
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
        reduce: Reduce | None = None,
    ):
        self.precision, self.max_physical_batch = precision, max_physical_batch
        #: Called with each physical batch's index in this call's batch before its forward
        #: pass (the caller reseeds dropout there); None: nothing is called.
        self.on_chunk: Callable[[int], None] | None = None
        #: The last call's physical batches, in order: each one's mean loss and examples (empty
        #: for a noise-only step); what W processes need to add the loss as one process does.
        self.chunk_losses: list[tuple[float, int]] = []
        self._parts: list[list[torch.Tensor | None]] | None = None  # kept apart, to `reduce`
        self._open = False  # a physical batch's clipped sum is in ``summed_grad``, not kept
        self.module = model
        self.model = self._wrap(model, max_grad_norm)
        self.optimizer = self.dp_optimizer(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
            generator=generator,
            # Opacus' secure mode: each noise draw is a sum of Gaussians, against attacks on
            # the floating-point representation of one sample.
            secure_mode=secure_mode,
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if reduce is not None:
            self._sum_before_noise(reduce)

    def _sum_before_noise(self, reduce: Reduce) -> None:
        """Make the optimiser sum the clipped sums over processes (``reduce``) just before
        its noise: each process clipped its share of the logical batch (whole physical
        batches), and the noise, drawn from identically seeded generators, is then the same on
        every process.

        Each physical batch's clipped sum is kept apart (`_keep_part`) rather than added to
        the previous ones, so that ``reduce`` can add all the processes' physical batches in
        the order one process adds them, and so round as it does. Wrapping ``add_noise``
        reaches every path (Opacus' ``pre_step`` for hooks, functorch and ghost, and the
        book-keeping step, which calls it directly) at the one point where the clipped sums
        are complete.
        """
        add_noise = self.optimizer.add_noise
        self._parts = []

        def summed_then_noised() -> None:
            self._keep_part()
            parts, self._parts = self._parts, []
            totals = reduce(parts, [p.detach() for p in self.params])
            for p, total in zip(self.params, totals, strict=True):
                p.summed_grad = total
            add_noise()

        self.optimizer.add_noise = summed_then_noised  # type: ignore[method-assign]

    def _keep_part(self) -> None:
        """With a ``reduce``: move the physical batch's clipped sums just accumulated out of
        ``summed_grad`` into the kept parts (nothing if none was accumulated since)."""
        if self._parts is None or not self._open:
            return
        self._parts.append([getattr(p, "summed_grad", None) for p in self.params])
        for p in self.params:
            p.summed_grad = None
        self._open = False

    def _wrap(self, model: nn.Module, max_grad_norm: float) -> nn.Module:
        """The model the step runs: ``model`` wrapped for per-sample gradients (or norms)."""
        raise NotImplementedError

    def _accumulate(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        step: Callable[[], None],
    ) -> float:
        """Mean loss of the logical batch, split into physical batches: each one's
        ``backward`` (which returns its loss) and then ``step``, Opacus' skip-step
        accumulation making only the last step a noised update."""
        chunks = list(
            zip(x.split(self.max_physical_batch), y.split(self.max_physical_batch), strict=True)
        )
        for i, (xc, yc) in enumerate(chunks):
            self.optimizer.zero_grad(set_to_none=True)
            if self.on_chunk is not None:
                self.on_chunk(i)
            loss = backward(xc, yc)
            self.optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
            self._open = True
            step()
            self._keep_part()
            self.chunk_losses.append((float(loss.detach()), xc.shape[0]))
        return mean_of_chunks(self.chunk_losses, x.shape[0])


class DPSGDStep(OpacusDPStep):
    """A DP-SGD step with Opacus: per-sample gradients, clipping to C, Gaussian noise, update.

    ``mode`` picks how per-sample gradients are obtained: ``hooks`` (Opacus' per-layer
    samplers), ``functorch`` (Opacus' vmap path for every layer) or ``bk`` (the
    book-keeping clipper, `bkclip.clipper`: one backward pass, per-sample norms without
    materialising conv gradients where that is cheaper, clipped sums as one GEMM per layer).

    ``secure_mode`` turns on Opacus' secure-mode noise; pass it with an unpredictable
    ``generator`` (one seeded from the operating system's entropy).

    The K views of an example share one clipped gradient: the per-example loss is the mean
    over its views, so its gradient is the mean of the per-view gradients, taken before
    clipping. An empty logical batch is a noise-only step.

    Args:
        mode: One of `MODES`.
        sparsity: Coordinates that are pruned, or dropped at a step.
        **dp: The privacy and batch parameters of `OpacusDPStep`.

    Attributes:
        model: The wrapped model (use ``module`` for the plain one).
        steps_taken: Noised updates made so far.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        mode: str = "hooks",
        sparsity: CoordinateMasks | None = None,
        **dp: Any,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.sparsity = sparsity if sparsity is not None and sparsity.active else None
        super().__init__(model, optimizer, **dp)
        self.steps_taken = 0
        self._step_hooks: list[Callable[[DPOptimizer], None]] = []
        # Runs in DPOptimizer's pre_step once the noise is added: masks, then the hooks.
        self.optimizer.attach_step_hook(self._after_noise)

    def _wrap(self, model: nn.Module, max_grad_norm: float) -> nn.Module:
        if self.mode == "bk":
            self.clipper = BookKeepingClipper(model, sparsity=self.sparsity)
            return model
        return GradSampleModule(
            model, batch_first=True, loss_reduction="mean", force_functorch=self.mode == "functorch"
        )

    def attach_step_hook(self, fn: Callable[[DPOptimizer], None]) -> None:
        """Call ``fn`` after every noised update (an accountant's hook)."""
        self._step_hooks.append(fn)

    def _after_noise(self, optimizer: DPOptimizer) -> None:
        if self.sparsity is not None:
            # Masked coordinates release nothing: their noise is dropped with their sum.
            for p, mask in self.sparsity.masks(self.params):
                p.grad.mul_(mask)
        for fn in self._step_hooks:
            fn(optimizer)

    def _update(self) -> None:
        """The base optimiser's update; dropped channels keep their values (momentum or weight
        decay would otherwise move them). A pruned weight needs no such care: its gradient is
        zero at every step, so SGD (momentum, weight decay) and Adam leave it at zero."""
        masked = list(self.sparsity.dropped(self.params)) if self.sparsity is not None else []
        before = [p.detach().clone() for p, _ in masked]
        self.optimizer.original_optimizer.step()
        with torch.no_grad():
            for (p, mask), old in zip(masked, before, strict=True):
                p.copy_(torch.where(mask.bool(), p, old))

    def _hooks_off(self):
        """A context in which Opacus' per-sample hooks record nothing (bk has none outside a
        step)."""
        if isinstance(self.model, GradSampleModule):

            @contextlib.contextmanager
            def off():
                self.model.disable_hooks()
                try:
                    yield
                finally:
                    self.model.enable_hooks()

            return off()
        return contextlib.nullcontext()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.chunk_losses = []
        if self.sparsity is not None:
            self.sparsity.begin_step(self.steps_taken, self._hooks_off)
        loss = self._bk_step(x, y) if self.mode == "bk" else self._opacus_step(x, y)
        self.steps_taken += 1
        return loss

    def _noise_only(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        if self.optimizer.pre_step():
            self._update()

    def _opacus_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        if x.shape[0] == 0:
            self._noise_only()
            return math.nan
        return self._accumulate(x, y, self._clippable_backward, self._dp_update)

    def _clippable_backward(self, xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        """One physical batch's loss, with its per-sample gradients ready for Opacus to clip."""
        k = xc.shape[1]
        with autocast(xc.device, self.precision):
            loss = F.cross_entropy(self.model(xc.flatten(0, 1)), yc.repeat_interleave(k))
        loss.backward()
        for p in self.params:
            gs = p.grad_sample
            if k > 1:
                gs = gs.view(-1, k, *p.shape).mean(1)
            # Opacus clips in the per-sample gradients' dtype; in bf16 the rounded norms
            # and sums let a clipped gradient overshoot C (~0.3%), so clip in fp32.
            p.grad_sample = at_least_fp32(gs)
        if self.sparsity is not None:  # clip over the trained coordinates only
            for p, mask in self.sparsity.masks(self.params):
                p.grad_sample = p.grad_sample * mask
        return loss

    def _dp_update(self) -> None:
        if self.optimizer.pre_step():  # DPOptimizer.step, with `_update` as the update
            self._update()

    def _bk_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Clipped sums from `BookKeepingClipper`, then DPOptimizer's noise and update."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:  # allocated by the first accumulation, not before the backward
            p.summed_grad = None
        k = x.shape[1]
        for i, (xc, yc) in enumerate(
            zip(x.split(self.max_physical_batch), y.split(self.max_physical_batch), strict=True)
        ):
            if self.on_chunk is not None:
                self.on_chunk(i)
            with autocast(x.device, self.precision):
                loss = self.clipper.accumulate(
                    xc, yc, max_grad_norm=self.optimizer.max_grad_norm, views=k
                )
            self._open = True
            self._keep_part()
            self.chunk_losses.append((float(loss), xc.shape[0]))
        # DPOptimizer's own noise, scaling, accountant hook and update, from the clipped sums.
        # An empty placeholder per-sample gradient tells Opacus this was one accumulation.
        for p in self.params:
            if p.summed_grad is None:  # an empty logical batch (or a layer the loss skips)
                p.summed_grad = torch.zeros_like(p)
            p.grad_sample = p.summed_grad.new_empty((0,))
        self.optimizer.add_noise()
        self.optimizer.scale_grad()
        if self.optimizer.step_hook:
            self.optimizer.step_hook(self.optimizer)
        self._update()
        for p in self.params:  # the noised gradient is in p.grad; the sums are spent
            p.grad_sample = p.summed_grad = None
        return mean_of_chunks(self.chunk_losses, x.shape[0])
