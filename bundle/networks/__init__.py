"""Networks: YOLOv8 blocks, the RFE U-Net, the factory that also builds MONAI peers, the fast inference path."""

from bundle.networks.blocks import SPPF, Bottleneck, C2f, Conv
from bundle.networks.factory import NETWORK_NAMES, make_network
from bundle.networks.fastpath import FAST_PATHS, FastInferer
from bundle.networks.rfe_unet import RFE, RFEUNet, load_encoder_weights

__all__ = [
    "FAST_PATHS",
    "NETWORK_NAMES",
    "RFE",
    "SPPF",
    "Bottleneck",
    "C2f",
    "Conv",
    "FastInferer",
    "RFEUNet",
    "load_encoder_weights",
    "make_network",
]
