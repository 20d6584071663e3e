"""What a receiver of the exported zip does with MONAI's own tools, run as a script in a process that imports only the
zip's code (``tests/test_model_zoo.py`` starts it with ``python -S`` and the site-packages on PYTHONPATH).

    python -S tests/zoo_receiver.py <unpacked bundle> <schema.json> <photo> <work folder>

It mirrors the model zoo's ``ci/verify_bundle.py -m full`` (Project-MONAI/model-zoo; not on the package registry) call
for call: the bundle folder first on ``sys.path``, required and preferred files, version and changelog, the metadata
against the schema, the inference workflow's properties, ``verify_net_in_out`` and ``ckpt_export`` of
``models/model.pt`` without ``key_in_ckpt``. Then ``monai.bundle.load``, ``onnx_export``, and ``ConfigWorkflow``
inference and one epoch of training, each from a working directory that is not the bundle. Each step's result is one
JSON line on stdout: ``{"step": ..., ...}``; the first failure ends the script with its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def report(step: str, **values) -> None:
    print(json.dumps({"step": step, **values}), flush=True)


def main(bundle: Path, schema: Path, photo: Path, work: Path) -> None:
    sys.path.insert(0, str(bundle))  # as verify_bundle.py does, so that the configs import the zip's `bundle`
    os.chdir(work)  # not the bundle: every tool gets the bundle's folder from its arguments
    import torch
    from monai.bundle import (
        ConfigWorkflow,
        ckpt_export,
        create_workflow,
        load,
        onnx_export,
        verify_metadata,
        verify_net_in_out,
    )

    import bundle as code

    report("code", file=code.__file__)
    configs, models = bundle / "configs", bundle / "models"
    meta, inference, train = configs / "metadata.json", configs / "inference.json", configs / "train.json"

    # verify_bundle_directory and verify_version_changes
    metadata = json.loads(meta.read_text())
    report(
        "files",
        missing=[f for f in ("configs/metadata.json", "LICENSE", "models/model.pt") if not (bundle / f).is_file()],
        inference=inference.is_file(),
        version_in_changelog=metadata["version"] in metadata["changelog"],
    )
    # verify_metadata_format
    verify_metadata(meta_file=str(meta), filepath=str(schema))
    report("metadata")
    # verify_bundle_properties, with MONAI's InferProperties (the zoo uses an app's when supported_apps names one)
    workflow = create_workflow(
        workflow_type="inference",
        bundle_root=str(bundle),
        config_file=str(inference),
        logging_file=str(configs / "logging.conf"),
        meta_file=str(meta),
    )
    report("inference_properties", missing=workflow.check_properties())
    # verify_data_shape
    verify_net_in_out(net_id="network_def", meta_file=str(meta), config_file=str(inference), bundle_root=str(bundle))
    report("net_in_out")
    # verify_torchscript: no key_in_ckpt
    ckpt_export(
        net_id="network_def",
        filepath=str(models / "verify_model.ts"),
        ckpt_file=str(models / "model.pt"),
        meta_file=str(meta),
        config_file=str(inference),
        bundle_root=str(bundle),
    )
    scripted = torch.jit.load(str(models / "verify_model.ts"))
    shipped = torch.load(models / "model.pt", weights_only=True)
    same = all(torch.equal(scripted.state_dict()[k].float(), v.float()) for k, v in shipped.items())
    report("ckpt_export", same_weights=same, tensors=len(shipped))

    size = metadata["network_data_format"]["inputs"]["image"]["spatial_shape"]
    onnx_export(
        net_id="network_def",
        filepath=str(work / "model.onnx"),
        ckpt_file=str(models / "model.pt"),
        meta_file=str(meta),
        config_file=str(inference),
        bundle_root=str(bundle),
        input_shape=[1, 3, *size],
    )
    report("onnx_export", bytes=(work / "model.onnx").stat().st_size)

    # the call, as a user types it: the weights come back in the network, not random ones
    network = load(
        name=bundle.name,
        bundle_dir=str(bundle.parent),
        source="github",
        net_override={},
        workflow_type="inference",
        device="cpu",
    )
    loaded = network.state_dict()
    equal = [torch.equal(loaded[k], v.to(loaded[k].dtype)) for k, v in shipped.items()]
    name = "decoder.0.conv.weight" if "decoder.0.conv.weight" in shipped else next(iter(shipped))
    report(
        "load",
        network=type(network).__name__,
        equal=sum(equal),
        tensors=len(equal),
        sample=name,
        sample_equal=torch.equal(loaded[name], shipped[name].to(loaded[name].dtype)),
    )

    # ConfigWorkflow: inference on one photograph, then one epoch of training, neither from the bundle's folder
    masks = work / "masks"
    workflow = ConfigWorkflow(
        config_file=str(inference), workflow_type="inference", bundle_root=str(bundle), output_dir=str(masks)
    )
    workflow.initialize()
    missing = workflow.check_properties()
    workflow.dataset_data = [{"image": str(photo)}]
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    report("infer_workflow", missing=missing, masks=sorted(p.name for p in masks.iterdir()))

    workflow = ConfigWorkflow(
        config_file=str(train),
        workflow_type="train",
        bundle_root=str(bundle),
        max_epochs=1,
        num_workers=0,
        batch_size=8,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    workflow.run()
    workflow.finalize()
    trained = Path(workflow.parser.get_parsed_content("save_dir")) / "model.pt"
    report(
        "train_workflow",
        missing=missing,
        epochs=workflow.trainer.state.epoch,
        pairs=len(workflow.train_dataset),
        trained=str(trained),
        trained_differs=not torch.equal(torch.load(trained, weights_only=True)[name].float(), shipped[name].float()),
        shipped_kept=torch.equal(torch.load(models / "model.pt", weights_only=True)[name], shipped[name]),
    )


if __name__ == "__main__":
    main(*(Path(arg).resolve() for arg in sys.argv[1:5]))
