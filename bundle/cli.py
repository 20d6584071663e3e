"""The command-line layer of ``python -m monai.bundle run`` with this bundle's configs.

Every config's ``initialize`` starts with ``$bundle.cli.install()``. Inside the bundle runner's process it

- refuses an override that names no key of the config files given (the runner would silently ignore
  ``--max_epoch 1`` and train for 50 epochs), suggesting the closest key;
- answers ``--help`` (or ``-h``) with one screen of the options a user sets for the config files given (training,
  inference or evaluation), their defaults and what they do, and exits (the runner itself has no help);
- installs a ``sys.excepthook`` that reports a project error — a :class:`~bundle.errors.BundleError`, or a
  ``ValueError`` raised by the bundle's own code — as one ``ERROR <message>`` line on stderr with the error's exit
  status (2 when the run cannot start), instead of MONAI's two or three chained tracebacks. Any other exception
  is a bug and keeps its full traceback; ``RFE_TRACEBACK=1`` restores tracebacks for project errors too.

MONAI Label runs each training as a process of its own (``python -m monailabel.interfaces.utils.app -m train``)
whose output lines are its server log and what ``GET /train/`` returns; there ``install`` installs the same hook, so
a project error ends that process as one ``ERROR`` line too (MONAI Label's overrides are not command-line options,
so none are checked). Anywhere else (MONAI Label's server process, Slicer, tests parsing the configs in-process)
``install`` does nothing.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bundle.config import suggestion
from bundle.errors import BundleError, ConfigError, DataError, one_line

__all__ = [
    "OPTION_HELP",
    "TRACEBACK_ENV",
    "check_overrides",
    "excepthook",
    "help_text",
    "install",
    "project_error",
    "run_inference",
]

TRACEBACK_ENV = "RFE_TRACEBACK"
_PACKAGE_DIR = Path(__file__).resolve().parent
# keyword arguments MONAI's create_workflow / ConfigWorkflow take besides each command's own parameters
_WORKFLOW_ARGS = ("workflow_name", "workflow_type", "properties_path", "bundle_root")


def _main_module() -> tuple[str, ...]:
    """The last parts of the program's path: ``("monai", "bundle", "__main__.py")`` for ``python -m monai.bundle``."""
    main = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return main.parts[-4:]


def _in_bundle_runner() -> bool:
    return _main_module()[-3:] == ("monai", "bundle", "__main__.py")


def _in_monailabel_task() -> bool:
    return _main_module() == ("monailabel", "interfaces", "utils", "app.py")


def install() -> None:
    """In ``python -m monai.bundle``: print :func:`help_text` and exit for ``--help``; else check the command line's
    overrides, then install :func:`excepthook`. In a MONAI Label task process: install :func:`excepthook`.

    Raises:
        ConfigError: an override that is not a key of the config files (reported by the hook as one line).
        SystemExit: status 0 after printing the help.
    """
    in_runner = _in_bundle_runner()
    if not in_runner and not _in_monailabel_task():
        return
    argv = sys.argv[1:] if in_runner else []
    if any(token in ("--help", "-h") or token.startswith("--help=") for token in argv):
        files = _option_value(argv, "config_file")
        print(help_text(_config_files(files) if files else []), flush=True)
        raise SystemExit(0)
    if not os.environ.get(TRACEBACK_ENV):
        sys.excepthook = excepthook
    if in_runner:
        check_overrides(argv)


def _raised_in_bundle(error: BaseException) -> bool:
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and _PACKAGE_DIR in Path(frame.tb_frame.f_code.co_filename).resolve().parents


def project_error(error: BaseException) -> BaseException | None:
    """The innermost error in ``error``'s chain of causes that the project raised for the user, or None."""
    found = None
    while error is not None:
        if isinstance(error, BundleError) or (isinstance(error, ValueError) and _raised_in_bundle(error)):
            found = error
        error = error.__cause__
    return found


def excepthook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    """Print a project error as one line and exit with its status; hand anything else to Python's hook."""
    found = project_error(error)
    if found is None:
        sys.__excepthook__(kind, error, traceback)
        return
    print(f"ERROR {one_line(found)}", file=sys.stderr, flush=True)
    raise SystemExit(getattr(found, "exit_code", 1))


def run_inference(runner: Any, items: Sequence[Any], rank: int = 0, world_size: int = 1) -> int:
    """The ``run`` of ``configs/inference.json``: segment ``items`` with ``runner`` (a
    ``bundle.inference.SegmentationRunner``), print one ``ERROR`` line per file that failed and a summary line.

    With ``world_size`` processes (``configs/multi_gpu_inference.json``), process ``rank`` segments every
    ``world_size``-th item from its own position, and says so when none are left for it.

    Returns:
        0 when every item was segmented.

    Raises:
        DataError: there is nothing to segment.
        SystemExit: status 1 when any item failed.
    """
    if not items:
        raise DataError("no input images found")
    share = list(items)[rank::world_size]
    if not share:
        print(f"no photos left for process {rank} ({len(items)} photos, {world_size} processes)", flush=True)
        return 0
    results, failures = runner.run(
        share, on_failure=lambda _, reason: print(f"ERROR {reason}", file=sys.stderr, flush=True), keep_results=False
    )
    caution = " (by a model trained on the synthetic sample: see the warning above)" if runner.warning else ""
    empty = f"; {len(runner.empty_masks)} with an empty mask (see the warnings)" if runner.empty_masks else ""
    print(f"segmented {len(results)} of {len(share)} images; {len(failures)} failed{caution}{empty}", flush=True)
    if failures:
        raise SystemExit(1)
    return 0


