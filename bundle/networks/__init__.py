"""Networks: YOLOv8 blocks, the RFE U-Net, and the factory that also builds the stock MONAI peers."""

from bundle.networks.blocks import SPPF, Bottleneck, C2f, Conv
from bundle.networks.factory import NETWORK_NAMES, make_network
from bundle.networks.rfe_unet import RFE, RFEUNet, load_encoder_weights

__all__ = [
    "NETWORK_NAMES",
    "RFE",
    "SPPF",
    "Bottleneck",
    "C2f",
    "Conv",
    "RFEUNet",
    "load_encoder_weights",
    "make_network",
]
