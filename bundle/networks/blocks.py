"""YOLOv8's building blocks (Jocher et al., Ultralytics YOLOv8, 2023) used by the RFE module.

Constructor arguments and submodule names follow the YOLOv8-era ``ultralytics.nn.modules`` so that a
state_dict of those blocks loads here with ``strict=True`` and gives the same outputs
(checked against a fixture made with the real package: ``tests/fixtures/make_yolov8_reference.py``).
Everything is TorchScript-able (no generators, no class-level modules).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["SPPF", "Bottleneck", "C2f", "Conv", "MaxPool2d", "autopad"]

# ultralytics' initialize_weights() sets these on every BatchNorm2d of a YOLOv8 model.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k: int | tuple[int, ...], p: int | tuple[int, ...] | None = None, d: int = 1) -> int | list[int]:
    """Padding that keeps the spatial size of a stride-1 convolution with kernel ``k`` and dilation ``d``."""
    if p is not None:
        return p
    if isinstance(k, int):
        return (d * (k - 1) + 1) // 2
    return [(d * (x - 1) + 1) // 2 for x in k]


def _sliding_max(x: torch.Tensor, dim: int, k: int, s: int, p: int) -> torch.Tensor:
    """Max over windows of ``k`` along ``dim`` (padding ``p`` of -inf, stride ``s``), by doubling window widths."""
    if p > 0:
        shape = list(x.shape)
        shape[dim] = p
        border = torch.full(shape, float("-inf"), dtype=x.dtype, device=x.device)
        x = torch.cat((border, x, border), dim)
    length = x.shape[dim]
    width = 1
    while 2 * width <= k:  # x[i] = max over x_orig[i : i + width]
        x = torch.maximum(x.narrow(dim, 0, length - width), x.narrow(dim, width, length - width))
        length -= width
        width *= 2
    if width < k:
        x = torch.maximum(x.narrow(dim, 0, length - (k - width)), x.narrow(dim, k - width, length - (k - width)))
        length -= k - width
    return x.unfold(dim, 1, s).squeeze(-1) if s > 1 else x


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with the same output, computed as running maxima of shifted views (separable, doubling).

    PyTorch's CPU max-pool for (N, C, H, W) tensors visits the k x k window of every output element with scalar
    code and records indices; a 5x5 stride-1 pool of a 32x128x128 feature took 37 ms on one core where these
    six element-wise maxima take 2 ms (docs/performance.md). The result is exactly the same, since a max does
    not depend on the order of comparisons. For inputs that are not floating point, for dilation, ceil mode or
    non-square windows, in ONNX export, and whenever the input requires a gradient (training), the stock operator
    runs: backpropagating through the six maxima cost 3.6-4x the stock pool's forward and backward (measured with
    8x{32,64,128}x{32,64}^2 inputs on one core), and the stock kernel keeps training exactly as before. Indices are
    not offered.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.return_indices:
            raise ValueError("MaxPool2d here returns no indices; use torch.nn.MaxPool2d for return_indices=True.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        if not torch.jit.is_scripting():
            if torch.onnx.is_in_onnx_export():  # ONNX has its own MaxPool operator
                return self._stock(x)
        if (
            isinstance(k, int)
            and isinstance(s, int)
            and isinstance(p, int)
            and isinstance(d, int)
            and d == 1
            and 2 * p <= k
            and not self.ceil_mode
            and x.is_floating_point()
            and x.dim() == 4
            and not x.requires_grad
        ):
            return _sliding_max(_sliding_max(x, 3, k, s, p), 2, k, s, p)
        return self._stock(x)

    def _stock(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU, with "same" padding by default."""

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int | tuple[int, int] = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = act if isinstance(act, nn.Module) else (nn.SiLU() if act else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass once :meth:`fuse` has folded the BatchNorm into the convolution."""
        return self.act(self.conv(x))

    def fuse(self) -> Conv:
        """Fold the BatchNorm (eval mode: its running statistics) into the convolution and run without it.

        The convolution's weight is scaled by :math:`\\gamma / \\sqrt{\\sigma^2 + \\epsilon}` and it gains the bias
        :math:`\\beta - \\gamma \\mu / \\sqrt{\\sigma^2 + \\epsilon}`, which saves one pass over the feature map. For
        inference only: the block no longer trains its BatchNorm.
        """
        self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
        del self.bn
        self.forward = self.forward_fuse
        return self


class Bottleneck(nn.Module):
    """Two Convs (c1 -> int(c2*e) -> c2) with a residual add when ``shortcut`` and c1 == c2."""

    def __init__(
        self,
        c1: int,
        c2: int,
        shortcut: bool = True,
        g: int = 1,
        k: tuple[int | tuple[int, int], int | tuple[int, int]] = (3, 3),
        e: float = 0.5,
    ) -> None:
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, k[0], 1)
        self.cv2 = Conv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block with 2 convs: 1x1 Conv to 2c, split, n Bottlenecks chained on one half, concat all, 1x1 Conv."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=(3, 3), e=1.0) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial Pyramid Pooling - Fast: 1x1 Conv to c1//2, one k x k max-pool chained 3 times, concat, 1x1 Conv."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.cv1(x)
        y1 = self.m(y0)
        y2 = self.m(y1)
        return self.cv2(torch.cat((y0, y1, y2, self.m(y2)), 1))