def _option_value(argv: Sequence[str], name: str) -> str | None:
    for index, token in enumerate(argv):
        if token == f"--{name}" and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(f"--{name}="):
            return token.split("=", 1)[1]
    return None


def _config_files(value: str) -> list[str]:
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value
    return [str(p) for p in parsed] if isinstance(parsed, (list, tuple)) else [str(parsed)]


def _config_keys(files: Iterable[str]) -> set[str]:
    from monai.bundle import ConfigParser

    keys = {"_meta_"}
    for file in files:
        keys.update(ConfigParser.load_config_file(file))
    return keys


def check_overrides(argv: Sequence[str]) -> None:
    """Refuse ``--name`` options of a ``monai.bundle`` command line that neither the command nor the configs know.

    ``argv`` is the command line after the program (``["run", "training", "--config_file", ..., "--max_epochs",
    "2"]``). An id with ``#`` is checked by its first part. With ``--args_file`` nothing is checked (the file may
    hold the config files).

    Raises:
        ConfigError: naming the option, the config files and the closest key.
    """
    import monai.bundle.scripts as scripts
    from monai.bundle import ConfigWorkflow
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    command = getattr(scripts, argv[0], None) if argv else None
    files = _option_value(argv, "config_file")
    if command is None or files is None or _option_value(argv, "args_file") is not None:
        return
    files_list = _config_files(files)
    known = set(inspect.signature(command).parameters) | set(inspect.signature(ConfigWorkflow).parameters)
    known.update(_WORKFLOW_ARGS)
    for settings in DEFAULT_EXP_MGMT_SETTINGS.values():  # --tracking_uri etc., which --tracking reads
        known.update(settings.get("configs", {}))
    keys = _config_keys(files_list)
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0]
        if name in known or name.replace("::", "#").split("#")[0] in keys:
            continue
        raise ConfigError(
            f"unknown option --{name}: it is not a key of {', '.join(files_list)}, so the bundle runner would "
            f"ignore it{suggestion(name, sorted(keys | known)).replace('did you mean ', 'did you mean --')}"
        )


# One line per option a user sets, for --help. Options whose default is computed say it here; the others show the
# config's own value. (tests/test_cli.py checks that each one is a key of the configs.)
OPTION_HELP = {
    "dataset_dir": "images/ + masks/, a folder with datalist.json, or (inference) photos",
    "datalist": "a datalist JSON file (training/validation/test: image + label)",
    "max_epochs": "epochs to train",
    "batch_size": "photos per iteration",
    "learning_rate": "Adam's initial learning rate (polynomial decay to 0)",
    "image_size": "working size in px, a multiple of 32 [resume, fine-tune: the checkpoint's]",
    "backbone": "resnet34 | resnet50 | resnet101 [likewise]",
    "network_name": "rfeunet | flexibleunet | basicunet [likewise]",
    "rfe": "false: plain U-Net skips (the paper's baseline) [likewise]",
    "batchnorm": "yolov8 | pytorch: BatchNorm eps/momentum of the YOLOv8 blocks [likewise]",
    "loss": "adaptexp | adaptexpce | adaptlog | dicece | dice | bce | exp | focal",
    "augment": "augmentation groups: flips, rotate, colour, greyscale (or none)",
    "model_selection": "best | last: the epoch models/model.pt keeps",
    "init_weights": "fine-tune: start from this checkpoint's weights (and network)",
    "pretrained_weights": "an ImageNet ResNet state_dict (.pth) you provide for the encoder",
    "resume": "true: continue the training in --ckpt_dir from its last checkpoint",
    "ckpt_dir": "where models go (another training's model there: into a subfolder)",
    "output_dir": "where the results go (training: TensorBoard runs/<name>/)",
    "eval_dir": "same as --output_dir",
    "eval_key": "the datalist split to score",
    "save_overlays": "write overlays/ (prediction green, truth purple, overlap white)",
    "noise_std": "Gaussian noise added to the [0, 1] photo (the paper's Table 10)",
    "ckpt_path": "the checkpoint [auto: models/model.pt, else the demo model]",
    "datalist_key": "the datalist split to segment",
    "output_ext": ".png (0/255) | .nrrd | .nii.gz (3D Slicer labelmaps, 0/1)",
    "save_probabilities": "also write <name>_prob files",
    "fast_path": "auto | onnxruntime | bn_folded | none (CPU inference speed-ups)",
    "skip_bad_pairs": "leave unreadable or wrong pairs out (listed) instead of stopping",
    "device": "cpu, cuda, cuda:N (the N-th GPU), mps [auto: cuda:0 if there is a GPU]",
    "amp": "mixed precision [auto: on with CUDA]",
    "num_workers": "data loader processes [auto: one per CPU less one, at most 4]",
    "cache_rate": "share of the training set decoded and kept in memory",
    "seed": "random seed of weights, data order and augmentation",
    "weight_decay": "Adam's weight decay",
    "val_interval": "validate every N epochs",
}
_SHOWN = {
    "training": ("dataset_dir", "datalist", "max_epochs", "batch_size", "learning_rate", "image_size", "backbone",
                 "network_name", "rfe", "batchnorm", "loss", "augment", "model_selection", "init_weights",
                 "pretrained_weights", "resume", "ckpt_dir", "output_dir", "skip_bad_pairs", "device", "amp",
                 "num_workers", "cache_rate", "seed"),
    "evaluation": ("dataset_dir", "datalist", "eval_key", "ckpt_path", "output_dir", "eval_dir", "save_overlays",
                   "noise_std", "skip_bad_pairs", "device", "amp", "num_workers"),
    "inference": ("dataset_dir", "datalist", "datalist_key", "output_dir", "output_ext", "save_probabilities",
                  "ckpt_path", "fast_path", "device", "amp", "num_workers"),
}  # fmt: skip
_DOCS = "README.md (Set up, Inference, Your own data) and docs/README.md"


