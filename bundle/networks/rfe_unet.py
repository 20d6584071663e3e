"""RFE U-Net: a ResNet U-Net whose skip connections are Receptive Field Enhancement modules.

Zarrin & Nikkhah, "A Novel Hybrid Deep Learning Model with Receptive Field-Enhanced Skip Connections and
Adaptive Loss for Medical Image Segmentation", JADM 2025, §3.1-3.2. Choices the paper leaves open are
recorded, with the measurements behind them, in docs/design.md ("Network").
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from monai.networks.nets import ResNet
from torch import nn

from bundle.checkpoint import read_checkpoint, unwrap_state_dict
from bundle.config import look_up
from bundle.errors import CheckpointError
from bundle.networks.blocks import SPPF, C2f, Conv, MaxPool2d
from bundle.networks.registry import BACKBONES, BATCHNORMS, NETWORK_DEFAULTS

__all__ = ["BACKBONES", "RFE", "DecoderStage", "RFEUNet", "adapt_stem_weight", "load_encoder_weights"]

logger = logging.getLogger(__name__)

STEM_CHANNELS = 64
STAGE_PLANES = [64, 128, 256, 512]
# the encoder halves the resolution five times: stem conv, max-pool, layer2, layer3, layer4
DOWNSAMPLING = 32


class RFE(nn.Module):
    """Receptive Field Enhancement skip connection (Zarrin & Nikkhah 2025, §3.2, Fig. 2).

    .. math::
        \\mathrm{RFE}_i(e_i, e_{i+1}) = \\mathrm{C2f}\\big([\\,\\mathrm{SPPF}(e_i),\\;
        \\mathrm{up}_{\\times 2}(\\mathrm{SPPF}(e_{i+1}))\\,]\\big)

    Both encoder features pass through their own SPPF, which maps them to ``out_channels``; the deeper one,
    half the resolution of ``e_i``, is brought to ``e_i``'s size by nearest-neighbour upsampling (as in the
    YOLOv8 neck) and the two are merged by a C2f. The result has ``e_i``'s resolution, the size of decoder
    stage ``i``.

    Args:
        skip_channels: channels of ``e_i``, the encoder feature at this decoder stage's resolution.
        deep_channels: channels of ``e_{i+1}``, the next (half-resolution) encoder feature.
        out_channels: channels of each SPPF output and of the module's output.
        n: number of Bottlenecks in the C2f.
        shortcut: residual connections inside the C2f's Bottlenecks.
        pool_kernel: max-pool kernel of both SPPFs.

    Raises:
        ValueError: (in ``forward``) when ``deep`` is not exactly half the height and width of ``skip``.
    """

    def __init__(
        self,
        skip_channels: int,
        deep_channels: int,
        out_channels: int,
        n: int = 1,
        shortcut: bool = False,
        pool_kernel: int = 5,
    ) -> None:
        super().__init__()
        self.sppf_skip = SPPF(skip_channels, out_channels, pool_kernel)
        self.sppf_deep = SPPF(deep_channels, out_channels, pool_kernel)
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.c2f = C2f(2 * out_channels, out_channels, n, shortcut)

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        if skip.shape[-2] != 2 * deep.shape[-2] or skip.shape[-1] != 2 * deep.shape[-1]:
            raise ValueError(
                f"RFE needs the deeper feature at half the skip's resolution, got skip {skip.shape[-2]}x"
                f"{skip.shape[-1]} and deep {deep.shape[-2]}x{deep.shape[-1]}."
            )
        return self.c2f(torch.cat((self.sppf_skip(skip), self.up(self.sppf_deep(deep))), 1))


class DecoderStage(nn.Module):
    """U-Net decoder stage (§3.1): 2x2 stride-2 transposed conv, concat with the skip, Conv-BN-SiLU 3x3."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = Conv(out_channels + skip_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((self.up(x), skip), 1))


