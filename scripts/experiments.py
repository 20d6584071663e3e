"""The paper's experiments as recipes over the bundle: the loss ablation and backbone comparison (Tables 7–9), the
Gaussian-noise robustness check (Table 10) and k-fold cross-validation (Table 11).

Every configuration is one training run of the bundle followed by an evaluation of its best checkpoint, each in its
own ``python -m monai.bundle`` process started from the repository root, writing only into its run folder::

    <out>/<name>/run.json                  the options the run was made with, and its training time
    <out>/<name>/train.log, eval.log       the full output of each process (eval_noise<σ>.log for the noisy one)
    <out>/<name>/models/model.pt, runs/    the best checkpoint (by validation mDice), TensorBoard logs
    <out>/<name>/eval/metrics.json         the evaluation report (eval_noise<σ>/ for the noisy one)
    <out>/results.md, .json, .csv          the table over all runs (JSON and CSV hold fractions, the table %)

Examples::

    python -m scripts.experiments ablation --dataset_dir data/isic2018 --out runs/ablation
    python -m scripts.experiments ablation --dataset_dir data/isic2018 --out runs/table7 \\
        --backbones resnet34,resnet50,resnet101 --losses bce,dice,focal,adaptexp --noise_std 0.1
    python -m scripts.experiments folds --dataset_dir data/ph2 --datalists "data/ph2/datalist_fold*.json"

A run whose evaluation report exists is reused, not redone (``--force`` redoes it); an interrupted training resumes
from its last checkpoint, which is deleted once the training has finished. A run folder made with other options is
refused rather than silently mixed into the table. A failing run is reported in one line naming its log, the other
runs go on, and the exit status is 1 at the end. Progress and failures go to stderr, the table to stdout.

This file holds the commands and their input checks; the runs are ``scripts/experiment_runs.py``, the tables
``scripts/experiment_tables.py`` and their statistics ``scripts/experiment_stats.py``.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import fire

from bundle.data import load_datalist, loader_workers
from bundle.losses import LOSS_NAMES
from bundle.networks.registry import BACKBONES
from scripts.experiment_runs import (
    NETWORKS,
    RECIPE_KEYS,
    RESOLUTIONS,
    RunSpec,
    _per_image,
    format_duration,
    run_all,
    train_and_evaluate,
)
from scripts.experiment_stats import mean_and_sd, paired_difference, seed_groups
from scripts.experiment_tables import (
    Column,
    ExperimentReport,
    comparison_lines,
    epochs_text,
    noise_columns,
    paired_lines,
    result_row,
    results_table,
    runs_report,
    write_report,
)

# what other scripts and the tests import from here
__all__ = [
    "DEFAULT_LOSSES",
    "NETWORKS",
    "Column",
    "ExperimentReport",
    "RunSpec",
    "_extra_args",
    "_per_image",
    "ablation",
    "compare",
    "fold_datalists",
    "folds",
    "format_duration",
    "main",
    "mean_and_sd",
    "paired_difference",
    "results_table",
    "train_and_evaluate",
]

DEFAULT_LOSSES = ("bce", "dice", "focal", "exp", "adaptexp")  # Table 8's rows

# ------------------------------------------------------------------------------------------------- input checking


def _names(value: str | Sequence[str], what: str, allowed: Iterable[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` → ``["a", "b"]`` (duplicates dropped), each checked against ``allowed``."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = list(dict.fromkeys(item.strip() for item in items if item.strip()))
    allowed = tuple(allowed)
    if not names:
        raise ValueError(f"no {what} given; choose from {', '.join(allowed)}.")
    for name in names:
        if name not in allowed:
            raise ValueError(f"unknown {what} {name!r}; choose from {', '.join(allowed)}.")
    return names


def _extra_args(extra: str | Sequence[str]) -> tuple[str, ...]:
    """Split the ``--extra`` bundle overrides and refuse keys that the recipe sets itself."""
    if isinstance(extra, bool):
        raise ValueError('--extra needs the overrides as one quoted value, e.g. --extra "--learning_rate 0.001".')
    tokens = shlex.split(extra) if isinstance(extra, str) else [str(t) for t in extra]
    for token in tokens:
        key = token[2:].split("=", 1)[0] if token.startswith("--") else None
        if key in RECIPE_KEYS:
            raise ValueError(f"--extra sets --{key}, which the recipe sets itself; use the recipe's own option.")
    return tuple(tokens)


def _dataset(dataset_dir: str, datalist: str, keys: Sequence[str]) -> tuple[str, str]:
    """Absolute (dataset_dir, datalist), after checking that every split in ``keys`` loads (files exist)."""
    root = Path(str(dataset_dir)).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"dataset_dir {root} is not a folder.")
    path = ""
    if datalist:
        candidate = Path(str(datalist)).expanduser()
        if not candidate.is_file() and not candidate.is_absolute():
            candidate = root / candidate  # as bundle.data.load_datalist looks it up
        path = str(candidate.resolve())
    for key in keys:
        load_datalist(root, path or None, key=key)
    return str(root), path


def _workers(num_workers: int | None) -> int:
    return loader_workers() if num_workers is None else int(num_workers)


def _recipe(
    root: str, datalist_path: str, max_epochs: int, image_size: int, batch_size: int, num_workers: Any, extra: Any
) -> dict[str, Any]:
    """The run settings every recipe of one command shares: data, test split, schedule, size, loader, extra options."""
    return {
        "dataset_dir": root,
        "datalist": datalist_path,
        "eval_key": "test",
        "max_epochs": int(max_epochs),
        "image_size": int(image_size),
        "batch_size": int(batch_size),
        "num_workers": _workers(num_workers),
        "extra": _extra_args(extra),
    }


def _check_training_options(max_epochs: int, image_size: int, batch_size: int, noise_std: float) -> None:
    if int(max_epochs) < 1 or int(batch_size) < 1:
        raise ValueError(f"max_epochs and batch_size must be at least 1, got {max_epochs} and {batch_size}.")
    if int(image_size) < 32 or int(image_size) % 32:
        raise ValueError(f"image_size must be a multiple of 32 (the network halves it five times), got {image_size}.")
    if float(noise_std) < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}.")


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def fold_datalists(datalists: str | Sequence[str]) -> list[Path]:
    """
    The fold datalist files named by ``datalists``: glob patterns or paths, one string (comma-separated) or a list,
    sorted naturally (``fold2`` before ``fold10``).

    Raises:
        ValueError: when a pattern matches nothing, fewer than two files are found, or two share a file name.
    """
    patterns = datalists.split(",") if isinstance(datalists, str) else [str(d) for d in datalists]
    files: dict[Path, None] = {}
    for pattern in (p.strip() for p in patterns if p.strip()):
        matches = glob.glob(os.path.expanduser(pattern))
        if not matches:
            raise ValueError(f"no fold datalist file matches {pattern}.")
        files.update((Path(m).resolve(), None) for m in matches)
    paths = sorted(files, key=_natural_key)
    if len(paths) < 2:
        raise ValueError(f"cross-validation needs at least 2 fold datalists, {datalists} gives {len(paths)}.")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"fold datalists must have distinct file names (they name the run folders): {paths}.")
    return paths


def _seeds(value: int | str | Sequence[int]) -> list[int]:
    items = [value] if isinstance(value, int) else value.split(",") if isinstance(value, str) else list(value)
    try:
        seeds = list(dict.fromkeys(int(str(item).strip()) for item in items if str(item).strip()))
    except ValueError:
        raise ValueError(f"seeds must be integers, e.g. 0,1,2; got {value!r}.") from None
    if not seeds:
        raise ValueError("no seed given, e.g. --seeds 0,1,2.")
    return seeds


def _options(common: dict[str, Any], **more: Any) -> dict[str, Any]:
    """The options recorded in a report: the shared run settings (``extra`` as a list), then ``more``."""
    return {**{k: v for k, v in common.items() if k != "extra"}, "extra": list(common["extra"]), **more}


def _data_name(root: str, datalist_path: str, split: str = "test split") -> str:
    return f"{root} ({Path(datalist_path).name if datalist_path else 'default datalist'}, {split})"


# ------------------------------------------------------------------------------------------------------- commands


ABLATION_COLUMNS = (
    Column("Backbone", "backbone", "text"),
    Column("Loss", "loss", "text"),
    Column("mIoU", "working_mIoU"),
    Column("mDice", "working_mDice"),
    Column("mIoU*", "working_IoU_star"),
    Column("mDice*", "working_Dice_star"),
    Column("Thresholded Jaccard", "working_thresholded_jaccard"),
    Column("HD95 (px)", "working_HD95", "pixels"),
    Column("mIoU (original)", "original_mIoU"),
    Column("mDice (original)", "original_mDice"),
)


def ablation(
    dataset_dir: str,
    datalist: str = "",
    out: str = "runs/ablation",
    losses: str | Sequence[str] = "",
    backbones: str | Sequence[str] = "resnet101",
    networks: str | Sequence[str] = "rfeunet",
    max_epochs: int = 50,
    image_size: int = 256,
    batch_size: int = 8,
    num_workers: int | None = None,
    seed: int = 123,
    noise_std: float = 0.0,
    extra: str | Sequence[str] = "",
    force: bool = False,
) -> ExperimentReport:
    """
    Loss ablation (Tables 8–9) and, with several backbones, the backbone × loss comparison (Table 7): train each
    (backbone, loss) in ``<out>/<backbone>_<loss>``, evaluate its best checkpoint on the test split, and print one
    table (also ``<out>/results.md``, ``.json``, ``.csv``).

    Args:
        dataset_dir: the data root.
        datalist: the datalist file (default: ``dataset_dir/datalist.json``, or the images/masks folders).
        out: the experiment folder.
        losses: comma-separated loss names (see ``bundle.losses.LOSS_NAMES``); default: Table 8's rows, bce,
            dice, focal, exp and adaptexp.
        backbones: comma-separated ResNet backbones.
        networks: comma-separated networks (see :data:`NETWORKS`): ``rfeunet``, ``rfeunet-norfe`` (Table 9's
            baseline without RFE), ``flexibleunet``, ``basicunet``.
        max_epochs: training epochs of each run (the best epoch by validation mDice is evaluated).
        image_size: the working resolution, a multiple of 32.
        batch_size: training batch size.
        num_workers: data-loading processes (default: the bundle's own, ``bundle.data.loader_workers()``).
        seed: the bundle's random seed.
        noise_std: when > 0, each run is also evaluated with Gaussian noise of this σ (Table 10), as extra columns.
        extra: further bundle overrides for training and evaluation, e.g. ``"--learning_rate 0.001"``.
        force: redo runs that already have results.

    Raises:
        ValueError: when an option or the dataset is wrong (before anything runs).
    """
    loss_names = _names(losses or DEFAULT_LOSSES, "loss", LOSS_NAMES)
    backbone_names = _names(backbones, "backbone", BACKBONES)
    network_labels = _names(networks, "network", NETWORKS)
    _check_training_options(max_epochs, image_size, batch_size, noise_std)
    root, datalist_path = _dataset(dataset_dir, datalist, ("training", "validation", "test"))
    common = {**_recipe(root, datalist_path, max_epochs, image_size, batch_size, num_workers, extra), "seed": int(seed)}
    specs = [
        RunSpec(
            name=f"{backbone}_{loss}" if label == "rfeunet" else f"{label}-{backbone}_{loss}",
            **{"backbone": backbone, "loss": loss, "network": NETWORKS[label][0], "rfe": NETWORKS[label][1]},
            **common,
        )
        for label, backbone, loss in itertools.product(network_labels, backbone_names, loss_names)
    ]
    out_dir = Path(str(out)).expanduser().resolve()
    results = run_all(specs, out_dir, float(noise_std), bool(force))
    columns = [
        *([Column("Network", "network", "text")] if network_labels != ["rfeunet"] else []),
        *ABLATION_COLUMNS,
        *noise_columns(float(noise_std)),
        Column("Training time", "train_seconds", "duration"),
    ]
    title = (
        f"Loss ablation: RFE U-Net on {_data_name(root, datalist_path)}, {epochs_text(max_epochs)}, "
        f"{image_size}×{image_size}, batch {batch_size}, seed {seed}"
    )
    options = _options(
        common, losses=loss_names, backbones=backbone_names, networks=network_labels, noise_std=float(noise_std)
    )
    note = (
        "mIoU to HD95 at the working resolution (image_size × image_size), then mIoU and mDice at each "
        "photograph's own size"
        + (" and, with noise, at the working resolution" if noise_std > 0 else "")
        + "; overlap scores in %, HD95 in pixels."
    )
    return runs_report(out_dir, results, title, note, columns, options)


def folds(
    dataset_dir: str,
    datalists: str | Sequence[str],
    out: str = "runs/folds",
    loss: str = "adaptexp",
    backbone: str = "resnet101",
    eval_key: str = "test",
    max_epochs: int = 50,
    image_size: int = 256,
    batch_size: int = 8,
    num_workers: int | None = None,
    seed: int = 123,
    noise_std: float = 0.0,
    extra: str | Sequence[str] = "",
    force: bool = False,
) -> ExperimentReport:
    """
    k-fold cross-validation (Table 11): train one configuration on each fold datalist in ``<out>/<file stem>``,
    evaluate it on the fold's ``eval_key`` split, and print a per-fold table with a mean ± sample-SD row (also
    ``<out>/results.md``, ``.json``, ``.csv``).

    Args:
        dataset_dir: the data root the fold datalists' paths start from.
        datalists: the fold datalist files, e.g. ``"D/datalist_fold*.json"`` (as ``scripts/prepare_data.py
            --folds 5`` writes them: the held-out fold is ``test``, the checkpoint is chosen on ``validation``).
        out: the experiment folder.
        loss: the loss (default: the paper's).
        backbone: the ResNet encoder (default: the paper's).
        eval_key: the split each fold is evaluated on.
        max_epochs: training epochs of each fold.
        image_size: the working resolution, a multiple of 32.
        batch_size: training batch size.
        num_workers: data-loading processes (default: the bundle's own).
        seed: the bundle's random seed.
        noise_std: when > 0, each fold is also evaluated with Gaussian noise of this σ (Table 10).
        extra: further bundle overrides for training and evaluation, e.g. ``"--learning_rate 0.001"``.
        force: redo runs that already have results.

    Raises:
        ValueError: when an option, a fold datalist or the dataset is wrong (before anything runs).
    """
    (loss_name,) = _names(loss, "loss", LOSS_NAMES)
    (backbone_name,) = _names(backbone, "backbone", BACKBONES)
    _check_training_options(max_epochs, image_size, batch_size, noise_std)
    files = fold_datalists(datalists)
    schedule = {"max_epochs": int(max_epochs), "image_size": int(image_size), "batch_size": int(batch_size)}
    common = {"backbone": backbone_name, "loss": loss_name, "eval_key": str(eval_key), **schedule, "seed": int(seed)}
    common.update(num_workers=_workers(num_workers), extra=_extra_args(extra))
    splits = tuple(dict.fromkeys(("training", "validation", str(eval_key))))
    specs = []
    for path in files:
        root, datalist_path = _dataset(dataset_dir, str(path), splits)
        specs.append(RunSpec(name=path.stem, dataset_dir=root, datalist=datalist_path, **common))
    out_dir = Path(str(out)).expanduser().resolve()
    results = run_all(specs, out_dir, float(noise_std), bool(force))
    columns = [
        *(Column("Fold", "name", "text"), Column("n", "working_n_images", "count")),
        *(Column("mIoU", "working_mIoU"), Column("mDice", "working_mDice")),
        *(Column("mIoU (original)", "original_mIoU"), Column("mDice (original)", "original_mDice")),
        *noise_columns(float(noise_std)),
        Column("Training time", "train_seconds", "duration"),
    ]
    title = (
        f"{len(specs)}-fold cross-validation: RFE U-Net ({backbone_name}, {loss_name}) on {specs[0].dataset_dir} "
        f"({eval_key!r} split of each fold), {epochs_text(max_epochs)}, {image_size}×{image_size}, "
        f"batch {batch_size}, seed {seed}"
    )
    options = _options(
        common, dataset_dir=specs[0].dataset_dir, datalists=[s.datalist for s in specs], noise_std=float(noise_std)
    )
    note = (
        "mIoU and mDice in % on each fold's held-out images, at the working resolution (image_size × image_size)"
        " and at each photograph's own size; Mean ± SD: over the folds, sample SD (n − 1)."
    )
    return runs_report(out_dir, results, title, note, columns, options, digits=3, mean_row="Mean ± SD")


COMPARISON_NOTE = (
    "Mean ± sample SD (n − 1) over the seeds; overlap scores in %, HD95 in pixels, at the {resolution} size{stored}; "
    "training time: mean wall-clock per run."
)
STORED = {"original": " (each photo as stored)"}


def _comparison_specs(
    network_labels: Sequence[str], loss_names: Sequence[str], seeds: Sequence[int], common: dict[str, Any]
) -> list[RunSpec]:
    """One run per seed, network and loss, seed-major, so that a partial run already covers every configuration
    once."""
    specs = []
    for seed in seeds:
        for label in network_labels:
            for loss in loss_names:
                encoder = "" if label == "basicunet" else f"-{common['backbone']}"
                specs.append(
                    RunSpec(
                        name=f"{label}{encoder}_{loss}_seed{seed}",
                        loss=loss,
                        seed=seed,
                        network=NETWORKS[label][0],
                        rfe=NETWORKS[label][1],
                        **common,
                    )
                )
    return specs


def compare(
    dataset_dir: str,
    datalist: str = "",
    out: str = "runs/compare",
    networks: str | Sequence[str] = "rfeunet",
    losses: str | Sequence[str] = "adaptexp",
    backbone: str = "resnet34",
    seeds: int | str | Sequence[int] = "0,1,2",
    max_epochs: int = 3,
    image_size: int = 128,
    batch_size: int = 8,
    num_workers: int | None = None,
    resolution: str = "original",
    report: str = "results",
    extra: str | Sequence[str] = "",
    force: bool = False,
) -> ExperimentReport:
    """
    Networks × losses × seeds on one data set, with everything else equal: each configuration is trained once per
    seed in ``<out>/<network>-<backbone>_<loss>_seed<k>`` and evaluated on the test split; the table reports each
    (network, loss) as the mean ± sample SD over its seeds, sorted by mIoU at ``resolution``, followed by the paired
    per-image IoU differences of every row against the best one (IoU averaged over seeds per image; mean, 95% CI,
    Wilcoxon signed-rank p, images better / worse). Runs shared by two invocations with the same options and ``out``
    (e.g. the network comparison's and the loss comparison's common row) are trained once.

    Args:
        dataset_dir: the data root.
        datalist: the datalist file, with training, validation and test splits (default:
            ``dataset_dir/datalist.json``).
        out: the experiment folder.
        networks: comma-separated labels of :data:`NETWORKS`.
        losses: comma-separated loss names (see ``bundle.losses.LOSS_NAMES``).
        backbone: the ResNet encoder of the RFE U-Net and FlexibleUNet (BasicUNet has none).
        seeds: comma-separated seeds; each seed changes the initial weights, the data order and the augmentation.
        max_epochs: training epochs of each run.
        image_size: the working resolution, a multiple of 32.
        batch_size: training batch size.
        num_workers: data-loading processes (default: the bundle's own).
        resolution: ``original`` (each photo's stored size) or ``working`` (image_size²), the one rows are ranked by.
        report: file stem of the report (``<out>/<report>.md``, ``.json``, ``.csv``), so that two comparisons can
            share one ``out`` folder and its runs.
        extra: further bundle overrides for training and evaluation, e.g. ``"--learning_rate 0.001"``.
        force: redo runs that already have results.

    Raises:
        ValueError: when an option or the dataset is wrong (before anything runs).
    """
    network_labels = _names(networks, "network", NETWORKS)
    loss_names = _names(losses, "loss", LOSS_NAMES)
    (backbone_name,) = _names(backbone, "backbone", BACKBONES)
    seed_list = _seeds(seeds)
    (resolution,) = _names(resolution, "resolution", RESOLUTIONS)
    _check_training_options(max_epochs, image_size, batch_size, 0.0)
    root, datalist_path = _dataset(dataset_dir, datalist, ("training", "validation", "test"))
    common = {
        "backbone": backbone_name,
        **_recipe(root, datalist_path, max_epochs, image_size, batch_size, num_workers, extra),
    }
    specs = _comparison_specs(network_labels, loss_names, seed_list, common)
    out_dir = Path(str(out)).expanduser().resolve()
    results = run_all(specs, out_dir, 0.0, bool(force))
    groups = seed_groups(results, resolution)
    paired_table, paired = paired_lines(groups, resolution)
    title = (
        f"Comparison on {_data_name(root, datalist_path, 'test split')}: {backbone_name} encoders, "
        f"{epochs_text(max_epochs)}, {image_size}×{image_size}, batch {batch_size}, "
        f"seeds {', '.join(map(str, seed_list))}"
    )
    markdown = f"# {title}\n\n" + "\n".join(comparison_lines(groups, resolution) + paired_table)
    markdown += f"\n\n{COMPARISON_NOTE.format(resolution=resolution, stored=STORED.get(resolution, ''))}\n"
    print(markdown, end="", flush=True)
    options = _options(common, networks=network_labels, losses=loss_names, seeds=seed_list, resolution=resolution)
    run_rows = [result_row(r) for r in results]
    summary_rows = [{k: v for k, v in row.items() if k != "runs"} for row in groups]
    content = {"title": title, "options": options, "groups": summary_rows, "paired": paired, "runs": run_rows}
    write_report(out_dir, str(report), markdown, content, run_rows)
    outcome = ExperimentReport(results, markdown, out_dir)
    for failed in outcome.failed:
        print(failed.failure or "", file=sys.stderr, flush=True)
    return outcome


def _join_extra(argv: list[str]) -> list[str]:
    """``--extra "--learning_rate 0.001"`` → ``--extra=--learning_rate 0.001``, since fire reads ``--…`` values as
    flags."""
    joined, i = [], 0
    while i < len(argv):
        if argv[i] == "--extra" and i + 1 < len(argv):
            joined.append(f"--extra={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: 0 when every run succeeded, 1 when one failed or an option is wrong (one ``error:`` line)."""
    command = _join_extra(list(sys.argv[1:] if argv is None else argv)) or ["--help"]
    try:
        report = fire.Fire(
            {"ablation": ablation, "folds": folds, "compare": compare}, command=command, serialize=lambda _: None
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 1 if isinstance(report, ExperimentReport) and report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
