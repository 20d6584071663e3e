"""AdaptExpLoss and ExpLoss against an independent float64 NumPy implementation of the paper's eq. (1)-(3), and
AdaptLogLoss against an independent float64 implementation of its logarithmic form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bundle.errors import ConfigError
from bundle.losses import LOSS_NAMES, AdaptExpCELoss, AdaptExpLoss, AdaptLogLoss, ExpLoss, make_loss

EPS = 1e-6


def reference_loss(logits, target, adaptive: bool, softmax: bool, reduction: str):
    """Eq. (1)-(3) in float64: logits (B, C, spatial...), target (B, 1, spatial...) of 0/1."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    # softmax channel 1 of two logits is the sigmoid of their difference
    z = x[:, 1:2] - x[:, 0:1] if softmax else x
    p = 1.0 / (1.0 + np.exp(-z))
    if adaptive:
        k = y.reshape(len(y), -1).mean(axis=1).reshape((-1,) + (1,) * (y.ndim - 1))
        lambda1, lambda2 = 1.0 / (k + EPS), 1.0 / (1.0 - k + EPS)
    else:
        lambda1 = lambda2 = 1.0
    per_pixel = lambda1 * y * np.exp(-p) + lambda2 * (1.0 - y) * np.exp(-(1.0 - p))
    return {"mean": per_pixel.mean(), "sum": per_pixel.sum(), "none": per_pixel}[reduction]