class RFEUNet(nn.Module):
    """RFE U-Net (Zarrin & Nikkhah 2025, §3.1-3.2, Fig. 1): ResNet encoder, RFE skips, transposed-conv decoder.

    With encoder features :math:`e_0` (stem, H/2, 64 channels) and :math:`e_1..e_4` (ResNet layer1..layer4,
    H/4..H/32, widths :math:`c_i`), the decoder computes

    .. math::
        d_4 = e_4, \\quad
        d_i = \\mathrm{SiLU}(\\mathrm{BN}(\\mathrm{conv}_{3\\times3}
              [\\,\\mathrm{convT}_{2\\times2}(d_{i+1}),\\; \\mathrm{RFE}_i(e_i, e_{i+1})\\,])),
              \\quad i = 3, 2, 1, 0,

    where every :math:`d_i` has :math:`c_i` channels, and a last stage of the same form without a skip
    (``head_channels`` wide) brings :math:`d_0` to full resolution, followed by a 1x1 conv to ``out_channels``
    logits. The network returns logits; the paper's softmax belongs to the loss / post-processing.
    At 1x3x256x256, thop counts 9.40 / 39.75 / 44.63 GMACs for ResNet-34 / 50 / 101 against the paper's
    9.046 / 39.701 / 44.576 GFLOPs (Table 7); docs/design.md has the measurement and the choices behind it.

    The encoder is MONAI's ``ResNet`` in torchvision's layout, so torchvision's ImageNet state_dict loads into
    ``self.encoder`` unchanged (``pretrained_weights``; never downloaded). With ``in_channels != 3`` the
    pretrained RGB stem is averaged over its colour axis and repeated, scaled by ``3 / in_channels``, so an
    image with the same value in every channel gives the stem response of the same grey RGB image.

    Args:
        backbone: ``"resnet34"``, ``"resnet50"`` or ``"resnet101"`` (the paper's main model; see
            ``bundle.networks.registry``).
        in_channels: channels of the input image.
        out_channels: channels of the output logits (2 for lesion vs. background with a softmax).
        pretrained_weights: optional path (``""`` or None: none) to a local ``.pth`` holding a torchvision ResNet
            state_dict of the chosen depth (plain, or wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``;
            ``fc.*`` is ignored).
        head_channels: width of the last, full-resolution decoder stage.
        c2f_n: Bottlenecks in each RFE's C2f.
        c2f_shortcut: residual connections in those Bottlenecks (off, as in YOLOv8's neck).
        pool_kernel: max-pool kernel of the RFEs' SPPFs (5, as in YOLOv8).
        rfe: with False the skips are the plain encoder features :math:`e_i` (a ResNet U-Net): the paper's
            "Base Line" of Table 9, for the ablation. The decoder is unchanged.
        batchnorm: eps and momentum of the BatchNorms in the YOLOv8-style Conv blocks (RFE modules, decoder, head):
            ``"yolov8"`` (1e-3, 0.03; the default) or ``"pytorch"`` (1e-5, 0.1); see
            ``bundle.networks.registry.BATCHNORMS``. The ResNet encoder keeps PyTorch's.

    Input: ``(B, in_channels, H, W)`` with H and W multiples of 32 (the encoder halves the resolution five
    times and the decoder doubles it back); output: ``(B, out_channels, H, W)`` logits.

    Raises:
        ConfigError: an unknown ``backbone`` (one line naming the options).
        ValueError: ``pretrained_weights`` that cannot be read or do not fit the
            encoder; (in ``forward``) an input that is not 4-D or whose H or W is not a multiple of 32.
    """

    def __init__(
        self,
        backbone: str = NETWORK_DEFAULTS["backbone"],
        in_channels: int = 3,
        out_channels: int = 2,
        pretrained_weights: str | Path | None = None,
        head_channels: int = 16,
        c2f_n: int = 1,
        c2f_shortcut: bool = False,
        pool_kernel: int = 5,
        rfe: bool = True,
        batchnorm: str = NETWORK_DEFAULTS["batchnorm"],
    ) -> None:
        super().__init__()
        block, layers = look_up(backbone, BACKBONES, "backbone")
        bn_eps, bn_momentum = look_up(batchnorm, BATCHNORMS, "batchnorm")
        self.size_divisor = DOWNSAMPLING
        self.encoder = ResNet(
            block,
            layers,
            STAGE_PLANES,
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            bias_downsample=False,
            feed_forward=False,
        )
        # same pooling, computed faster (no parameters, so the state_dict is unchanged)
        self.encoder.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        expansion = 4 if block == "bottleneck" else 1
        widths = [STEM_CHANNELS] + [planes * expansion for planes in STAGE_PLANES]
        self.use_rfe = bool(rfe)
        self.rfe = nn.ModuleList(
            RFE(widths[i], widths[i + 1], widths[i], c2f_n, c2f_shortcut, pool_kernel) for i in range(4 if rfe else 0)
        )
        # deepest stage first: decoder[j] produces d_{3-j}
        self.decoder = nn.ModuleList(DecoderStage(widths[i + 1], widths[i], widths[i]) for i in (3, 2, 1, 0))
        self.head = nn.Sequential(
            nn.ConvTranspose2d(widths[0], head_channels, kernel_size=2, stride=2),
            Conv(head_channels, head_channels, 3),
            nn.Conv2d(head_channels, out_channels, kernel_size=1),
        )
        for module in self.modules():
            if isinstance(module, Conv):
                module.bn.eps, module.bn.momentum = bn_eps, bn_momentum
        if pretrained_weights:
            load_encoder_weights(self.encoder, pretrained_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"RFEUNet expects a (B, C, H, W) tensor, got {x.dim()} dimensions.")
        height, width = x.shape[-2], x.shape[-1]
        if height % self.size_divisor != 0 or width % self.size_divisor != 0:
            raise ValueError(
                f"RFEUNet needs H and W to be multiples of {self.size_divisor}, got H={height}, W={width}."
            )
        encoder = self.encoder
        e0 = encoder.act(encoder.bn1(encoder.conv1(x)))
        features = [e0]
        features.append(encoder.layer1(encoder.maxpool(e0)))
        features.append(encoder.layer2(features[-1]))
        features.append(encoder.layer3(features[-1]))
        features.append(encoder.layer4(features[-1]))
        skips: list[torch.Tensor] = features[:4]
        if self.use_rfe:
            skips = []
            for i, rfe in enumerate(self.rfe):
                skips.append(rfe(features[i], features[i + 1]))
        y = features[-1]
        for j, stage in enumerate(self.decoder):
            y = stage(y, skips[3 - j])
        return self.head(y)


