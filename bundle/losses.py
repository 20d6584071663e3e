"""Losses for lesion segmentation: the paper's Adapt Exp loss, its unweighted Exp baseline, Adapt Log (the same
per-image class weights on logarithmic terms, so confidently wrong pixels keep their gradient), and a factory.

The factory :func:`make_loss` also builds the MONAI losses of the paper's ablation (Tables 7-8): BCE, Dice and Focal,
and MONAI's Dice + cross-entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from bundle.config import look_up

__all__ = ["ExpLoss", "AdaptExpLoss", "AdaptLogLoss", "AdaptExpCELoss", "make_loss", "LOSS_NAMES"]


class ExpLoss(_Loss):
    """
    Probabilistic exponential loss for binary segmentation, the "EXP" baseline of
    Zarrin & Nikkhah, "A Novel Hybrid Deep Learning Model with Receptive Field-Enhanced Skip Connections and Adaptive
    Loss for Medical Image Segmentation" (Tables 8-9), from the authors' earlier ExpUNET:

    .. math::
        L = \\lambda_1 \\, y \\, e^{-p} + \\lambda_2 \\, (1 - y) \\, e^{-(1 - p)}, \\qquad \\lambda_1 = \\lambda_2 = 1

    per pixel, where :math:`y \\in \\{0, 1\\}` is the ground truth (1 = lesion) and :math:`p` the predicted lesion
    probability. A pixel costs :math:`e^{-1}` when predicted with certainty and correctly, and 1 when predicted with
    certainty and wrongly. :class:`AdaptExpLoss` replaces the constant weights with per-image ones.

    The loss is computed in at least float32 whatever the input's dtype (e.g. bfloat16 under ``torch.autocast``),
    so that it stays finite and precise under mixed precision.
    """

    def __init__(self, softmax: bool = True, sigmoid: bool = False, reduction: LossReduction | str = "mean") -> None:
        """
        Args:
            softmax: ``input`` holds 2-channel logits (background, lesion); :math:`p` is channel 1 of their softmax.
            sigmoid: ``input`` holds 1-channel lesion logits; :math:`p` is their sigmoid.
                Exactly one of ``softmax`` and ``sigmoid`` must be True.
            reduction: ``"mean"`` averages over all pixels of all images, ``"sum"`` sums them, ``"none"`` returns the
                per-pixel loss map of shape (B, 1, spatial...).

        Raises:
            ValueError: when both or neither of ``softmax`` and ``sigmoid`` are True, or ``reduction`` is unknown.
        """
        super().__init__(reduction=LossReduction(reduction).value)
        if softmax == sigmoid:
            raise ValueError(
                f"exactly one of softmax and sigmoid must be True, got softmax={softmax} and sigmoid={sigmoid}."
            )
        self.softmax = softmax
        self.sigmoid = sigmoid

    def class_weights(self, target: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """Return :math:`(\\lambda_1, \\lambda_2)`, the lesion and background weights, broadcastable to ``target``."""
        return 1.0, 1.0

    def lesion_probability(self, logits: torch.Tensor) -> torch.Tensor:
        """:math:`p`, shape (B, 1, spatial...): softmax channel 1, or the sigmoid of the single channel."""
        return torch.softmax(logits, dim=1)[:, 1:2] if self.softmax else torch.sigmoid(logits)

    def pixel_terms(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-pixel cost of a lesion pixel and of a background pixel: :math:`e^{-p}` and :math:`e^{-(1-p)}`."""
        p = self.lesion_probability(logits)
        return torch.exp(-p), torch.exp(p - 1.0)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: logits of shape (B, 2, spatial...) with ``softmax=True`` or (B, 1, spatial...) with ``sigmoid=True``;
                spatial is (H, W) for photographs, (H, W, D) for volumes.
            target: lesion mask of shape (B, 1, spatial...) or (B, spatial...) holding only 0 and 1, any dtype.

        Raises:
            ValueError: when ``input`` has the wrong number of channels, ``target``'s shape does not match it,
                or ``target`` holds values other than 0 and 1.
        """
        expected_channels = 2 if self.softmax else 1
        if input.ndim < 3 or input.shape[1] != expected_channels:
            activation = "softmax" if self.softmax else "sigmoid"
            raise ValueError(
                f"with {activation}=True, input must be logits of shape (B, {expected_channels}, spatial...), "
                f"got {tuple(input.shape)}."
            )
        if target.ndim == input.ndim - 1:
            target = target.unsqueeze(1)
        if target.shape != (input.shape[0], 1, *input.shape[2:]):
            raise ValueError(
                f"target must have shape (B, 1, spatial...) or (B, spatial...) matching input {tuple(input.shape)}, "
                f"got {tuple(target.shape)}."
            )
        if ((target != 0) & (target != 1)).any():
            raise ValueError("target must hold only 0 (background) and 1 (lesion); binarise the mask first.")

        compute_dtype = torch.promote_types(input.dtype, torch.float32)
        logits = input.to(compute_dtype)
        y = target.detach().to(compute_dtype)
        lesion_term, background_term = self.pixel_terms(logits)
        lambda_lesion, lambda_background = self.class_weights(y)
        loss = lambda_lesion * y * lesion_term + lambda_background * (1.0 - y) * background_term

        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss


class AdaptExpLoss(ExpLoss):
    """
    Adapt Exp loss of Zarrin & Nikkhah, "A Novel Hybrid Deep Learning Model with Receptive Field-Enhanced Skip
    Connections and Adaptive Loss for Medical Image Segmentation", section 3.3, eq. (1)-(3). For each image,

    .. math::
        k = \\frac{\\#\\,\\text{lesion pixels}}{\\#\\,\\text{pixels}}, \\qquad
        \\lambda_1 = \\frac{1}{k + \\epsilon}, \\qquad \\lambda_2 = \\frac{1}{1 - k + \\epsilon}

    and per pixel

    .. math::
        L = \\lambda_1 \\, y \\, e^{-p} + \\lambda_2 \\, (1 - y) \\, e^{-(1 - p)}

    where :math:`y \\in \\{0, 1\\}` is the ground truth (1 = lesion) and :math:`p` the predicted lesion probability.
    :math:`k` comes from the target and carries no gradient; over all spatial dimensions for volumes.

    Averaged over an image's pixels, the weights turn the loss into the sum of the per-class means of the exponential
    terms (up to :math:`\\epsilon`), so a small lesion counts as much as a large background. With ``"mean"`` reduction,
    an image holding both classes therefore scores :math:`2/e \\approx 0.736` when predicted perfectly and 2 when
    predicted completely wrongly; a single-class image (:math:`k = 0` or 1) scores between :math:`1/e` and 1.
    """

    def __init__(
        self,
        softmax: bool = True,
        sigmoid: bool = False,
        eps: float = 1e-6,
        reduction: LossReduction | str = "mean",
    ) -> None:
        """
        Args:
            softmax: ``input`` holds 2-channel logits (background, lesion); :math:`p` is channel 1 of their softmax.
            sigmoid: ``input`` holds 1-channel lesion logits; :math:`p` is their sigmoid.
                Exactly one of ``softmax`` and ``sigmoid`` must be True.
            eps: :math:`\\epsilon` of eq. (2); keeps the weights finite for an empty (:math:`k = 0`) or full
                (:math:`k = 1`) mask, where the weight it bounds multiplies no pixel.
            reduction: ``"mean"`` averages over all pixels of all images, ``"sum"`` sums them, ``"none"`` returns the
                per-pixel loss map of shape (B, 1, spatial...).

        Raises:
            ValueError: when both or neither of ``softmax`` and ``sigmoid`` are True, ``eps`` is not positive,
                or ``reduction`` is unknown.
        """
        super().__init__(softmax=softmax, sigmoid=sigmoid, reduction=reduction)
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}.")
        self.eps = eps

    def class_weights(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return :math:`(\\lambda_1, \\lambda_2)` of eq. (2), each of shape (B, 1, 1...), from ``target``'s ``k``."""
        with torch.no_grad():
            k = target.mean(dim=tuple(range(1, target.ndim)), keepdim=True)
            return 1.0 / (k + self.eps), 1.0 / (1.0 - k + self.eps)


class AdaptLogLoss(AdaptExpLoss):
    """
    Adapt Log: the Adapt Exp loss's per-image class weights (eq. 2) on logarithmic instead of exponential terms,

    .. math::
        L = \\lambda_1 \\, y \\, (-\\log p) + \\lambda_2 \\, (1 - y) \\, (-\\log (1 - p)),

    i.e. cross-entropy with each image's two classes weighted to count equally (averaged over an image's pixels it is
    the sum of the per-class mean cross-entropies). Not in the paper: it keeps Adapt Exp's per-image balance but not
    its weakness. Through the softmax, :math:`\\partial e^{-p} / \\partial z = -e^{-p} p (1 - p)` vanishes for a
    confidently wrong lesion pixel (:math:`p \\to 0`), whereas :math:`\\partial (-\\log p) / \\partial z = -(1 - p)`
    pushes hardest exactly there. The log terms are computed with ``log_softmax`` / ``logsigmoid``, so they stay
    finite for any logits. A perfect prediction scores 0.
    """

    def pixel_terms(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:math:`-\\log p` and :math:`-\\log(1 - p)` per pixel, from the logits."""
        if self.softmax:
            log_probabilities = torch.log_softmax(logits, dim=1)
            return -log_probabilities[:, 1:2], -log_probabilities[:, 0:1]
        return -torch.nn.functional.logsigmoid(logits), -torch.nn.functional.logsigmoid(-logits)


class AdaptExpCELoss(_Loss):
    """
    Adapt Exp plus cross-entropy: the paper's loss (:class:`AdaptExpLoss`, per-image class balance) with an unweighted
    2-class softmax cross-entropy term, per pixel

    .. math::
        L = L_{\\text{Adapt Exp}} + \\lambda_{CE} \\, L_{CE}, \\qquad L_{CE} = -\\log \\mathrm{softmax}(z)_y.

    Not in the paper. The cross-entropy's logit gradient :math:`p - y` does not vanish for confidently wrong pixels,
    where Adapt Exp's does (see :class:`AdaptLogLoss`), and being unweighted it pulls against Adapt Exp's tendency to
    call too many pixels lesion (equal class weights move the decision boundary towards the background).

    Args:
        lambda_ce: weight of the cross-entropy term.
        eps: :math:`\\epsilon` of Adapt Exp's eq. (2).
        reduction: as every MONAI loss: ``"mean"`` averages each term over all pixels of all images and adds them,
            ``"sum"`` sums them, ``"none"`` returns the per-pixel loss map of shape (B, 1, spatial...).

    Raises:
        ValueError: a negative ``lambda_ce``, or an unknown ``reduction``.
    """

    def __init__(self, lambda_ce: float = 1.0, eps: float = 1e-6, reduction: LossReduction | str = "mean") -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if not lambda_ce >= 0:
            raise ValueError(f"lambda_ce must be >= 0, got {lambda_ce}.")
        self.lambda_ce = lambda_ce
        self.adapt_exp = AdaptExpLoss(eps=eps, reduction=self.reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: (B, 2, spatial...) logits; ``target``: (B, 1, spatial...) or (B, spatial...) of 0/1."""
        loss = self.adapt_exp(input, target)  # also checks shapes and values
        labels = (target[:, 0] if target.ndim == input.ndim else target).long()
        cross_entropy = torch.nn.functional.cross_entropy(input.float(), labels, reduction=self.reduction)
        if self.reduction == LossReduction.NONE.value:
            cross_entropy = cross_entropy.unsqueeze(1)  # (B, spatial...) -> (B, 1, spatial...), as the other term
        return loss + self.lambda_ce * cross_entropy


_FACTORIES: dict[str, Callable[..., _Loss]] = {
    "adaptexp": AdaptExpLoss,
    "adaptlog": AdaptLogLoss,
    "adaptexpce": AdaptExpCELoss,
    "exp": ExpLoss,
    "bce": partial(DiceCELoss, to_onehot_y=True, softmax=True, lambda_dice=0.0),
    "dice": partial(DiceLoss, to_onehot_y=True, softmax=True),
    "dicece": partial(DiceCELoss, to_onehot_y=True, softmax=True),
    "focal": partial(FocalLoss, to_onehot_y=True, use_softmax=True),
}
LOSS_NAMES = tuple(_FACTORIES)


def make_loss(name: str, **kwargs: Any) -> _Loss:
    """
    Build the training loss named by ``configs/train.json``'s ``loss`` key. Every loss takes 2-channel logits
    (B, 2, H, W) and a 0/1 lesion mask (B, 1, H, W):

    - ``"adaptexp"``: :class:`AdaptExpLoss`, the paper's loss.
    - ``"adaptlog"``: :class:`AdaptLogLoss`, the same per-image weights on cross-entropy terms (not in the paper).
    - ``"adaptexpce"``: :class:`AdaptExpCELoss`, Adapt Exp plus unweighted cross-entropy (not in the paper).
    - ``"exp"``: :class:`ExpLoss`, the paper's unweighted "EXP" baseline.
    - ``"bce"``: 2-class softmax cross-entropy (MONAI ``DiceCELoss`` with ``lambda_dice=0``). This is exactly binary
      cross-entropy on the logit difference :math:`z_1 - z_0`, since
      :math:`\\mathrm{softmax}(z)_1 = \\sigma(z_1 - z_0)`.
    - ``"dice"``: MONAI ``DiceLoss(to_onehot_y=True, softmax=True)``.
    - ``"dicece"``: MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``: Dice + cross-entropy, weights 1 and 1.
    - ``"focal"``: MONAI ``FocalLoss(to_onehot_y=True, use_softmax=True)``.

    Args:
        name: one of :data:`LOSS_NAMES`.
        kwargs: passed to the loss's constructor; for the MONAI losses they override the defaults above.

    Raises:
        ConfigError: when ``name`` is not one of :data:`LOSS_NAMES` (one line naming them and the closest).
    """
    return look_up(name, _FACTORIES, "loss")(**kwargs)
