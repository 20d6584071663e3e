"""bundle.networks.make_network: the RFE U-Net and the stock MONAI peers behind one config key."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, FlexibleUNet

from bundle.networks import NETWORK_NAMES, RFEUNet, make_network


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "unetr"}, "unknown network 'unetr'; choose one of rfeunet, flexibleunet, basicunet"),
        ({"name": "flexibleunet", "backbone": "resnet18"}, "backbone must be one of resnet34, resnet50, resnet101"),
        ({"name": "basicunet", "rfe": False}, "rfe=False only applies to the rfeunet network"),
        ({"name": "flexibleunet", "pretrained_weights": "x.pth"}, "pretrained_weights is only supported for"),
    ],
)
def test_wrong_options_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_network(**kwargs)
