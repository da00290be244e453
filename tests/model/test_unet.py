import pytest
import torch

from flowseg.config import ModelConfig
from flowseg.model.unet import FLOW_SCALE, NetOutput, UNet


def _net(**kw):
    torch.manual_seed(0)
    return UNet(ModelConfig(**{"widths": (8, 16, 32), **kw})).eval()


@pytest.mark.parametrize("skip", ["add", "concat"])
@pytest.mark.parametrize("shape", [(32, 32), (37, 53), (5, 9)])
def test_output_shapes_any_size(skip, shape):
    net = _net(n_classes=3, in_channels=2, skip=skip)
    with torch.no_grad():
        out = net(torch.randn(2, 2, *shape))
    assert isinstance(out, NetOutput)
    assert out.flows.shape == (2, 2, *shape)
    assert out.cellprob.shape == (2, *shape)
    assert out.class_logits.shape == (2, 3, *shape)
    assert torch.equal(out.unit_flows(), out.flows / FLOW_SCALE)


def test_batch_equals_singles_in_eval_mode():
    net = _net(n_classes=2)
    x = torch.randn(3, 1, 24, 40)
    with torch.no_grad():
        batch = net(x)
        singles = [net(x[i:i + 1]) for i in range(3)]
    for i, single in enumerate(singles):
        torch.testing.assert_close(batch.flows[i], single.flows[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch.class_logits[i], single.class_logits[0], atol=1e-5, rtol=1e-5)


def test_style_changes_output_and_can_be_disabled():
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        styled = _net(style=True)(x).cellprob
        plain = _net(style=False)(x).cellprob
    assert not torch.allclose(styled, plain)
    assert sum(p.numel() for p in _net(style=False).parameters()) < \
        sum(p.numel() for p in _net(style=True).parameters())


def test_gradients_reach_every_parameter():
    net = _net(n_classes=2).train()
    out = net(torch.randn(2, 1, 16, 16))
    (out.flows.sum() + out.cellprob.sum() + out.class_logits.sum()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing


def _class_grads(net, x, class_grad):
    net.zero_grad()
    out = net(x, class_grad=class_grad)
    out.class_logits.square().sum().backward()
    return out, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("class_grad", [0.0, 0.25])
def test_class_grad_scales_what_the_class_loss_teaches_the_trunk(class_grad):
    net = _net(n_classes=3).train()
    x = torch.randn(2, 1, 16, 16)
    full_out, full = _class_grads(net, x, 1.0)
    out, part = _class_grads(net, x, class_grad)
    for name in ("flows", "cellprob", "class_logits"):  # outputs do not depend on it
        torch.testing.assert_close(getattr(out, name), getattr(full_out, name))
    # the class rows of the 1x1 conv and the style -> class linear map learn as before
    head = {"head.2.weight", "head.2.bias", "style_classes.weight", "style_classes.bias"}
    for name in head:
        torch.testing.assert_close(part[name], full[name])
    trunk = [n for n in full if n not in head]
    assert trunk and any(full[n].abs().sum() > 0 for n in trunk)
    for name in trunk:
        torch.testing.assert_close(part.get(name, torch.zeros_like(full[name])),
                                   class_grad * full[name], atol=1e-6, rtol=1e-4)


def test_style_classes_add_an_image_level_class_term():
    x = torch.randn(2, 1, 16, 16)
    with_style, without = _net(n_classes=3), _net(n_classes=3, style_classes=False)
    assert without.style_classes is None and with_style.style_classes is not None
    torch.nn.init.zeros_(with_style.style_classes.weight)
    torch.nn.init.constant_(with_style.style_classes.bias, 1.5)
    without.load_state_dict({k: v for k, v in with_style.state_dict().items()
                             if not k.startswith("style_classes")})
    with torch.no_grad():
        a, b = with_style(x), without(x)
    torch.testing.assert_close(a.class_logits, b.class_logits + 1.5)
    torch.testing.assert_close(a.flows, b.flows)


def test_wrong_input_channels_names_expected_shape():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        _net()(torch.randn(1, 3, 16, 16))


def test_needs_model_config():
    with pytest.raises(TypeError, match="ModelConfig"):
        UNet({"widths": (8, 16)})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_equals_gpu():
    net = _net(n_classes=2)
    x = torch.randn(2, 1, 30, 44)
    with torch.no_grad():
        cpu = net(x)
        gpu = net.cuda()(x.cuda())
    torch.testing.assert_close(gpu.flows.cpu(), cpu.flows, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.class_logits.cpu(), cpu.class_logits, atol=1e-4, rtol=1e-4)


def test_channels_last_net_stays_channels_last_after_a_one_channel_input():
    """A 1-channel input's layout is ambiguous; the first level's residual sum must still
    come out channels-last (a mixed-layout network ran bf16 inference 1.6x slower)."""
    net = _net(in_channels=1).to(memory_format=torch.channels_last)
    seen = []
    net.encoder[0].register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        net(torch.randn(1, 1, 32, 32).contiguous(memory_format=torch.channels_last))
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
