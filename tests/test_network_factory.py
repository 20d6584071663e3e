"""bundle.networks.make_network: the RFE U-Net and the stock MONAI peers behind one config key."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, FlexibleUNet

from bundle.errors import ConfigError
from bundle.networks import NETWORK_NAMES, RFEUNet, make_network
from bundle.networks.blocks import Conv


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_every_network_maps_a_photo_batch_to_two_logit_channels_at_full_size(name):
    torch.manual_seed(0)
    network = make_network(name, backbone="resnet34").eval()
    with torch.no_grad():
        logits = network(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, 2, 64, 96)
    assert torch.isfinite(logits).all()


def test_the_names_build_the_classes_they_say():
    assert type(make_network("rfeunet", "resnet34")) is RFEUNet
    assert make_network("rfeunet", "resnet34", rfe=False).use_rfe is False
    assert type(make_network("flexibleunet", "resnet34")) is FlexibleUNet
    assert type(make_network("basicunet")) is BasicUNet
    # the peer's encoder is the named ResNet: ResNet-101 has far more parameters than ResNet-34
    small, large = (
        sum(p.numel() for p in make_network("flexibleunet", b).parameters()) for b in ("resnet34", "resnet101")
    )
    assert large > 1.5 * small


@pytest.mark.parametrize("batchnorm, eps, momentum", [("yolov8", 1e-3, 0.03), ("pytorch", 1e-5, 0.1)])
def test_batchnorm_setting_reaches_every_yolov8_block_and_not_the_encoder(batchnorm, eps, momentum):
    network = make_network("rfeunet", "resnet34", batchnorm=batchnorm)
    blocks = [m for m in network.modules() if isinstance(m, Conv)]
    assert len(blocks) > 20  # RFE modules, decoder stages, head
    assert {(m.bn.eps, m.bn.momentum) for m in blocks} == {(eps, momentum)}
    encoder = {(m.eps, m.momentum) for m in network.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert encoder == {(1e-5, 0.1)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "unetr"}, "network_name: 'unetr' is not one of rfeunet, flexibleunet, basicunet"),
        ({"name": "flexibleunet", "backbone": "resnet18"}, "backbone: 'resnet18' is not one of resnet34, resnet50, "),
        ({"name": "rfeunet", "backbone": "resnet-34"}, "backbone: 'resnet-34' is not one of .*; did you mean resnet34"),
        ({"name": "basicunet", "rfe": False}, "rfe: false applies to the rfeunet network only, not basicunet"),
        ({"name": "basicunet", "rfe": "maybe"}, "rfe: 'maybe' is not a yes/no value"),
        ({"name": "flexibleunet", "pretrained_weights": "x.pth"}, "pretrained_weights: only the rfeunet network"),
        ({"name": "flexibleunet", "batchnorm": "pytorch"}, "batchnorm: pytorch applies to the rfeunet network only"),
        ({"name": "rfeunet", "batchnorm": "torch"}, "batchnorm: 'torch' is not one of yolov8, pytorch"),
    ],
)
def test_wrong_options_are_one_clear_error(kwargs, message):
    """The same one-line ``ConfigError`` (a ``ValueError``) a command-line user gets for these options."""
    with pytest.raises(ConfigError, match=message) as raised:
        make_network(**kwargs)
    assert "\n" not in str(raised.value)