def reference_log_loss(logits, target, softmax: bool, reduction: str):
    """Adapt Log in float64: eq. (2)'s per-image weights on -log p and -log(1 - p), with log p = -log(1 + e^-z)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    z = x[:, 1:2] - x[:, 0:1] if softmax else x
    minus_log_p, minus_log_not_p = np.logaddexp(0.0, -z), np.logaddexp(0.0, z)
    k = y.reshape(len(y), -1).mean(axis=1).reshape((-1,) + (1,) * (y.ndim - 1))
    lambda1, lambda2 = 1.0 / (k + EPS), 1.0 / (1.0 - k + EPS)
    per_pixel = lambda1 * y * minus_log_p + lambda2 * (1.0 - y) * minus_log_not_p
    return {"mean": per_pixel.mean(), "sum": per_pixel.sum(), "none": per_pixel}[reduction]


def mixed_batch(seed: int, spatial=(16, 20)):
    """B=3 targets: an empty image (k=0), a full one (k=1) and one with a random lesion fraction."""
    rng = np.random.default_rng(seed)
    target = np.zeros((3, 1, *spatial), dtype=np.float32)
    target[1] = 1.0
    target[2] = rng.random(spatial) < rng.uniform(0.05, 0.95)
    return rng, target


def make_logits(rng, channels: int, target):
    shape = (target.shape[0], channels, *target.shape[2:])
    return torch.from_numpy((3.0 * rng.standard_normal(shape)).astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "sigmoid"])
@pytest.mark.parametrize("loss_cls", [AdaptExpLoss, ExpLoss])
def test_loss_matches_numpy_reference(loss_cls, softmax, reduction, seed):
    rng, target = mixed_batch(seed)
    logits = make_logits(rng, 2 if softmax else 1, target)
    loss = loss_cls(softmax=softmax, sigmoid=not softmax, reduction=reduction)(logits, torch.from_numpy(target))
    expected = reference_loss(logits.numpy(), target, loss_cls is AdaptExpLoss, softmax, reduction)
    assert loss.dtype == torch.float32
    assert loss.shape == np.shape(expected)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "sigmoid"])
def test_adapt_log_matches_numpy_reference(softmax, reduction, seed):
    rng, target = mixed_batch(seed)
    logits = make_logits(rng, 2 if softmax else 1, target)
    loss = AdaptLogLoss(softmax=softmax, sigmoid=not softmax, reduction=reduction)(logits, torch.from_numpy(target))
    expected = reference_log_loss(logits.numpy(), target, softmax, reduction)
    assert loss.dtype == torch.float32
    assert loss.shape == np.shape(expected)
    # float32 log_softmax: per-pixel terms of confidently right pixels (~1e-4) agree to 1e-7 absolute
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_adapt_log_is_the_sum_of_per_class_mean_cross_entropies():
    rng, target = mixed_batch(11)
    logits = make_logits(rng, 2, target)[2:]  # the image holding both classes
    image_target = torch.from_numpy(target[2:])
    cross_entropy = F.cross_entropy(logits, image_target[:, 0].long(), reduction="none")
    lesion = image_target[:, 0].bool()
    expected = cross_entropy[lesion].mean() + cross_entropy[~lesion].mean()
    assert AdaptLogLoss()(logits, image_target).item() == pytest.approx(expected.item(), rel=1e-4)


def test_adapt_log_keeps_the_gradient_that_adapt_exp_loses_on_confident_mistakes():
    target = two_class_target()
    for loss_cls, pushes in ((AdaptExpLoss, False), (AdaptLogLoss, True)):
        logits = saturated_logits(target, correct=False).requires_grad_()
        loss_cls()(logits, target).backward()
        # through the softmax a confidently wrong pixel gets e^-20-sized gradients from the exp terms
        assert (logits.grad.abs().max().item() > 1e-4) is pushes


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("lambda_ce", [1.0, 0.25])
def test_adapt_exp_ce_matches_numpy_reference(lambda_ce, seed):
    rng, target = mixed_batch(seed)
    logits = make_logits(rng, 2, target)
    z = logits.numpy().astype(np.float64)
    y = target.astype(np.float64)[:, 0]
    log_p = z - np.logaddexp(z[:, 0], z[:, 1])[:, None]  # log-softmax in float64
    cross_entropy = -(y * log_p[:, 1] + (1 - y) * log_p[:, 0]).mean()
    expected = reference_loss(z, target, True, True, "mean") + lambda_ce * cross_entropy
    loss = AdaptExpCELoss(lambda_ce=lambda_ce)(logits, torch.from_numpy(target))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_adapt_exp_ce_reduction_matches_numpy_reference(reduction):
    """``reduction`` as in every MONAI loss: the per-pixel map (B, 1, H, W) of Adapt Exp + λ cross-entropy, its sum,
    its mean; against eq. (1)-(3) and the log-softmax in float64."""
    rng, target = mixed_batch(3)
    logits = make_logits(rng, 2, target)
    z = logits.numpy().astype(np.float64)
    log_p = z - np.logaddexp(z[:, 0], z[:, 1])[:, None]
    per_pixel_ce = -(target * log_p[:, 1:2] + (1 - target) * log_p[:, 0:1])  # (B, 1, H, W)
    per_pixel = reference_loss(z, target, True, True, "none") + 0.5 * per_pixel_ce
    expected = {"none": per_pixel, "sum": per_pixel.sum(), "mean": per_pixel.mean()}[reduction]
    loss = AdaptExpCELoss(lambda_ce=0.5, reduction=reduction)(logits, torch.from_numpy(target))
    assert loss.shape == np.shape(expected)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=2e-5)
    if reduction == "none":  # the map averages to the default reduction's value
        assert loss.mean().item() == pytest.approx(AdaptExpCELoss(lambda_ce=0.5)(logits, torch.from_numpy(target)))
    with pytest.raises(ValueError, match="median"):
        AdaptExpCELoss(reduction="median")


def test_adapt_exp_ce_keeps_a_gradient_on_confident_mistakes_and_checks_its_target():
    target = two_class_target()
    logits = saturated_logits(target, correct=False).requires_grad_()
    AdaptExpCELoss()(logits, target).backward()
    assert logits.grad.abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="only 0"):
        AdaptExpCELoss()(torch.zeros(1, 2, 4, 4), torch.full((1, 1, 4, 4), 255.0))
    with pytest.raises(ValueError, match="lambda_ce"):
        AdaptExpCELoss(lambda_ce=-1.0)


def test_adaptive_weights_differ_from_exp():
    rng, target = mixed_batch(3)
    logits = make_logits(rng, 2, target)
    adapt = AdaptExpLoss(reduction="none")(logits, torch.from_numpy(target))
    plain = ExpLoss(reduction="none")(logits, torch.from_numpy(target))
    # image 2 holds both classes, so both of its weights exceed 1
    assert torch.all(adapt[2] > plain[2])


def test_3d_volumes_use_k_over_all_spatial_dims():
    rng, target = mixed_batch(4, spatial=(6, 5, 4))
    logits = make_logits(rng, 2, target)
    loss = AdaptExpLoss(reduction="none")(logits, torch.from_numpy(target))
    np.testing.assert_allclose(loss.numpy(), reference_loss(logits.numpy(), target, True, True, "none"), rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float16, torch.float64])
def test_target_dtype_and_channel_free_shape(dtype):
    rng, target = mixed_batch(5)
    logits = make_logits(rng, 2, target)
    expected = reference_loss(logits.numpy(), target, True, True, "mean")
    as_dtype = torch.from_numpy(target).to(dtype)
    for shaped in (as_dtype, as_dtype[:, 0]):
        assert AdaptExpLoss()(logits, shaped).item() == pytest.approx(expected, rel=1e-6)


def saturated_logits(target: torch.Tensor, correct: bool) -> torch.Tensor:
    lesion = target[:, 0] if correct else 1.0 - target[:, 0]
    return torch.stack([20.0 * (1.0 - 2.0 * lesion), 20.0 * (2.0 * lesion - 1.0)], dim=1)


def two_class_target() -> torch.Tensor:
    target = torch.zeros(2, 1, 16, 16)
    target[0, :, 2:6, 3:9] = 1.0  # a small lesion, k = 24/256
    target[1, :, :12] = 1.0  # a large one, k = 0.75
    return target


def test_anchor_perfect_prediction_is_two_over_e():
    target = two_class_target()
    loss = AdaptExpLoss()(saturated_logits(target, correct=True), target)
    assert loss.item() == pytest.approx(2.0 / math.e, rel=1e-4)


def test_anchor_fully_wrong_prediction_is_two():
    target = two_class_target()
    loss = AdaptExpLoss()(saturated_logits(target, correct=False), target)
    assert loss.item() == pytest.approx(2.0, rel=1e-4)


@pytest.mark.parametrize("fill", [0.0, 1.0], ids=["k=0", "k=1"])
def test_single_class_image_scores_between_one_over_e_and_one(fill):
    target = torch.full((1, 1, 8, 8), fill)
    perfect = AdaptExpLoss()(saturated_logits(target, correct=True), target)
    wrong = AdaptExpLoss()(saturated_logits(target, correct=False), target)
    assert perfect.item() == pytest.approx(1.0 / math.e, rel=1e-4)
    assert wrong.item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "sigmoid"])
@pytest.mark.parametrize("loss_cls", [AdaptExpLoss, AdaptLogLoss, ExpLoss])
def test_gradients_finite_and_nonzero_for_empty_and_full_masks(loss_cls, softmax):
    rng, target = mixed_batch(6)
    logits = make_logits(rng, 2 if softmax else 1, target).requires_grad_()
    loss = loss_cls(softmax=softmax, sigmoid=not softmax)(logits, torch.from_numpy(target))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    for image in (0, 1):  # k = 0 and k = 1
        assert (logits.grad[image] != 0).all()


def test_bf16_autocast_computes_in_float32():
    rng, target = mixed_batch(7)
    features = torch.from_numpy(rng.standard_normal((3, 4, 16, 20)).astype(np.float32))
    conv = torch.nn.Conv2d(4, 2, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(features)
        loss = AdaptExpLoss()(logits, torch.from_numpy(target))
    assert logits.dtype == torch.bfloat16
    assert loss.dtype == torch.float32
    expected = reference_loss(logits.detach().float().numpy(), target, True, True, "mean")
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "sigmoid"])
def test_gradcheck_float64(softmax):
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 2 if softmax else 1, 3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.zeros(2, 1, 3, 4, dtype=torch.float64)
    target[0, 0, 1:, 2:] = 1.0
    target[1, 0, 0, 0] = 1.0
    loss = AdaptExpLoss(softmax=softmax, sigmoid=not softmax)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"softmax": True, "sigmoid": True}, "exactly one"),
        ({"softmax": False, "sigmoid": False}, "exactly one"),
        ({"reduction": "median"}, "median"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptExpLoss(**kwargs)


@pytest.mark.parametrize(
    "softmax, logits_shape, target_shape, match",
    [
        (True, (2, 1, 8, 8), (2, 1, 8, 8), r"softmax=True.*\(B, 2"),
        (False, (2, 2, 8, 8), (2, 1, 8, 8), r"sigmoid=True.*\(B, 1"),
        (True, (2, 2, 8, 8), (2, 1, 8, 9), r"\(2, 1, 8, 9\)"),
        (True, (2, 2, 8, 8), (1, 1, 8, 8), r"\(1, 1, 8, 8\)"),
        (True, (2, 2, 8, 8), (2, 2, 8, 8), r"\(2, 2, 8, 8\)"),
        (True, (2, 2), (2, 1), r"\(2, 2\)"),
    ],
)
def test_wrong_shapes_raise(softmax, logits_shape, target_shape, match):
    loss = AdaptExpLoss(softmax=softmax, sigmoid=not softmax)
    with pytest.raises(ValueError, match=match):
        loss(torch.zeros(logits_shape), torch.zeros(target_shape))


@pytest.mark.parametrize("bad_value", [0.5, 2.0, -1.0, 255.0])
def test_non_binary_target_raises(bad_value):
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 1] = bad_value
    with pytest.raises(ValueError, match="only 0"):
        AdaptExpLoss()(torch.zeros(1, 2, 4, 4), target)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_make_loss_forward_backward(name):
    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 2, 32, 32, generator=generator, requires_grad=True)
    target = (torch.rand(2, 1, 32, 32, generator=generator) < 0.3).float()
    loss = make_loss(name)(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_make_loss_refuses_an_unknown_name_in_one_line():
    with pytest.raises(ConfigError, match=r"^loss: 'adapt_exp' is not one of adaptexp, .*; did you mean adaptexp\?$"):
        make_loss("adapt_exp")


def test_make_loss_builds_the_named_classes_and_passes_kwargs():
    assert type(make_loss("adaptexp")) is AdaptExpLoss
    assert type(make_loss("exp")) is ExpLoss
    assert type(make_loss("adaptlog")) is AdaptLogLoss
    assert type(make_loss("adaptexpce")) is AdaptExpCELoss
    assert make_loss("adaptexp", eps=1e-3).eps == 1e-3
    sigmoid_exp = make_loss("exp", softmax=False, sigmoid=True)
    assert sigmoid_exp(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)).item() == pytest.approx(math.exp(-0.5))


def test_make_loss_bce_is_binary_cross_entropy_on_logit_difference():
    generator = torch.Generator().manual_seed(10)
    logits = torch.randn(2, 2, 16, 16, generator=generator)
    target = (torch.rand(2, 1, 16, 16, generator=generator) < 0.4).float()
    expected = F.binary_cross_entropy_with_logits(logits[:, 1:2] - logits[:, 0:1], target)
    assert make_loss("bce")(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_make_loss_dicece_is_dice_plus_cross_entropy():
    generator = torch.Generator().manual_seed(12)
    logits = torch.randn(2, 2, 16, 16, generator=generator)
    target = (torch.rand(2, 1, 16, 16, generator=generator) < 0.4).float()
    expected = make_loss("dice")(logits, target) + make_loss("bce")(logits, target)
    assert make_loss("dicece")(logits, target).item() == pytest.approx(expected.item(), rel=1e-5)


def test_make_loss_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="adaptexp, adaptlog, adaptexpce, exp, bce, dice, dicece, focal"):
        make_loss("tversky")
