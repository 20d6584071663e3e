"""Checkpoints that know their network: reading, unwrapping, settings, default weights, mismatches (real files)."""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from bundle.checkpoint import (
    NetworkCheckpoint,
    load_weights,
    model_record,
    network_settings,
    read_checkpoint,
    training_data,
    unwrap_state_dict,
)
from bundle.errors import CheckpointError, CheckpointMismatchError, ConfigError, MissingCheckpointError
from bundle.inference import LesionSegmenter
from bundle.networks import RFEUNet
from bundle.training import save_checkpoint

from .conftest import REPO

DEMO_NAME = "rfeunet_resnet34_isic2017_128.pt"
SETTINGS = {
    "name": "rfeunet",
    "backbone": "resnet34",
    "rfe": True,
    "in_channels": 3,
    "out_channels": 2,
    "image_size": 128,
    "pixel_mean": [0.485, 0.456, 0.406],
    "pixel_std": [0.229, 0.224, 0.225],
}


@pytest.fixture(scope="module")
def resnet34() -> RFEUNet:
    return RFEUNet("resnet34").eval()


def test_unwrap_accepts_every_wrapper_and_ddp_prefix():
    state = OrderedDict(w=torch.ones(2), b=torch.zeros(1))
    prefixed = OrderedDict((f"module.{k}", v) for k, v in state.items())
    for checkpoint in (
        state,
        prefixed,
        {"model": state, "network": dict(SETTINGS)},
        {"model": prefixed, "optimizer": {"lr": 1}},
        {"state_dict": state},
        {"network": state},
    ):
        unwrapped = unwrap_state_dict(checkpoint)
        assert list(unwrapped) == ["w", "b"] and unwrapped["w"] is state["w"], checkpoint
    assert unwrap_state_dict({"epoch": 3}) is None
    assert unwrap_state_dict([torch.ones(1)]) is None


def test_network_checkpoint_writes_a_plain_state_dict_that_carries_its_record(tmp_path, resnet34):
    path = tmp_path / "model.pt"
    data = {"dataset": "/d", "datalist": "", "training_pairs": 5, "validation_pairs": 1, "synthetic_sample": False}
    save_checkpoint(NetworkCheckpoint(resnet34, SETTINGS, data=data).state_dict(), path)  # as training saves it
    loaded = torch.load(path, weights_only=True)
    assert loaded.keys() == resnet34.state_dict().keys()  # what MONAI's load, ckpt_export and MONAI Label read
    RFEUNet("resnet34").load_state_dict(loaded, strict=True)
    assert network_settings(path) == SETTINGS
    assert training_data(path) == data
    assert model_record(path) == {"network": SETTINGS, "data": data}  # no validator: no scores


def test_settings_of_unknown_keys_travel_untouched_and_defaults_fill_the_rest(tmp_path, resnet34):
    clicks = {**SETTINGS, "in_channels": 6, "guidance": {"kind": "disks"}, "click_radius": 5}
    path = tmp_path / "model.pt"
    torch.save(NetworkCheckpoint(resnet34, clicks).state_dict(), path)
    assert network_settings(path) == clicks
    assert network_settings(path, {"backbone": "resnet101", "extra": 1}) == {**clicks, "extra": 1}
    assert network_settings(tmp_path / "absent.pt", {"backbone": "resnet101"}) == {"backbone": "resnet101"}
    assert network_settings(tmp_path / "absent.pt") is None


def test_the_older_layout_still_reads_and_loads(tmp_path, resnet34):
    path = tmp_path / "old.pt"
    torch.save({"model": resnet34.state_dict(), "network": SETTINGS, "about": {"data": "d"}}, path)
    assert network_settings(path) == SETTINGS
    assert model_record(path) == {"network": SETTINGS, "about": {"data": "d"}}
    assert training_data(path) is None
    assert load_weights(RFEUNet("resnet34"), path, expected={"backbone": "resnet34"})


