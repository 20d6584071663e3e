"""RFE U-Net: shapes, input checks, gradients, torchvision weights, thop MACs vs. the paper, TorchScript, ONNX."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from bundle.networks import RFE, RFEUNet, load_encoder_weights
from bundle.networks.rfe_unet import BACKBONES

# Table 7 of Zarrin & Nikkhah 2025: GFLOPs of the model at 1x3x256x256 (thop's MAC count).
PAPER_GMACS = {"resnet34": 9.046, "resnet50": 39.701, "resnet101": 44.576}
# encoder widths e0..e4 per backbone (torchvision's ResNet)
WIDTHS = {
    "resnet34": [64, 64, 128, 256, 512],
    "resnet50": [64, 256, 512, 1024, 2048],
    "resnet101": [64, 256, 512, 1024, 2048],
}


@pytest.fixture(scope="module")
def resnet34_weights(tmp_path_factory):
    """A state_dict in torchvision's resnet34 key layout (our encoder's keys plus fc.*), random values, on disk."""
    generator = torch.Generator().manual_seed(0)
    keys = RFEUNet("resnet34").encoder.state_dict()
    state = {key: torch.randn(v.shape, generator=generator) for key, v in keys.items() if v.is_floating_point()}
    state.update({key: torch.tensor(3) for key in keys if key.endswith("num_batches_tracked")})
    state["fc.weight"] = torch.randn(1000, 512, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    path = tmp_path_factory.mktemp("weights") / "resnet34-torchvision.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_output_shape_non_square(backbone):
    model = RFEUNet(backbone, in_channels=3, out_channels=2).eval()
    with torch.no_grad():
        output = model(torch.randn(2, 3, 64, 96))
    assert output.shape == (2, 2, 64, 96)
    assert torch.isfinite(output).all()


def test_in_and_out_channels():
    model = RFEUNet("resnet34", in_channels=1, out_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 32, 64)).shape == (1, 3, 32, 64)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_rfe_skips_have_encoder_width_and_resolution(backbone):
    model = RFEUNet(backbone)
    widths = WIDTHS[backbone]
    for i, rfe in enumerate(model.rfe):
        assert rfe.sppf_skip.cv1.conv.in_channels == widths[i]
        assert rfe.sppf_deep.cv1.conv.in_channels == widths[i + 1]
        assert rfe.c2f.cv2.conv.out_channels == widths[i]


def test_rfe_merges_two_scales():
    rfe = RFE(8, 16, 4)
    assert rfe(torch.randn(1, 8, 12, 10), torch.randn(1, 16, 6, 5)).shape == (1, 4, 12, 10)
    with pytest.raises(ValueError, match="half the skip's resolution"):
        rfe(torch.randn(1, 8, 12, 10), torch.randn(1, 16, 6, 6))


@pytest.mark.parametrize("shape", [(1, 3, 64, 80), (1, 3, 48, 64), (1, 3, 65, 64)])
def test_size_not_multiple_of_32_is_refused(shape):
    model = RFEUNet("resnet34")
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(*shape))


def test_non_4d_input_and_unknown_backbone_are_refused():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        RFEUNet("resnet34")(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="resnet18"):
        RFEUNet("resnet18")


def test_gradients_reach_every_parameter():
    model = RFEUNet("resnet50").train()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    without_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert without_grad == []


def test_loads_torchvision_layout(resnet34_weights):
    path, state = resnet34_weights
    model = RFEUNet("resnet34", pretrained_weights=path)
    loaded = model.encoder.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_loads_wrapped_checkpoint(resnet34_weights, tmp_path, wrapper):
    _, state = resnet34_weights
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: state, "epoch": 90}, path)
    encoder = RFEUNet("resnet34").encoder
    load_encoder_weights(encoder, path)
    assert torch.equal(encoder.layer4[2].bn2.running_var, state["layer4.2.bn2.running_var"])


def test_logs_missing_and_unexpected_keys(resnet34_weights, tmp_path, caplog):
    _, state = resnet34_weights
    partial = {key: value for key, value in state.items() if not key.startswith("layer4.")}
    partial["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    encoder = RFEUNet("resnet34").encoder
    before = encoder.layer4[0].conv1.weight.clone()
    with caplog.at_level(logging.WARNING, logger="bundle.networks.rfe_unet"):
        load_encoder_weights(encoder, path)
    assert "extra.weight" in caplog.text and "layer4.0.conv1.weight" in caplog.text
    assert "fc.weight" not in caplog.text
    assert torch.equal(encoder.layer4[0].conv1.weight, before)
    assert torch.equal(encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_rgb_stem_is_adapted_to_other_input_channels(resnet34_weights):
    path, state = resnet34_weights
    model = RFEUNet("resnet34", in_channels=2, pretrained_weights=path).eval()
    stem = model.encoder.conv1
    assert stem.weight.shape == (64, 2, 7, 7)
    grey = torch.randn(1, 1, 32, 32)
    rgb_stem = torch.nn.functional.conv2d(grey.expand(1, 3, 32, 32), state["conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(stem(grey.expand(1, 2, 32, 32)), rgb_stem, rtol=1e-4, atol=1e-4)


def test_wrong_shapes_are_refused_naming_the_file(resnet34_weights):
    path, _ = resnet34_weights
    with pytest.raises(ValueError, match="resnet34-torchvision.pth.*other shapes.*layer1.0.conv1.weight"):
        RFEUNet("resnet50", pretrained_weights=path)


def test_unreadable_missing_and_foreign_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint\x00\x01")
    with pytest.raises(ValueError, match="garbage.pth.*could not be read"):
        RFEUNet("resnet34", pretrained_weights=garbage)
    with pytest.raises(ValueError, match="absent.pth does not exist"):
        RFEUNet("resnet34", pretrained_weights=tmp_path / "absent.pth")
    foreign = tmp_path / "foreign.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(ValueError, match="foreign.pth shares no tensor name"):
        RFEUNet("resnet34", pretrained_weights=foreign)
    not_state_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], not_state_dict)
    with pytest.raises(ValueError, match="list.pth does not hold a state_dict"):
        RFEUNet("resnet34", pretrained_weights=not_state_dict)


@pytest.mark.parametrize("backbone", sorted(PAPER_GMACS))
def test_thop_macs_match_paper_table7(backbone):
    thop = pytest.importorskip("thop")
    model = RFEUNet(backbone).eval()
    macs, _ = thop.profile(model, inputs=(torch.randn(1, 3, 256, 256),), verbose=False)
    assert macs / 1e9 == pytest.approx(PAPER_GMACS[backbone], rel=0.15)


@pytest.mark.parametrize("backbone", ["resnet34", "resnet50"])  # both residual block types
def test_torchscript_matches_eager(backbone):
    model = RFEUNet(backbone).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(torch.jit.Error, match="multiples of 32"):
        scripted(torch.randn(1, 3, 64, 72))


def test_channels_last_and_autocast():
    model = RFEUNet("resnet34").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        channels_last = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-4)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), reference, rtol=0.1, atol=0.1)


def test_onnx_export_with_dynamic_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = RFEUNet("resnet34").eval()
    path = tmp_path / "rfe_unet.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 64, 64),),
        path,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}},
        opset_version=17,
        dynamo=False,
    )
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    (logits,) = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def torchvision_resnet101_shapes() -> dict[str, tuple[int, ...]]:
    """Key → shape of torchvision's ``resnet101().state_dict()``, written from its architecture (not from our code).

    Stem conv1/bn1; layer1..4 with [3, 4, 23, 3] bottlenecks of width 64·2^i (conv1 1×1, conv2 3×3, conv3 1×1 to
    4·width, each followed by bn1..bn3), a downsample (1×1 conv + BN) in each stage's first block; fc 2048 → 1000.
    """
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def batch_norm(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    batch_norm("bn1", 64)
    inplanes = 64
    for stage, blocks in enumerate([3, 4, 23, 3], start=1):
        width = 64 * 2 ** (stage - 1)
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (width, inplanes, 1, 1)
            batch_norm(f"{prefix}.bn1", width)
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            batch_norm(f"{prefix}.bn2", width)
            shapes[f"{prefix}.conv3.weight"] = (4 * width, width, 1, 1)
            batch_norm(f"{prefix}.bn3", 4 * width)
            if block == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (4 * width, inplanes, 1, 1)
                batch_norm(f"{prefix}.downsample.1", 4 * width)
            inplanes = 4 * width
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 2048), (1000,)
    return shapes


def test_loads_a_torchvision_resnet101_state_dict(tmp_path):
    """Done-when of issue 2: a torchvision-layout ResNet-101 file loads and the encoder holds exactly its tensors."""
    generator = torch.Generator().manual_seed(101)
    state = {
        key: torch.tensor(7) if not shape else torch.randn(shape, generator=generator)
        for key, shape in torchvision_resnet101_shapes().items()
    }
    assert len(state) == 626  # torchvision's resnet101 state_dict has 626 entries
    path = tmp_path / "resnet101-torchvision.pth"
    torch.save(state, path)
    loaded = RFEUNet("resnet101", pretrained_weights=path).encoder.state_dict()
    assert set(loaded) == set(state) - {"fc.weight", "fc.bias"}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_baseline_without_rfe_keeps_the_decoder():
    """rfe=False: Table 9's "Base Line" (plain encoder skips), same decoder, fewer parameters, scriptable."""
    torch.manual_seed(0)
    full, plain = RFEUNet("resnet34"), RFEUNet("resnet34", rfe=False)
    assert len(plain.rfe) == 0
    full_keys = {k for k in full.state_dict() if not k.startswith("rfe.")}
    assert set(plain.state_dict()) == full_keys
    x = torch.randn(1, 3, 64, 96)
    plain.eval()
    with torch.no_grad():
        eager = plain(x)
        scripted = torch.jit.script(plain)(x)
    assert eager.shape == (1, 2, 64, 96)
    torch.testing.assert_close(scripted, eager)
