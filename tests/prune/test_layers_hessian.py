"""Layer discovery, weight views and Hessian accumulation (Linear, GPT-2 Conv1D, Conv2d via unfold)."""

import pytest
import torch
from torch import nn

from iobs.models.tiny import tiny_model
from iobs.prune.hessian import HessianAccumulator, accumulate_hessians, layer_inputs
from iobs.prune.layers import find_layers, get_weight, set_weight


def test_find_layers_default_excludes_lm_head_and_patterns():
    model = tiny_model("llama")
    names = list(find_layers(model))
    assert "lm_head" not in names and len(names) == 14
    assert names[0] == "model.layers.0.self_attn.q_proj"
    assert list(find_layers(model, include=["*.q_proj"])) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    got = list(find_layers(model, include=[r"re:layers\.1\.mlp\.(up|gate)_proj$"]))
    assert got == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    got = find_layers(model, exclude=["*.mlp.*"])
    assert len(got) == 8 and not any(".mlp." in n for n in got)
    assert "lm_head" in find_layers(model, default_exclude=False)


@pytest.mark.parametrize("bad", ["*.qproj", "re:nothing_here$"])
def test_pattern_matching_nothing_is_an_error(bad):
    with pytest.raises(ValueError, match="matches no prunable"):
        find_layers(tiny_model("llama"), include=[bad])
    with pytest.raises(ValueError, match="matches no prunable"):
        find_layers(tiny_model("llama"), exclude=[bad])


def test_invalid_regex_is_an_error():
    with pytest.raises(ValueError, match="regular expression"):
        find_layers(tiny_model("llama"), include=["re:("])


def test_gpt2_conv1d_weight_view_is_transposed():
    model = tiny_model("gpt2", dtype=torch.float64)
    m = model.transformer.h[0].mlp.c_fc
    W = get_weight(m)
    assert W.shape == (64, 32)
    x = torch.randn(3, 5, 32, dtype=torch.float64)
    torch.testing.assert_close(m(x), x @ W.t() + m.bias)
    W2 = torch.randn_like(W)
    set_weight(m, W2)
    torch.testing.assert_close(m(x), x @ W2.t() + m.bias)


def test_grouped_convolutions_are_skipped_or_refused():
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 4, 1))
    assert list(find_layers(net)) == ["0", "2"]
    with pytest.raises(ValueError, match="grouped convolution"):
        find_layers(net, skip_grouped=False)


def test_linear_hessian_equals_sum_of_outer_products():
    lin = nn.Linear(6, 3).double()
    xs = [torch.randn(2, 5, 6, dtype=torch.float64) for _ in range(3)]
    with accumulate_hessians({"l": lin}) as acc:
        for x in xs:
            lin(x)
    X = torch.cat([x.reshape(-1, 6) for x in xs])  # (tokens, d_in)
    assert acc["l"].tokens == 30
    torch.testing.assert_close(acc["l"].H, X.t() @ X)
    assert lin.weight.grad is None and not lin._forward_pre_hooks  # hooks removed


def _explicit_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Patches by loops over output positions (zero padding), flattened like weight.reshape(out, -1)."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    B, C, Hh, Ww = xp.shape
    oh = (Hh - dh * (kh - 1) - 1) // sh + 1
    ow = (Ww - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for b in range(B):
        for i in range(oh):
            for j in range(ow):
                r0, c0 = i * sh, j * sw
                patch = xp[b, :, r0 : r0 + dh * (kh - 1) + 1 : dh, c0 : c0 + dw * (kw - 1) + 1 : dw]
                rows.append(patch.reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize(
    "kw", [dict(kernel_size=3), dict(kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2))]
)
def test_conv2d_hessian_matches_explicit_unfold(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, **kw).double()
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    P = _explicit_patches(conv, x)
    torch.testing.assert_close(layer_inputs(conv, x), P)
    # the column order matches the weight reshape: W @ patch + b reproduces the convolution
    y = conv(x)  # (B, out, oh, ow)
    Y = (P @ get_weight(conv).t() + conv.bias).reshape(2, y.shape[2], y.shape[3], 5).permute(0, 3, 1, 2)
    torch.testing.assert_close(Y, y)
    acc = HessianAccumulator(conv)
    acc.hook(conv, (x,))
    torch.testing.assert_close(acc.H, P.t() @ P)
    assert acc.tokens == P.shape[0]


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_conv2d_same_padding_and_padding_modes(mode):
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 4, 3, padding="same", padding_mode=mode).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    P = layer_inputs(conv, x)
    y = conv(x)
    Y = (P @ get_weight(conv).t() + conv.bias).reshape(1, 5, 5, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(Y, y)


def test_nonfinite_inputs_are_refused():
    lin = nn.Linear(3, 2)
    acc = HessianAccumulator(lin)
    with pytest.raises(ValueError, match="NaN/Inf"):
        acc.add(torch.tensor([[1.0, float("nan"), 0.0]]))


def test_layers_sharing_an_input_share_the_product_but_not_H():
    torch.manual_seed(3)
    a, b, c = nn.Linear(4, 2).double(), nn.Linear(4, 3).double(), nn.Linear(4, 2).double()
    xs = [torch.randn(5, 4, dtype=torch.float64) for _ in range(2)]
    with accumulate_hessians({"a": a, "b": b, "c": c}) as acc:
        for x in xs:
            a(x), b(x), c(torch.tanh(x))  # a and b get the same tensor object
    X = torch.cat(xs)
    T = torch.tanh(X)
    torch.testing.assert_close(acc["a"].H, X.t() @ X)
    torch.testing.assert_close(acc["b"].H, X.t() @ X)
    torch.testing.assert_close(acc["c"].H, T.t() @ T)
    assert acc["a"].H is not acc["b"].H and acc["a"].tokens == acc["b"].tokens == acc["c"].tokens == 10


def test_patterns_match_ancestors():
    model = tiny_model("llama")
    assert list(find_layers(model, exclude=["*.mlp", "model.layers.1"])) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj",
        "model.layers.0.self_attn.o_proj",
    ]
    assert len(find_layers(model, include=["model.layers.1"])) == 7
    with pytest.raises(ValueError, match="matches no prunable layer"):
        find_layers(model, include=["*.input_layernorm"])  # a module, but it holds no prunable layer
