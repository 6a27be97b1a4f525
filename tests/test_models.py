"""Tests for pat_nbdev.models: shapes at the paper's sizes, trainability, attention gates, SegNet unpooling, registry errors."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import segmentation_models_pytorch.encoders as smp_encoders

from pat_nbdev.models import (MODEL_NAMES, MODEL_PRESETS, AttentionGate, AttentionUNet, PadToMultiple, SegNet,
                              get_model, pool_with_indices, unpool)

PAPER_SIZES = [(256, 256), (256, 512), (288, 384)]
# tiny versions of each model, to keep the tests fast on one CPU core
TINY = dict(segnet=dict(width=4), attunet=dict(width=4), unet=dict(preset="small"), unetpp=dict(preset="small"))


def n_parameters(model): return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_at_input_size(name):
    model = get_model(name, 5, **TINY[name]).eval()
    with torch.no_grad():
        for h, w in PAPER_SIZES + [(250, 330), (33, 47)]:  # the paper's sizes, and sizes that are no multiple of 32
            assert model(torch.randn(1, 3, h, w)).shape == (1, 5, h, w)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_in_channels(name):
    model = get_model(name, 2, in_channels=1, **TINY[name]).eval()
    with torch.no_grad(): assert model(torch.randn(2, 1, 64, 64)).shape == (2, 2, 64, 64)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_adam_steps_lower_the_loss(name):
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    model = get_model(name, 3, **TINY[name])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01, losses
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad), "a parameter got no gradient"


def test_presets_make_comparable_models():
    for preset, (lo, hi) in [("default", (24e6, 30e6)), ("small", (1.5e6, 3.5e6))]:
        counts = {name: n_parameters(get_model(name, 20, preset=preset)) for name in MODEL_NAMES}
        assert all(lo <= c <= hi for c in counts.values()), (preset, counts)
    assert set(MODEL_PRESETS) == {"default", "small"}


def test_segnet_is_vgg16_shaped():
    model = SegNet(3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 26  # 13 encoder + 13 decoder convolutions
    assert max(c.out_channels for c in convs) == 512


@pytest.mark.parametrize("h,w", [(8, 8), (9, 13), (16, 5), (7, 7)])
def test_unpool_puts_values_back_at_argmax(h, w):
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w, generator=g)
    pooled, indices, size = pool_with_indices(x)
    restored = unpool(pooled, indices, size)
    assert restored.shape == x.shape
    # each pooled value is the max of its 2x2 window of x (computed independently with unfold)
    windows = x[..., : h // 2 * 2, : w // 2 * 2].unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, h // 2, w // 2, 4)
    torch.testing.assert_close(pooled, windows.max(-1).values)
    # restored holds x's value at exactly one position per window, the argmax, and zero everywhere else
    kept = restored != 0
    assert kept.sum() == pooled.numel()
    torch.testing.assert_close(restored[kept], x[kept])
    expected = torch.zeros_like(x).flatten(2).scatter(2, indices.flatten(2), pooled.flatten(2)).view_as(x)
    torch.testing.assert_close(restored, expected)
    assert (restored[..., h // 2 * 2:, :] == 0).all() and (restored[..., w // 2 * 2:] == 0).all()


def test_unpool_equals_max_unpool2d():
    x = torch.randn(2, 3, 11, 6, requires_grad=True)
    pooled, indices, size = pool_with_indices(x)
    ours, torchs = unpool(pooled, indices, size), F.max_unpool2d(pooled, indices, 2, 2, output_size=size)
    torch.testing.assert_close(ours, torchs)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g, retain_graph=True)[0], torch.autograd.grad(torchs, x, g)[0])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_models_train_under_deterministic_algorithms(name):
    "torch refuses max_unpool2d in deterministic mode, even on CPU; every model must still run forward and backward."
    model = get_model(name, 3, **TINY[name])
    torch.use_deterministic_algorithms(True)
    try: F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.randint(0, 3, (2, 32, 32))).backward()
    finally: torch.use_deterministic_algorithms(False)


def test_segnet_decoder_unpools_at_encoder_argmax():
    "Inside SegNet the first decoder input is non-zero only where the last encoder stage had its window maxima."
    model = SegNet(3, width=2).eval()
    seen = {}
    model.encoder[-1].register_forward_hook(lambda m, i, out: seen.setdefault("enc", out))
    model.decoder[-1].register_forward_pre_hook(lambda m, i: seen.setdefault("dec_in", i[0]))
    with torch.no_grad(): model(torch.randn(1, 3, 64, 64))
    enc, dec_in = seen["enc"], seen["dec_in"]
    pooled = F.max_pool2d(enc, 2)
    torch.testing.assert_close(F.max_pool2d(dec_in.abs(), 2) > 0, pooled != 0)
    nonzero = dec_in != 0
    torch.testing.assert_close(dec_in[nonzero], enc[nonzero])


def test_attention_gate_coefficients():
    gate = AttentionGate(c_skip=6, c_gate=12, c_inter=3)
    x, g = torch.randn(3, 6, 20, 14), torch.randn(3, 12, 10, 7)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (3, 1, 20, 14)
    assert alpha.min() >= 0 and alpha.max() <= 1
    torch.testing.assert_close(gate(x, g), x * alpha)
    # a large bias on psi opens the gate fully, a large negative one closes it
    with torch.no_grad(): gate.psi.bias.fill_(50.0)
    torch.testing.assert_close(gate(x, g), x)
    with torch.no_grad(): gate.psi.bias.fill_(-50.0)
    assert gate(x, g).abs().max() < 1e-12


def test_attention_gate_depends_on_gating_signal():
    gate = AttentionGate(4, 8, 2)
    x = torch.randn(1, 4, 8, 8)
    assert not torch.allclose(gate.coefficients(x, torch.randn(1, 8, 4, 4)), gate.coefficients(x, torch.randn(1, 8, 4, 4)))


def test_attention_unet_has_a_gate_per_skip():
    model = AttentionUNet(3, width=2)
    assert len(model.gates) == 4
    calls = []
    for gate in model.gates: gate.register_forward_hook(lambda m, i, out: calls.append(out.shape))
    with torch.no_grad(): model(torch.randn(1, 3, 32, 32))
    assert [s[-1] for s in calls] == [4, 8, 16, 32]  # deepest skip first


def test_pad_to_multiple_crops_back():
    seen = []
    net = nn.Identity()
    net.register_forward_hook(lambda m, i, out: seen.append(out.shape[-2:]))
    x = torch.randn(1, 2, 33, 70)
    torch.testing.assert_close(PadToMultiple(net, 32)(x), x)
    assert tuple(seen[0]) == (64, 96)


def test_registry_errors():
    with pytest.raises(ValueError, match="segnet.*unet.*attunet.*unetpp"): get_model("deeplab", 3)
    with pytest.raises(ValueError, match="small"): get_model("unet", 3, preset="huge")
    with pytest.raises(ValueError, match="width"): get_model("segnet", 3, encoder_name="resnet18")
    with pytest.raises(ValueError, match="encoder_name"): get_model("unet", 3, width=16)  # smp would swallow it
    with pytest.raises(ValueError, match="resnet34"): get_model("unetpp", 3, encoder_name="resnet7")
    with pytest.raises(ValueError, match="n_classes"): get_model("segnet", 0)
    with pytest.raises(ValueError, match="unknown keyword"): get_model("unet", 3, aux_params=dict(classes=3))


def test_encoder_override_and_no_download_by_default(monkeypatch):
    def no_network(*a, **k): raise AssertionError("tried to download weights")
    monkeypatch.setattr(smp_encoders, "hf_hub_download", no_network)
    model = get_model("unet", 3, encoder_name="resnet18")
    assert 14e6 < n_parameters(model) < 15e6  # smp's Unet with a ResNet-18 encoder


def test_pretrained_download_failure_is_explained(monkeypatch):
    def offline(*a, **k): raise OSError("Name or service not known")
    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    with pytest.raises(RuntimeError, match="encoder_weights=None") as err:
        get_model("unet", 3, encoder_name="resnet18", encoder_weights="imagenet")
    assert "resnet18" in str(err.value) and "offline" in str(err.value)
