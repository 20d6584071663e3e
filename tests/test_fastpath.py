"""The fast inference path (bundle/networks/fastpath.py): the same logits as eager PyTorch, re-made when the weights
change, cached exports reused; and the same masks as eager mode on real photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bundle.errors import ConfigError
from bundle.networks import make_network
from bundle.networks.fastpath import FAST_PATHS, FastInferer, fold_batchnorm, onnxruntime_available
from tests.conftest import REPO

DEMO_CHECKPOINT = REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128.pt"


def trained_like(backbone: str = "resnet34", seed: int = 0) -> nn.Module:
    """An eval-mode RFE U-Net whose BatchNorm statistics are not the identity (so folding them is not a no-op)."""
    torch.manual_seed(seed)
    network = make_network("rfeunet", backbone)
    with torch.no_grad():
        network.train()(torch.randn(2, 3, 64, 64))
    return network.eval()


def test_fold_batchnorm_keeps_the_function_and_the_original():
    network = trained_like("resnet50")
    before = {k: v.clone() for k, v in network.state_dict().items()}
    folded = fold_batchnorm(network)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in network.modules()) > 0
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), network(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())


@pytest.mark.parametrize("fast_path", [p for p in FAST_PATHS if p != "onnxruntime" or onnxruntime_available()])
def test_fast_paths_give_eager_logits_at_any_size(fast_path):
    network = trained_like()
    inferer = FastInferer(fast_path)
    with torch.inference_mode():
        for shape in [(1, 3, 64, 64), (2, 3, 96, 64)]:
            x = torch.randn(shape)
            torch.testing.assert_close(inferer(x, network), network(x), rtol=1e-4, atol=1e-5)
    assert inferer.calls == 2
    assert inferer.engine_name == inferer.resolve(torch.device("cpu"))


def test_new_weights_make_a_new_fast_network():
    network, other = trained_like(seed=0), trained_like(seed=1)
    inferer = FastInferer("bn_folded")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        first = inferer(x, network)
    network.load_state_dict(other.state_dict())  # what MONAI Label does when the checkpoint changes
    with torch.inference_mode():
        torch.testing.assert_close(inferer(x, network), other(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(first, other(x))


def test_training_mode_and_gradients_run_the_network_itself():
    network = trained_like()
    inferer = FastInferer("bn_folded")
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    inferer(x, network).sum().backward()  # gradients flow: the network itself ran
    assert x.grad is not None and inferer.engine_name == "none"
    with pytest.raises(ConfigError, match="^fast_path: 'tensorrt' is not one of auto, onnxruntime, bn_folded, none$"):
        FastInferer("tensorrt")


@pytest.mark.skipif(not onnxruntime_available(), reason="onnx and onnxruntime are not installed")
def test_onnx_export_is_cached_by_weights(tmp_path):
    network = trained_like()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        FastInferer("onnxruntime", cache_dir=tmp_path)(x, network)
        (cached,) = tmp_path.glob("*.onnx")
        stamp = cached.stat().st_mtime_ns
        again = FastInferer("onnxruntime", cache_dir=tmp_path)
        torch.testing.assert_close(again(x, network), network(x), rtol=1e-4, atol=1e-5)
        assert again._engine.source == str(cached) and cached.stat().st_mtime_ns == stamp  # read, not re-exported
        network.load_state_dict(trained_like(seed=1).state_dict())
        again(x, network)
    assert len(list(tmp_path.glob("*.onnx"))) == 2  # one file per set of weights


def test_auto_exports_only_trained_weights(tmp_path):
    checkpoint = tmp_path / "model.pt"
    assert FastInferer("auto", weights_file=checkpoint).resolve(torch.device("cpu")) == "bn_folded"
    torch.save(trained_like().state_dict(), checkpoint)
    expected = "onnxruntime" if onnxruntime_available() else "bn_folded"
    assert FastInferer("auto", weights_file=checkpoint).resolve(torch.device("cpu")) == expected
    assert FastInferer("auto", weights_file=checkpoint).resolve(torch.device("cuda")) == "none"


def test_fast_path_masks_equal_eager_masks_on_real_photos(isic_val, tmp_path):
    """The bundle's default inference (fast path "auto") against plain eager PyTorch, through LesionSegmenter and
    inference.json, on 12 ISIC 2017 photographs at their own size with the demo weights: no pixel differs with
    ONNX Runtime or BatchNorm folding (float32; a boundary pixel may flip where a probability is 0.5 to ~1e-7)."""
    from bundle.images import read_photo
    from bundle.inference import LesionSegmenter

    if not DEMO_CHECKPOINT.is_file():
        pytest.skip(f"the demo checkpoint {DEMO_CHECKPOINT} is not there yet")
    common = {"ckpt_path": str(DEMO_CHECKPOINT), "output_dir": str(tmp_path / "out")}
    eager = LesionSegmenter(overrides={**common, "fast_path": "none"})
    fast = LesionSegmenter(overrides={**common, "fast_path_cache": str(tmp_path / "cache")})
    differing = pixels = lesion = 0
    for photo in sorted((isic_val / "images").glob("*.jpg"))[:12]:
        image = np.asarray(read_photo(photo))
        expected, got = eager.segment_array(image)["pred"], fast.segment_array(image)["pred"]
        differing += int((expected != got).sum())
        pixels += expected.size
        lesion += int(expected.sum())
    assert fast.runner.inferer.inferer.engine_name == ("onnxruntime" if onnxruntime_available() else "bn_folded")
    assert lesion > 0.01 * pixels  # trained weights find lesions: the comparison is not of empty masks
    assert differing <= 1e-6 * pixels, f"{differing} of {pixels} pixels differ"