def test_weights_of_another_backbone_are_one_line_naming_it(tmp_path, resnet34):
    path = tmp_path / "bare.pt"
    torch.save(resnet34.state_dict(), path)  # no record: the backbone is judged from the tensors
    with pytest.raises(CheckpointMismatchError) as raised:
        load_weights(RFEUNet("resnet50"), path, expected={"backbone": "resnet50"})
    message = str(raised.value)
    assert "\n" not in message and len(message) < 400
    assert "a resnet34 network" in message and "configured backbone resnet50" in message


def test_settings_must_be_plain_values(resnet34):
    with pytest.raises(ValueError, match="plain values"):
        NetworkCheckpoint(resnet34, {"device": torch.device("cpu")})


def test_bare_state_dicts_still_load_and_have_no_settings(tmp_path, resnet34):
    path = tmp_path / "bare.pt"
    torch.save(resnet34.state_dict(), path)
    assert network_settings(path) is None
    network = RFEUNet("resnet34")
    assert load_weights(network, path, expected={"backbone": "resnet34"})
    torch.testing.assert_close(network.state_dict(), resnet34.state_dict())


def test_mismatch_names_the_checkpoints_backbone_and_the_requested_one(tmp_path, resnet34):
    recorded, bare = tmp_path / "recorded.pt", tmp_path / "bare.pt"
    torch.save(NetworkCheckpoint(resnet34, SETTINGS).state_dict(), recorded)
    torch.save(resnet34.state_dict(), bare)
    network = RFEUNet("resnet50")
    with pytest.raises(
        CheckpointMismatchError, match=r"recorded.pt: trained with backbone 'resnet34'.*asks for backbone 'resnet50'"
    ):
        load_weights(network, recorded, expected={**SETTINGS, "backbone": "resnet50"})
    with pytest.raises(
        CheckpointMismatchError, match=r"bare.pt: its weights are a resnet34 network .* backbone resnet50"
    ):
        load_weights(network, bare, expected={**SETTINGS, "backbone": "resnet50"})
    with pytest.raises(CheckpointMismatchError, match=r"image_size 128, but the configuration asks for image_size 64"):
        load_weights(RFEUNet("resnet34"), recorded, expected={**SETTINGS, "image_size": 64})


