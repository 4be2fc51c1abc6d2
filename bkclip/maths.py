"""The arithmetic the rules share: reshapes by example, ghost norms, slicing by examples.

Shapes: ``n`` examples with ``k`` views each arrive as ``n * k`` rows (views of one example
adjacent); an example's gradient is the sum of its views' gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bkclip.rule import LayerState


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in a narrower float type (bf16/fp16 under autocast)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def exact_arithmetic(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for the per-example norms and clipped sums.

    Under bf16 autocast the forward and backward run in bf16, but the norms and the sums must
    be computed from the same values to float32 precision: a norm rounded to bf16 (~0.4%)
    would let an example's clipped contribution exceed C, i.e. break the sensitivity bound.
    The rules upcast what they read (inputs, output gradients) to the output gradient's dtype,
    which is at least float32 here.
    """
    return torch.autocast(t.device.type, enabled=False)


def per_example(t: torch.Tensor, n: int) -> torch.Tensor:
    """(N*K, ...) -> (N, K, ...)."""
    return t.reshape(n, -1, *t.shape[1:])


def positions(t: torch.Tensor, n: int) -> torch.Tensor:
    """(N*K, C, L) -> (N, C, K*L): an example's K views as one sequence of positions."""
    nk, c, length = t.shape
    return t.view(n, nk // n, c, length).permute(0, 2, 1, 3).reshape(n, c, -1)


def use_ghost(d: int, o: int, s: int, strategy: str) -> bool:
    """Ghost norms cost S^2 (D + O) per example, materialising S D O: take the cheaper."""
    return strategy == "ghost" or (strategy == "auto" and s * (d + o) < d * o)


def sequence_norm_sq(
    a: torch.Tensor, g: torch.Tensor, strategy: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Squared norms of ``G_i = g_i a_i^T`` for a (N, D, S), g (N, O, S), and G_i if it was built.

    Ghost: ``||sum_s g_s a_s^T||^2 = sum((A A^T) * (G G^T))``, N * S^2 * (D + O) multiply-adds;
    materialised: N * S * D * O. Materialising wins where S is large and D * O small (early
    layers), so the kept G_i are the small ones.
    """
    if use_ghost(a.shape[1], g.shape[1], a.shape[2], strategy):
        return ((a.transpose(1, 2) @ a) * (g.transpose(1, 2) @ g)).sum(dim=(1, 2)), None
    grads = g @ a.transpose(1, 2)  # (N, O, D)
    return row_norm_sq(grads.flatten(1)), grads


#: Ghost norms and the affine layers' per-view gradients are computed over up to this many
#: slices of the examples, so their temporaries (unfolded windows, S x S Gram matrices,
#: normalised activations) take a fraction of the memory they would take for the whole batch;
#: temporaries under `SLICE_BYTES` are not split, since a small slice costs more in overhead
#: than it saves.
SLICES = 8
SLICE_BYTES = 4 * 2**20


def slices(temporary_bytes: int) -> int:
    """How many slices to compute a temporary of this total size in."""
    return max(1, min(SLICES, -(-temporary_bytes // SLICE_BYTES)))


def by_examples(
    n: int, temporary_bytes: int, fn: Callable[..., torch.Tensor], *tensors: torch.Tensor
) -> torch.Tensor:
    """``fn(*slices, examples)`` over slices of whole examples (all K views of each), joined
    along the first dimension; each tensor is (N*K, ...), and ``temporary_bytes`` what ``fn``
    would allocate for the whole batch."""
    k = tensors[0].shape[0] // n
    step = -(-n // slices(temporary_bytes))
    return torch.cat(
        [
            fn(*(t[i * k : (i + step) * k] for t in tensors), min(step, n - i))
            for i in range(0, n, step)
        ]
    )


def nbytes(t: torch.Tensor) -> int:
    """The memory ``t``'s elements take."""
    return t.numel() * t.element_size()


def row_norm_sq(t: torch.Tensor) -> torch.Tensor:
    """``(t ** 2).sum(-1)`` without a temporary the size of ``t``."""
    return torch.linalg.vector_norm(t, dim=-1).square()


def row_dot(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(t * z).sum(-1)`` for t (N, O, D) and z (O, D), a slice of examples at a time so the
    product never takes the memory of all of ``t``."""
    return by_examples(t.shape[0], nbytes(t), lambda part, _m: (part * z).sum(-1), t)


def unfold(x: torch.Tensor, kernel_size, padding, stride) -> torch.Tensor:
    """The (N, C * k * k, L) windows a convolution with these settings reads."""
    return F.unfold(x, kernel_size, padding=padding, stride=stride)


def ghost_windows_norm_sq(
    n: int,
    kernel_size,
    x: torch.Tensor,
    g: torch.Tensor,
    windows: Callable[..., torch.Tensor],
    *extra: torch.Tensor,
) -> torch.Tensor:
    """Ghost squared norms of a convolution-like layer's per-example weight gradients, a slice
    of examples at a time: ``windows(x_slice, *extra_slices)`` gives its (m*K, D, L) input
    windows, g is the (N*K, O, H, W) output gradient."""

    def one(xs: torch.Tensor, gs: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        *parts, m = rest
        a = positions(windows(xs, *parts), m)  # (m, D, K*T)
        return sequence_norm_sq(a, positions(gs.flatten(2), m), "ghost")[0]

    window = kernel_size[0] * kernel_size[1]
    return by_examples(n, nbytes(x) * window, one, x, g, *extra)


def conv_per_example(
    x: torch.Tensor, g: torch.Tensor, n: int, kernel_size, stride, padding
) -> torch.Tensor:
    """Per-example weight gradients ``sum_s g_s a_s^T`` of a convolution, shape (N, O, D).

    With one view per example this is the weight gradient of a grouped convolution with the
    batch as groups (oneDNN/cuDNN's own kernel, no unfolded copy of the input); with K views
    the views' positions are unfolded and summed with one batched matmul.
    """
    nk, c = x.shape[:2]
    o = g.shape[1]
    kernel = tuple(kernel_size)
    if nk == n:
        w = torch.nn.grad.conv2d_weight(
            x.reshape(1, nk * c, *x.shape[2:]),
            (nk * o, c, *kernel),
            g.reshape(1, nk * o, *g.shape[2:]),
            stride=stride,
            padding=padding,
            groups=nk,
        )
        return w.view(n, o, -1)
    a = positions(unfold(x, kernel, padding, stride), n)
    return positions(g.flatten(2), n) @ a.transpose(1, 2)


def weighted_sum(coef: torch.Tensor, state: LayerState) -> torch.Tensor:
    """``sum_i c_i G_i`` from the kept per-example gradients (``coef`` per view)."""
    kept = state.per_example
    c = coef.view(state.n, -1)[:, 0]
    return torch.einsum("n,nod->od", c.to(kept.dtype), kept)


def bias_norm_sq(state: LayerState, g: torch.Tensor) -> torch.Tensor:
    """Squared per-example norms of a per-channel bias that sees output gradient ``g``
    ((N*K, O, ...)); keeps its per-view gradients in ``state`` for `bias_sum`."""
    dims = tuple(range(2, g.dim()))
    state.bias_per_view = g.sum(dim=dims) if dims else g
    return per_example(state.bias_per_view, state.n).sum(1).square().sum(-1)


def bias_sum(coef: torch.Tensor, state: LayerState) -> torch.Tensor:
    """The clipped sum of a bias whose per-view gradients `bias_norm_sq` kept."""
    return coef @ state.bias_per_view.to(coef.dtype)


def per_view_norm_sq(per_view: dict[nn.Parameter, torch.Tensor], n: int) -> torch.Tensor:
    """Each example's squared norm from every parameter's per-view gradients ``(N*K, ...)``."""
    return sum(per_example(v, n).sum(1).flatten(1).square().sum(1) for v in per_view.values())


def per_view_sum(
    coef: torch.Tensor, per_view: dict[nn.Parameter, torch.Tensor]
) -> dict[nn.Parameter, torch.Tensor]:
    """``sum_v c_v grad_v`` for every parameter's per-view gradients (``coef`` per view)."""
    return {p: torch.einsum("v,v...->...", coef.to(v.dtype), v) for p, v in per_view.items()}
