"""Click guidance, the simulated user, test-time flips and the lesion clean-up, each against what it must do."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.errors import ConfigError
from bundle.interactive import (
    AddGuidanced,
    ClicksFromPointsd,
    ClickSimulation,
    click_disks,
    clicks_to_reach,
    guidance_names,
    interactive_summary,
    iou,
    next_click,
    working_clicks,
)
from bundle.networks.tta import FlipTTA
from bundle.transforms import LesionCleanup

ALL = ["positive_clicks", "negative_clicks", "previous_mask"]


def test_guidance_names_are_checked_and_put_in_channel_order():
    assert guidance_names("previous_mask, positive_clicks") == ["positive_clicks", "previous_mask"]
    assert guidance_names([]) == [] == guidance_names("")
    with pytest.raises(ConfigError, match="not one of"):
        guidance_names(["clicks"])
    with pytest.raises(ConfigError, match="twice"):
        guidance_names(["previous_mask", "previous_mask"])


def test_click_disks_mark_pixels_within_the_radius():
    disks = click_disks([(5, 7)], (20, 30), radius=2)
    assert disks.shape == (20, 30)
    assert disks[5, 7] == 1 and disks[7, 7] == 1 and disks[5, 9] == 1
    assert disks[8, 7] == 0 and disks[7, 9] == 0
    assert int(disks.sum()) == 13  # the lattice points of a radius-2 disk


def test_clicks_map_from_photo_pixels_to_working_pixels_and_off_photo_ones_are_dropped():
    mapped = working_clicks([[0, 0], [999, 499], [1000, 10]], photo_size=(1000, 500), working_size=(100, 100))
    assert mapped[0] == pytest.approx((-0.45, -0.4))
    assert mapped[1] == pytest.approx((99.45, 99.4))
    assert len(mapped) == 2


def _photo(width: int = 64, height: int = 32) -> MetaTensor:
    return MetaTensor(torch.zeros(3, 16, 16), meta={"spatial_shape": np.asarray((width, height))})


def test_add_guidance_appends_click_disks_and_the_previous_mask_at_the_working_size():
    previous = np.zeros((64, 32), np.float32)
    previous[:32] = 1  # the left half of the photo, (W, H) order
    data = {"image": _photo(), "clicks": {"positive": [[8, 8]], "negative": [[56, 24]]}, "previous": previous}
    out = AddGuidanced(guidance=ALL, click_radius=1)(data)["image"]
    assert out.shape == (6, 16, 16)
    assert out[3, 2, 4] == 1 and out[3].sum() == 4  # (8, 8) of 64x32 -> (1.625, 3.75): 4 pixels within 1
    assert out[4, 13, 12] == 1 and out[3, 13, 12] == 0
    assert torch.equal(out[5, :8], torch.ones(8, 16)) and out[5, 8:].sum() == 0
    assert isinstance(out, MetaTensor) and tuple(out.meta["spatial_shape"]) == (64, 32)


def test_add_guidance_without_clicks_gives_zero_channels_and_an_automatic_network_nothing():
    out = AddGuidanced(guidance=ALL)({"image": _photo()})["image"]
    assert out.shape == (6, 16, 16) and out[3:].sum() == 0
    plain = {"image": _photo()}
    assert AddGuidanced(guidance=[])(plain) is plain


def test_clicks_from_points_reads_deepedit_and_deepgrow_requests():
    deepedit = ClicksFromPointsd()({"lesion": [[3, 4, 0]], "background": [[1, 2, 0], [5, 6, 0]], "label": "lesion"})
    assert deepedit["clicks"] == {"positive": [[3.0, 4.0]], "negative": [[1.0, 2.0], [5.0, 6.0]]}
    deepgrow = ClicksFromPointsd()({"foreground": [[7, 8]], "background": []})
    assert deepgrow["clicks"] == {"positive": [[7.0, 8.0]], "negative": []}
    assert "clicks" not in ClicksFromPointsd()({"image": "x.jpg", "lesion": []})


def test_next_click_is_positive_in_the_deepest_missed_region():
    truth = np.zeros((40, 40), bool)
    truth[5:25, 5:25] = True
    pred = truth.copy()
    pred[5:25, 15:25] = False  # a missed 20x10 band
    pred[30:33, 30:33] = True  # a small false region
    x, y, positive = next_click(pred, truth)
    assert positive and truth[x, y] and not pred[x, y]
    assert 9 <= x <= 20 and 19 <= y <= 20  # the band's middle, away from its borders


def test_next_click_is_negative_on_a_larger_false_region_and_none_when_nothing_is_wrong():
    truth = np.zeros((40, 40), bool)
    truth[5:10, 5:10] = True
    pred = truth.copy()
    pred[20:35, 20:35] = True
    x, y, positive = next_click(pred, truth)
    assert not positive and pred[x, y] and not truth[x, y] and (x, y) == (27, 27)
    assert next_click(truth, truth) is None


def test_next_click_with_spread_stays_inside_the_region():
    truth = np.zeros((50, 50), bool)
    truth[10:40, 10:40] = True
    rng = np.random.RandomState(0)
    for _ in range(20):
        x, y, positive = next_click(np.zeros_like(truth), truth, rng, spread=0.5)
        assert positive and 15 <= x < 35 and 15 <= y < 35


def test_noc_counts_clicks_to_reach_and_failures():
    assert clicks_to_reach([0.7, 0.86, 0.91], 0.85, 20) == 1
    assert clicks_to_reach([0.95], 0.9, 20) == 0
    assert clicks_to_reach([0.5, 0.6], 0.9, 20) == 20
    summary = interactive_summary({"a": [0.7, 0.86, 0.91], "b": [0.5, 0.6]}, max_clicks=20, after=(0, 1, 3))
    assert summary["NoC@85"] == pytest.approx((1 + 20) / 2)
    assert summary["NoC@90"] == pytest.approx((2 + 20) / 2)
    assert summary["failures@90"] == 1
    assert summary["mIoU@3"] == pytest.approx((0.91 + 0.6) / 2)  # ended sequences keep their last IoU
    assert iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


class _Threshold(torch.nn.Module):
    """Calls a pixel lesion where the first colour channel is positive, plus wherever a positive click is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = (x[:, 0:1] > 0).float() + x[:, 3:4] - x[:, 4:5]
        return torch.cat((torch.zeros_like(lesion), lesion - 0.5), 1)


