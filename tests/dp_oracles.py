"""Oracles shared by the DP tests: per-sample gradients vs one-example batches, batch mixing."""

from __future__ import annotations

import copy

import torch
from opacus import GradSampleModule
from opacus.utils.per_sample_gradients_utils import (
    compute_microbatch_grad_sample,
    compute_opacus_grad_sample,
)
from torch import nn

import norms
from bench.backbones import create_backbone
from norms.lifecycle import synthetic_run_data


def grad_sample_mismatches(
    model: nn.Module, x: torch.Tensor, mode: str, *, atol: float = 1e-9, rtol: float = 1e-6
) -> list[str]:
    """Parameters whose Opacus per-sample gradients differ from one-example-batch gradients.

    The reference is Opacus' own oracle (`compute_microbatch_grad_sample`): run each example
    alone and take its ordinary gradient. Tolerances are absolute + relative, elementwise, so a
    gradient that is exactly zero in theory compares sensibly.
    """
    ref = compute_microbatch_grad_sample(x, model, loss_reduction="sum")
    got = compute_opacus_grad_sample(x, model, loss_reduction="sum", grad_sample_mode=mode)
    bad = []
    for name, expected in ref.items():
        if name not in got or not torch.allclose(got[name], expected, atol=atol, rtol=rtol):
            err = (got[name] - expected).abs().max().item() if name in got else float("nan")
            bad.append(f"{name}: max abs err {err:.3g}")
    return bad


def outputs_and_grad_samples(
    model: nn.Module, x: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Training-mode outputs and Opacus per-sample gradients of ``sum(outputs**2)``."""
    gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    gsm.train()
    torch.manual_seed(seed)  # same dropout masks in both passes of a comparison
    out = gsm(x)
    out.square().sum().backward()
    grads = {
        n: p.grad_sample.detach().clone()
        for n, p in gsm._module.named_parameters()
        if p.requires_grad
    }
    return out.detach(), grads


def mixing_examples(model: nn.Module, x: torch.Tensor, j: int) -> list[str]:
    """What changes for the other examples when example ``j`` is replaced (empty list: nothing).

    Under DP-SGD example i's output and per-sample gradient must not depend on example j.
    """
    x2 = x.clone()
    x2[j] = torch.randn_like(x[j]) * 3 + 1
    out1, g1 = outputs_and_grad_samples(model, x)
    out2, g2 = outputs_and_grad_samples(model, x2)
    keep = [i for i in range(x.shape[0]) if i != j]
    changed = []
    if not torch.allclose(out1[keep], out2[keep], atol=1e-10, rtol=1e-8):
        changed.append("outputs")
    changed += [
        n for n in g1 if not torch.allclose(g1[n][keep], g2[n][keep], atol=1e-10, rtol=1e-8)
    ]
    return changed


def per_example_grads(layer: nn.Module):
    """Per-example parameter gradients of one layer by autograd through ``torch.func``.

    Returns ``fn(g, *inputs) -> {name: (N, *param.shape)}``: example i's gradient of
    ``(layer(inputs_i) * g_i).sum()``, i.e. what a grad sampler computes from the layer's
    inputs and its output gradient ``g``. Built once, so a benchmark times only the call.
    """
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, gi, xi):
        out = torch.func.functional_call(layer, p, tuple(t[None] for t in xi))
        return (out * gi[None]).sum()

    vmapped = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    return lambda g, *inputs: vmapped(params, g, inputs)


def norms_of(grads: dict) -> torch.Tensor:
    """Per-example L2 norms over every tensor of a {name or param: (N, ...)} dict."""
    return torch.sqrt(sum(v.flatten(1).square().sum(1) for v in grads.values()))


def norm_variants() -> list[str]:
    """Every registered norm, then each declared test variant (`NormSpec.test_variants`), as
    canonical spec strings: what the contract, oracle and book-keeping tests sweep."""
    out = []
    for name in norms.list_norms():
        spec = norms.get_norm(name)
        out.append(str(spec.resolve()))
        out += [str(norms.resolve_norm(f"{name}[{v}]")) for v in spec.test_variants]
    return out


def oracle_variant(norm: str) -> str:
    """``norm`` with its declared `NormSpec.oracle_params` (e.g. no dropout), so that two
    forward passes agree, as the per-sample-gradient oracles need."""
    resolved = norms.resolve_norm(norm)
    return str(resolved.variant(**resolved.spec.oracle_params))


def prepared_backbone(
    backbone: str, norm: str, *, width: float, size: int, dtype=torch.float64, seed: int = 0
) -> nn.Module:
    """A small backbone with ``norm``, its preparation hook run on random inputs."""
    torch.manual_seed(seed)
    model = create_backbone(backbone, norm=norm, width=width).to(dtype)
    norms.resolve_norm(norm).prepare(
        model, synthetic_run_data((3, size, size), examples=16, dtype=dtype, seed=seed)
    )
    return model