def adapt_stem_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB stem kernel (out, 3, k, k) -> (out, in_channels, k, k): colour mean, repeated, times 3 / in_channels."""
    return weight.mean(1, keepdim=True).repeat(1, in_channels, 1, 1) * (3.0 / in_channels)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a torchvision-layout ResNet state_dict from the local file ``path`` into ``encoder``.

    Reads with ``bundle.checkpoint.read_checkpoint`` (``weights_only=True``) and unwraps with
    ``bundle.checkpoint.unwrap_state_dict`` (``{"state_dict": ...}`` / ``{"model": ...}``);
    drops the classifier (``fc.*``); adapts an RGB ``conv1.weight`` to the encoder's input channels (see
    :func:`adapt_stem_weight`). Encoder tensors the file lacks and file tensors the encoder lacks are logged.

    Raises:
        ValueError: naming ``path``, when it does not exist, cannot be read, holds no state_dict, has a tensor
            whose shape differs from the encoder's, or shares no tensor name with the encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Pretrained weights file {path} does not exist.")
    try:
        state = unwrap_state_dict(read_checkpoint(path))
    except CheckpointError as error:
        raise ValueError(f"Pretrained weights file {path} could not be read by torch.load: {error.reason}") from None
    if state is None:
        raise ValueError(f"Pretrained weights file {path} does not hold a state_dict (names mapped to tensors).")

    own = encoder.state_dict()
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    stem = state.get("conv1.weight")
    in_channels = own["conv1.weight"].shape[1]
    if stem is not None and stem.dim() == 4 and stem.shape[1] == 3 and in_channels != 3:
        logger.info("Adapting the RGB conv1 of %s to %d input channels (colour mean, repeated).", path, in_channels)
        state["conv1.weight"] = adapt_stem_weight(stem, in_channels)

    matched = {key: value for key, value in state.items() if key in own}
    mismatched = [
        f"{key} {tuple(value.shape)} (encoder {tuple(own[key].shape)})"
        for key, value in matched.items()
        if value.shape != own[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"Pretrained weights file {path} does not fit the encoder: {len(mismatched)} tensors have other shapes, "
            f"e.g. {'; '.join(mismatched[:3])}. Is it a torchvision ResNet of the same depth?"
        )
    if not matched:
        raise ValueError(
            f"Pretrained weights file {path} shares no tensor name with the encoder (torchvision ResNet names such "
            f"as 'conv1.weight', 'layer1.0.bn1.weight'); its first names are {sorted(state)[:3]}."
        )
    unexpected = sorted(set(state) - set(own))
    # checkpoints saved before BatchNorm counted its batches lack num_batches_tracked; that loses nothing
    missing = sorted(key for key in set(own) - set(state) if not key.endswith("num_batches_tracked"))
    if unexpected:
        logger.warning("Ignoring %d tensors of %s the encoder lacks: %s", len(unexpected), path, unexpected)
    if missing:
        logger.warning("%s lacks %d encoder tensors, left as initialised: %s", path, len(missing), missing)
    encoder.load_state_dict(matched, strict=False)
    logger.info("Loaded %d encoder tensors from %s.", len(matched), path)
