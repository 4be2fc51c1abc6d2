"""KNConv2d's fused computation equals the definition; its grad sampler equals the oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.utils.per_sample_gradients_utils import check_per_sample_gradients_are_correct

from norms.kernel_norm import KernelNorm2d, KNConv2d, knconv2d_unfold_reference


@settings(deadline=None, max_examples=25)
@given(
    cin=st.integers(1, 5),
    cout=st.integers(1, 4),
    k=st.sampled_from([1, 2, 3, 5]),
    stride=st.integers(1, 2),
    pad=st.integers(0, 2),
    h=st.integers(5, 9),
    w=st.integers(5, 9),
    scale=st.sampled_from([0.1, 1.0, 20.0]),
)
def test_fused_knconv_equals_unfold_normalise_convolve(cin, cout, k, stride, pad, h, w, scale):
    layer = KNConv2d(cin, cout, k, stride=stride, padding=pad, dropout=0.0).double()
    x = torch.randn(2, cin, h, w, dtype=torch.float64) * scale + 0.5
    ref = knconv2d_unfold_reference(
        x, layer.core.weight, layer.core.bias, stride=stride, padding=pad, eps=layer.eps
    )
    torch.testing.assert_close(layer(x), ref, atol=1e-9, rtol=1e-7)


def test_statistics_dropout_touches_only_the_statistics():
    layer = KNConv2d(3, 4, 3, dropout=0.3).double().train()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    stats_x = torch.nn.functional.dropout(x, 0.3, training=True)
    ref = knconv2d_unfold_reference(
        x, layer.core.weight, layer.core.bias, stride=1, padding=1, eps=layer.eps, stats_x=stats_x
    )
    torch.testing.assert_close(out, ref, atol=1e-9, rtol=1e-7)
    assert not torch.allclose(out, layer.eval()(x))


@pytest.mark.parametrize("eval_dropout", [False, True])
def test_statistics_dropout_at_evaluation_follows_the_documented_choice(eval_dropout):
    layer = KNConv2d(3, 4, 3, dropout=0.5, eval_dropout=eval_dropout).eval()
    x = torch.randn(2, 3, 8, 8)
    deterministic = torch.equal(layer(x), layer(x))
    assert deterministic is not eval_dropout


@pytest.mark.parametrize(("k", "stride", "pad"), [(3, 1, 1), (3, 2, 1), (1, 2, 0), (2, 1, 0)])
def test_knconv_grad_sampler_equals_one_example_gradients(k, stride, pad):
    layer = KNConv2d(3, 5, k, stride=stride, padding=pad, dropout=0.0).double()
    x = torch.randn(4, 3, 7, 7, dtype=torch.float64)
    assert check_per_sample_gradients_are_correct(x, layer, atol=1e-9, rtol=1e-7)


def test_per_pixel_kernel_norm_standardises_each_pixel_over_channels():
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64) * 5 + 2
    y = KernelNorm2d(8, dropout=0.0)(x)
    torch.testing.assert_close(
        y.mean(1), torch.zeros(3, 4, 4, dtype=torch.float64), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(
        y.var(1, unbiased=False), torch.ones(3, 4, 4, dtype=torch.float64), atol=1e-5, rtol=0
    )