def _purpose(files: Sequence[str]) -> str:
    names = {Path(f).name for f in files}
    if "evaluate.json" in names:
        return "evaluation"
    return "training" if any(n.endswith("train.json") for n in names) else "inference"


_AUTOMATIC = ("device", "amp", "num_workers", "ckpt_path")  # chosen for the machine: the help text says how


def _default(key: str, config: Mapping, depth: int = 0) -> str:
    """The default of ``key`` in ``config`` as a user reads it: literals as they are; a network setting taken from
    the checkpoint (``@trained['backbone']``), the default of an untrained network (``bundle.networks.registry``);
    of another expression, the value it falls back on (``... @bundle_root + '/eval'`` → eval); "auto" for what is
    chosen for the machine (device, amp, num_workers, ckpt_path)."""
    value = config.get(key, "")
    if isinstance(value, str) and value.startswith("%") and "#" in value and depth < 3:  # a macro: the file's value
        from monai.bundle import ConfigParser

        file, _, item = value[1:].partition("#")
        try:
            return _default(item, ConfigParser.load_config_file(file), depth + 1)
        except (OSError, ValueError):
            return ""
    if isinstance(value, str) and value.startswith("@") and depth < 3:
        return _default(value[1:], config, depth + 1)
    computed = isinstance(value, Mapping) and "_target_" in value
    if not computed and (not isinstance(value, str) or not value.startswith("$")):
        return json.dumps(value) if not isinstance(value, str) else (value or '""')
    if key in _AUTOMATIC:
        return "auto"
    if computed:
        return ""
    recorded = re.fullmatch(r"\$@trained\['(\w+)'\]", value)
    if recorded:
        from bundle.networks.registry import NETWORK_DEFAULTS

        return _default(recorded.group(1), NETWORK_DEFAULTS, depth + 1)
    fallback = re.search(r"@bundle_root \+ '/([^']*)'$", value)
    return fallback.group(1) if fallback else ""


def help_text(files: Sequence[str]) -> str:
    """One screen of help for ``python -m monai.bundle run`` with the config ``files``: the command, the options a
    user sets with their defaults (read from the files) and what they do, and where to read more."""
    from monai.bundle import ConfigParser

    config: dict = {}
    for file in files:
        try:
            config.update(ConfigParser.load_config_file(file))
        except (OSError, ValueError):
            pass
    purpose = _purpose(files)
    command = {"training": "run training", "evaluation": "run", "inference": "run"}[purpose]
    shown = " ".join(files) if files else "configs/inference.json"
    lines = [
        f"{purpose.capitalize()} with this bundle (run from the bundle root):",
        f"  python -m monai.bundle {command} --config_file {shown if len(files) < 2 else repr(list(files))} "
        "[--option value ...]",
        "",
        "Options, their defaults, what they do (any other top-level key of the config files works too):",
    ]
    for key in _SHOWN[purpose]:
        if key in config or not config:
            lines.append(f"  --{key:<19}{_default(key, config):<19} {OPTION_HELP[key]}")
    if not files:
        lines.append("  (give --config_file configs/train.json, configs/inference.json, or train.json + evaluate.json)")
    lines += ["", f"Yes/no options take true or false. More: {_DOCS}."]
    return "\n".join(lines)
