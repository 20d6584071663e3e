"""YOLOv8 blocks against the real ultralytics blocks (fixture: tests/fixtures/make_yolov8_reference.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bundle.networks.blocks import SPPF, Bottleneck, C2f, Conv, MaxPool2d, autopad

REFERENCE = torch.load(Path(__file__).parent / "fixtures" / "yolov8_blocks_reference.pt", weights_only=True)
BLOCKS = {"Conv": Conv, "Bottleneck": Bottleneck, "C2f": C2f, "SPPF": SPPF}
CASES = {case["name"]: case for case in REFERENCE["cases"]}


def test_reference_covers_every_block():
    assert REFERENCE["ultralytics_version"].startswith("8.")
    assert {case["block"] for case in CASES.values()} == set(BLOCKS)
    c2f_variants = {(c["kwargs"]["n"], c["kwargs"]["shortcut"]) for c in CASES.values() if c["block"] == "C2f"}
    assert {(1, False), (2, True), (2, False)} <= c2f_variants


@pytest.fixture(params=sorted(CASES), ids=str)
def case(request):
    reference = CASES[request.param]
    block = BLOCKS[reference["block"]](**reference["kwargs"])
    block.load_state_dict(reference["state_dict"], strict=True)
    return reference, block


def test_eval_output_matches_ultralytics(case):
    reference, block = case
    with torch.no_grad():
        output = block.eval()(reference["input"])
    torch.testing.assert_close(output, reference["output_eval"], rtol=0, atol=1e-5)


def test_train_output_and_running_stats_match_ultralytics(case):
    reference, block = case
    with torch.no_grad():
        output = block.train()(reference["input"])
    torch.testing.assert_close(output, reference["output_train"], rtol=0, atol=1e-5)
    # running statistics after one step depend on BatchNorm's momentum (0.03, as ultralytics sets it)
    for key, expected in reference["state_dict_after_train"].items():
        torch.testing.assert_close(block.state_dict()[key], expected, rtol=0, atol=1e-5, msg=key)


def test_blocks_script_and_match_eager(case):
    reference, block = case
    block.eval()
    scripted = torch.jit.script(copy.deepcopy(block))
    with torch.no_grad():
        torch.testing.assert_close(scripted(reference["input"]), block(reference["input"]))


def test_autopad_keeps_size():
    assert autopad(3) == 1 and autopad(5) == 2 and autopad((3, 5)) == [1, 2]
    assert autopad(3, d=2) == 2 and autopad(3, p=0) == 0
    x = torch.randn(1, 2, 11, 8)
    assert Conv(2, 3, k=(3, 5), d=2)(x).shape == (1, 3, 11, 8)


def test_c2f_concatenates_every_bottleneck_output():
    block = C2f(8, 6, n=3, e=0.5)
    assert block.cv1.conv.out_channels == 2 * 3
    assert block.cv2.conv.in_channels == (2 + 3) * 3
    assert len(block.m) == 3


def test_sppf_chains_one_pool():
    block = SPPF(16, 4, k=7)
    assert block.cv1.conv.out_channels == 8 and block.cv2.conv.in_channels == 32
    assert block.m.kernel_size == 7 and block.m.stride == 1 and block.m.padding == 3


@pytest.mark.parametrize(
    "k, s, p", [(5, 1, 2), (3, 2, 1), (3, 1, 1), (7, 1, 3), (2, 2, 0), (4, 2, 1), (13, 1, 6), (1, 1, 0)]
)
def test_fast_max_pool_equals_torch(k, s, p):
    """The shifted-maxima pool (SPPF's and the encoder's) gives exactly torch's max-pool, scripted too."""
    x = torch.randn(2, 3, 17, 22)
    x[0, 0, 4:9, 4:9] = 1.0  # ties
    expected = torch.nn.functional.max_pool2d(x, k, s, p)
    pool = MaxPool2d(k, s, p)
    assert torch.equal(pool(x), expected)
    assert torch.equal(torch.jit.script(pool)(x), expected)
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        MaxPool2d(3, 1, 2)(x)


def test_fast_max_pool_trains_through_the_stock_operator():
    """With gradients (training) the stock pool runs: ties give the whole gradient to one element, as torch does."""
    x = torch.randn(2, 3, 17, 22)
    x[0, 0, 4:9, 4:9] = 1.0  # ties, where running maxima would split the gradient
    ours, stock = x.clone().requires_grad_(), x.clone().requires_grad_()
    MaxPool2d(5, 1, 2)(ours).sum().backward()
    torch.nn.functional.max_pool2d(stock, 5, 1, 2).sum().backward()
    assert torch.equal(ours.grad, stock.grad)