def test_click_simulation_clicks_where_the_network_is_wrong():
    image = torch.zeros(4, 6, 32, 32)
    image[:, 0, 4:12, 4:12] = 1  # the network sees this square
    label = torch.zeros(4, 1, 32, 32)
    label[:, 0, 4:12, 4:12] = 1
    label[:, 0, 18:28, 18:28] = 1  # and misses this one
    simulation = ClickSimulation(ALL, click_radius=2, automatic_share=0.0, initial_click_share=0.0, max_rounds=3)
    simulation.R = np.random.RandomState(3)
    guidance = simulation.simulate(_Threshold(), image, label, "cpu")
    assert guidance.shape == (4, 3, 32, 32)
    clicked = guidance[:, 0].flatten(1).sum(1) > 0
    assert clicked.any()
    near_lesion = torch.nn.functional.max_pool2d(label, 5, stride=1, padding=2)  # within the click radius
    for i in np.flatnonzero(clicked.numpy()):
        assert (guidance[i, 0] * (1 - near_lesion[i, 0])).sum() == 0  # positive clicks only on the lesion
        assert guidance[i, 2, 18:28, 18:28].sum() > 0  # the previous mask shows the corrected lesion
    assert guidance[:, 1].sum() == 0  # nothing to remove


def test_click_simulation_with_only_automatic_samples_gives_zero_guidance():
    image, label = torch.zeros(3, 6, 16, 16), torch.ones(3, 1, 16, 16)
    guidance = ClickSimulation(ALL, automatic_share=1.0).simulate(_Threshold(), image, label, "cpu")
    assert guidance.sum() == 0


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_flip_tta_averages_the_flipped_predictions_flipped_back():
    torch.manual_seed(0)
    network, x = _Linear().eval(), torch.randn(2, 3, 8, 8)

    def plain(inputs, net):
        return net(inputs)

    with torch.no_grad():
        expected = (
            network(x) + network(x.flip(2)).flip(2) + network(x.flip(3)).flip(3) + network(x.flip((2, 3))).flip((2, 3))
        ) / 4
        assert torch.allclose(FlipTTA(plain, "flips")(x, network), expected, atol=1e-6)
        assert torch.equal(FlipTTA(plain, "none")(x, network), network(x))
    with pytest.raises(ConfigError, match="tta"):
        FlipTTA(plain, "rotations")


def _probabilities(lesion: np.ndarray) -> torch.Tensor:
    p = torch.from_numpy(lesion.astype(np.float32))
    return torch.stack((1 - p, p))


def test_cleanup_keeps_the_largest_region_fills_holes_and_keeps_clicked_regions():
    lesion = np.zeros((20, 20), np.float32)
    lesion[2:10, 2:10] = 0.9
    lesion[5, 5] = 0.1  # a hole
    lesion[15:17, 15:17] = 0.8  # a second, small region
    cleaned = LesionCleanup()(_probabilities(lesion))[1] > 0.5
    assert cleaned[5, 5] and not cleaned[15, 15] and int(cleaned.sum()) == 64
    clicked = LesionCleanup()(_probabilities(lesion), positive_clicks=[(15.2, 16)])[1] > 0.5
    assert clicked[15, 15] and int(clicked.sum()) == 68
    untouched = _probabilities(lesion)
    assert torch.equal(LesionCleanup(largest=False, fill_holes=False)(untouched), untouched)