def test_unreadable_checkpoints_get_one_line_and_no_weights_only_advice(tmp_path, resnet34):
    good = tmp_path / "good.pt"
    torch.save(NetworkCheckpoint(resnet34, SETTINGS).state_dict(), good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    torch.save({"when": Path("/tmp")}, tmp_path / "object.pt")  # a pickled Python object: refused, never run
    cases = {
        "truncated.pt": "truncated or damaged",
        "empty.pt": "empty file",
        "text.pt": "not a PyTorch checkpoint",
        "object.pt": "could run code",
    }
    for name, reason in cases.items():
        with pytest.raises(CheckpointError, match=reason) as caught:
            read_checkpoint(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(str(tmp_path / name)) and "\n" not in message
        assert "weights_only" not in message, message
    with pytest.raises(MissingCheckpointError):
        load_weights(RFEUNet("resnet34"), tmp_path / "absent.pt", required=True)
    assert load_weights(RFEUNet("resnet34"), tmp_path / "absent.pt") is False


def _bundle_copy(root: Path) -> Path:
    shutil.copytree(REPO / "configs", root / "configs")
    return root


def test_default_weights_fall_back_to_the_demo_checkpoint(tmp_path, resnet34):
    """No models/model.pt: the demo checkpoint (fp16, settings recorded) is used, and its settings with it."""
    root = _bundle_copy(tmp_path / "bundle")
    demo = root / "models" / "demo" / DEMO_NAME
    demo.parent.mkdir(parents=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in resnet34.state_dict().items()}
    torch.save({"model": half, "network": SETTINGS}, demo)
    segmenter = LesionSegmenter(bundle_root=root, overrides={"output_dir": str(tmp_path / "out")})
    assert segmenter.parser.get_parsed_content("ckpt_path") == str(demo)
    assert segmenter.runner.has_weights
    assert segmenter.parser.get_parsed_content("network_settings")["image_size"] == 128
    assert len(segmenter.runner.network.encoder.layer3) == 6  # ResNet-34, not the config's ResNet-101 default

    trained = {**SETTINGS, "image_size": 64}
    torch.save(NetworkCheckpoint(resnet34, trained).state_dict(), root / "models" / "model.pt")
    segmenter = LesionSegmenter(bundle_root=root, overrides={"output_dir": str(tmp_path / "out")})
    assert segmenter.parser.get_parsed_content("ckpt_path") == str(root / "models" / "model.pt")
    assert segmenter.parser.get_parsed_content("network_settings")["image_size"] == 64


def test_explicit_override_that_disagrees_is_an_error_naming_both(tmp_path, resnet34):
    root = _bundle_copy(tmp_path / "bundle")
    (root / "models").mkdir()
    torch.save(NetworkCheckpoint(resnet34, SETTINGS).state_dict(), root / "models" / "model.pt")
    with pytest.raises(CheckpointMismatchError, match=r"image_size 128, but the configuration asks for image_size 96"):
        LesionSegmenter(bundle_root=root, overrides={"image_size": 96})
    with pytest.raises(ConfigError, match=r"image_size: 100 is not a multiple of 32"):
        LesionSegmenter(bundle_root=root, overrides={"image_size": 100})
    agreeing = LesionSegmenter(bundle_root=root, overrides={"image_size": 128, "backbone": "resnet34"})
    assert agreeing.runner.has_weights


def test_init_from_an_empty_path_does_nothing(resnet34):
    from bundle.checkpoint import init_from

    assert init_from(resnet34, "") is False


def test_init_from_a_checkpoint_starts_from_its_weights(tmp_path):
    from bundle.checkpoint import init_from

    torch.manual_seed(0)
    source = RFEUNet("resnet34").eval()
    path = tmp_path / "model.pt"
    torch.save(NetworkCheckpoint(source, SETTINGS).state_dict(), path)
    target = RFEUNet("resnet34").eval()
    assert init_from(target, path, expected={**SETTINGS, "image_size": 256}) is True  # the size may change
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))


def test_init_from_widens_the_input_layer_with_zero_weights_for_new_channels(tmp_path):
    from bundle.checkpoint import init_from

    torch.manual_seed(0)
    source = RFEUNet("resnet34").eval()
    path = tmp_path / "model.pt"
    torch.save(NetworkCheckpoint(source, SETTINGS).state_dict(), path)
    guided = RFEUNet("resnet34", in_channels=6).eval()
    init_from(guided, path, expected={**SETTINGS, "in_channels": 6})
    rgb = torch.randn(1, 3, 64, 64)
    guidance = torch.rand(1, 3, 64, 64)  # whatever the new channels hold, they start with no effect
    with torch.no_grad():
        assert torch.equal(guided(torch.cat((rgb, guidance), 1)), source(rgb))
    assert guided.encoder.conv1.weight[:, 3:].abs().sum() == 0


def test_init_from_another_backbone_is_one_mismatch_line(tmp_path):
    from bundle.checkpoint import init_from

    path = tmp_path / "model.pt"
    torch.save(NetworkCheckpoint(RFEUNet("resnet34"), SETTINGS).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="trained with backbone 'resnet34'") as caught:
        init_from(RFEUNet("resnet50"), path, expected={**SETTINGS, "backbone": "resnet50"})
    assert "\n" not in str(caught.value)
    bare = tmp_path / "bare.pt"
    torch.save(RFEUNet("resnet34").state_dict(), bare)
    with pytest.raises(CheckpointMismatchError, match="do not fit the network to train") as caught:
        init_from(RFEUNet("resnet50"), bare)
    assert "\n" not in str(caught.value)
