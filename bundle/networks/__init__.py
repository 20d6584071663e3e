"""Networks: YOLOv8 blocks and the RFE U-Net."""

from bundle.networks.blocks import SPPF, Bottleneck, C2f, Conv
from bundle.networks.rfe_unet import RFE, RFEUNet, load_encoder_weights

__all__ = ["RFE", "SPPF", "Bottleneck", "C2f", "Conv", "RFEUNet", "load_encoder_weights"]
