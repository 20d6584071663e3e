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

    python scripts/experiments.py ablation --dataset_dir data/isic2018 --out runs/ablation
    python scripts/experiments.py ablation --dataset_dir data/isic2018 --out runs/table7 \\
        --backbones resnet34,resnet50,resnet101 --losses bce,dice,focal,adaptexp --noise_std 0.1
    python scripts/experiments.py folds --dataset_dir data/ph2 --datalists "data/ph2/datalist_fold*.json"

A run whose evaluation report exists is reused, not redone (``--force`` redoes it); an interrupted training resumes
from its last checkpoint, which is deleted once the training has finished. A run folder made with other options is
refused rather than silently mixed into the table. A failing run is reported in one line naming its log, the other
runs go on, and the exit status is 1 at the end. Progress and failures go to stderr, the table to stdout.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fire

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python scripts/experiments.py`: make `bundle` importable
    sys.path.insert(0, str(REPO))

from bundle.data import load_datalist, loader_workers  # noqa: E402
from bundle.files import write_text_atomically  # noqa: E402
from bundle.losses import LOSS_NAMES  # noqa: E402
from bundle.networks.factory import NETWORK_NAMES  # noqa: E402
from bundle.networks.rfe_unet import BACKBONES  # noqa: E402

TRAIN_CONFIG = "configs/train.json"
EVALUATE_CONFIGS = "['configs/train.json','configs/evaluate.json']"
DEFAULT_LOSSES = ("bce", "dice", "focal", "exp", "adaptexp")  # Table 8's rows
RUN_RECORD = "run.json"
METRIC_KEYS = ("n_images", "mIoU", "mDice", "IoU_star", "Dice_star", "thresholded_jaccard", "HD95")
RESOLUTIONS = ("working", "original")
# Config keys the recipes set themselves; --extra may not override them.
RECIPE_KEYS = frozenset(
    {
        "bundle_root",
        "dataset_dir",
        "datalist",
        "network_name",
        "rfe",
        "backbone",
        "loss",
        "max_epochs",
        "image_size",
        "batch_size",
        "num_workers",
        "seed",
        "resume",
        "eval_dir",
        "eval_key",
        "noise_std",
        "ckpt_path",
        "save_overlays",
        "config_file",
        "meta_file",
        "logging_file",
    }
)
_LOG_TAIL_CHARS = 200
# The networks a comparison can name: label -> (network_name, rfe). "rfeunet-norfe" is Table 9's baseline.
NETWORKS: dict[str, tuple[str, bool]] = {
    "rfeunet": ("rfeunet", True),
    "rfeunet-norfe": ("rfeunet", False),
    **{name: (name, True) for name in NETWORK_NAMES if name != "rfeunet"},
}


# ------------------------------------------------------------------------------------------------ one configuration


@dataclass(frozen=True)
class RunSpec:
    """One configuration of the bundle: everything a training run and its evaluation are started with.

    ``num_workers`` changes the speed, not the result, so it is not part of :meth:`identity`.
    """

    name: str
    backbone: str
    loss: str
    dataset_dir: str
    datalist: str
    eval_key: str
    max_epochs: int
    image_size: int
    batch_size: int
    seed: int
    num_workers: int
    extra: tuple[str, ...] = ()
    network: str = "rfeunet"
    rfe: bool = True

    def identity(self) -> dict[str, Any]:
        """The options that decide the run's result; a run folder is reused only when they are unchanged."""
        record = asdict(self)
        del record["name"], record["num_workers"]
        record["extra"] = list(self.extra)
        return record

    def overrides(self, run_dir: Path) -> list[str]:
        """``python -m monai.bundle`` arguments shared by the training and the evaluation of this run."""
        args = [
            "--bundle_root",
            str(run_dir),
            "--dataset_dir",
            self.dataset_dir,
            "--backbone",
            self.backbone,
            "--loss",
            self.loss,
            "--max_epochs",
            str(self.max_epochs),
            "--image_size",
            str(self.image_size),
            "--batch_size",
            str(self.batch_size),
            "--seed",
            str(self.seed),
            "--num_workers",
            str(self.num_workers),
        ]
        if self.datalist:
            args += ["--datalist", self.datalist]
        args += ["--network_name", self.network, "--rfe", str(self.rfe).lower()]
        return args + list(self.extra)


@dataclass
class RunResult:
    """What became of one configuration.

    ``status`` is ``"trained"`` (trained and evaluated now), ``"evaluated"`` (training reused, an evaluation run
    now), ``"reused"`` (nothing run) or ``"failed"`` (``failure`` says why, in one line). ``metrics`` maps
    ``"clean"`` and, with noise, ``"noisy"`` to the evaluation's ``summary`` (``{"working": ..., "original": ...}``).
    """

    spec: RunSpec
    run_dir: Path
    status: str = "reused"
    train_seconds: float | None = None
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    failure: str | None = None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _evaluations(noise_std: float) -> list[tuple[str, str, float]]:
    """(kind, folder and log stem, noise σ) of each evaluation: the clean one, plus a noisy one when σ > 0."""
    return [("clean", "eval", 0.0)] + ([("noisy", f"eval_noise{noise_std:g}", noise_std)] if noise_std > 0 else [])


def _log_tail(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    tail = lines[-1] if lines else "no output"
    return tail if len(tail) <= _LOG_TAIL_CHARS else tail[: _LOG_TAIL_CHARS - 1] + "…"


def _run_bundle(args: list[str], log: Path) -> tuple[int, float]:
    """Run ``python -m monai.bundle <args>`` from the repository root, appending its output to ``log``."""
    command = [sys.executable, "-m", "monai.bundle", *args]
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} (cwd {REPO}): {shlex.join(command)}\n")
        out.flush()
        code = subprocess.run(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        ).returncode
    return code, time.perf_counter() - start


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def _changed_options(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(wanted))
    return [f"{k} {recorded.get(k)!r} (now {wanted.get(k)!r})" for k in keys if recorded.get(k) != wanted.get(k)]


def train_and_evaluate(
    spec: RunSpec, run_dir: str | os.PathLike, noise_std: float = 0.0, force: bool = False, prefix: str = ""
) -> RunResult:
    """
    Train one configuration in ``run_dir`` and evaluate its best checkpoint on ``spec.eval_key``, reusing what an
    earlier call left there.

    - An evaluation whose ``metrics.json`` exists is reused; when all are there, nothing runs.
    - A training recorded as finished in ``run.json`` is reused; an unfinished one resumes from its last checkpoint.
    - A ``run.json`` recorded with other options (see :meth:`RunSpec.identity`) fails the run, unless ``force``.
    - ``force`` deletes ``run_dir`` first.

    Args:
        spec: the configuration.
        run_dir: the run folder, the bundle's ``bundle_root``.
        noise_std: when > 0, a second evaluation adds Gaussian noise of this σ to the [0, 1] image (Table 10).
        force: redo the run from scratch.
        prefix: put before each progress line (stderr), e.g. ``"[2/5]"``.

    Returns:
        The :class:`RunResult`; failures are reported in it (and on stderr), never raised.
    """
    run_dir = Path(run_dir).resolve()
    result = RunResult(spec, run_dir)

    def say(text: str) -> None:
        _say(f"{prefix} {spec.name}: {text}".lstrip())

    def fail(text: str) -> RunResult:
        result.status, result.failure = "failed", f"FAILED {spec.name}: {text}"
        _say(result.failure)
        return result

    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / RUN_RECORD
    try:
        record = _read_json(record_path) if record_path.is_file() else {"options": spec.identity()}
    except ValueError as error:
        return fail(f"{error}; pass --force to redo the run.")
    changed = _changed_options(record.get("options", {}), spec.identity())
    if changed:
        return fail(f"{run_dir} was made with other options: {'; '.join(changed)}. Pass --force to redo it.")
    if not record_path.is_file():
        write_text_atomically(record_path, json.dumps(record, indent=2) + "\n")
    result.train_seconds = record.get("train_seconds")

    evaluations = _evaluations(noise_std)
    pending = [(stem, sigma) for _, stem, sigma in evaluations if not (run_dir / stem / "metrics.json").is_file()]
    if pending and result.train_seconds is not None:
        say("reusing the finished training")
    if pending and result.train_seconds is None:
        log = run_dir / "train.log"
        resume = any((run_dir / "models").glob("last_checkpoint_*.pt"))
        say(f"{'resuming' if resume else 'training'} ({spec.max_epochs} epochs), log {log}")
        args = ["run", "training", "--config_file", TRAIN_CONFIG, *spec.overrides(run_dir)]
        code, seconds = _run_bundle(args + (["--resume", "True"] if resume else []), log)
        if code != 0:
            return fail(f"training exited with status {code} ({_log_tail(log)}); log {log}")
        if not (run_dir / "models" / "model.pt").is_file():
            return fail(f"training finished without writing models/model.pt; log {log}")
        # The last checkpoint (optimizer state included) is 3x the best model and only serves to resume.
        for checkpoint in (run_dir / "models").glob("last_checkpoint_*.pt"):
            checkpoint.unlink()
        # A resumed training's time covers only the epochs run in this attempt.
        record.update(train_seconds=round(seconds, 1), resumed=resume)
        write_text_atomically(record_path, json.dumps(record, indent=2) + "\n")
        result.train_seconds, result.status = record["train_seconds"], "trained"
        say(f"trained in {format_duration(seconds)}")
    for stem, sigma in pending:
        log = run_dir / f"{stem}.log"
        say(f"evaluating on {spec.eval_key!r}{f' with noise σ={sigma:g}' if sigma else ''}, log {log}")
        args = [
            "run",
            "--config_file",
            EVALUATE_CONFIGS,
            *spec.overrides(run_dir),
            "--eval_key",
            spec.eval_key,
            "--eval_dir",
            str(run_dir / stem),
            "--noise_std",
            str(sigma),
            "--save_overlays",
            "False",
        ]
        code, _ = _run_bundle(args, log)
        if code != 0:
            return fail(f"evaluation exited with status {code} ({_log_tail(log)}); log {log}")
        if not (run_dir / stem / "metrics.json").is_file():
            return fail(f"evaluation wrote no {run_dir / stem / 'metrics.json'}; log {log}")
        result.status = "trained" if result.status == "trained" else "evaluated"
    for kind, stem, _ in evaluations:
        try:
            result.metrics[kind] = _read_json(run_dir / stem / "metrics.json")["summary"]
        except (ValueError, KeyError) as error:
            return fail(f"{run_dir / stem / 'metrics.json'} is not an evaluation report ({error}); pass --force.")
    if not pending:
        say(f"reused {run_dir / 'eval' / 'metrics.json'}")
    return result


def run_all(specs: Sequence[RunSpec], out: Path, noise_std: float, force: bool) -> list[RunResult]:
    """:func:`train_and_evaluate` each configuration in turn, in ``out/<name>``; one failure does not stop the rest."""
    return [
        train_and_evaluate(spec, out / spec.name, noise_std, force, prefix=f"[{i}/{len(specs)}]")
        for i, spec in enumerate(specs, 1)
    ]


# ------------------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` of the row, shown as ``kind`` (text, count, percent, pixels or duration)."""

    header: str
    key: str
    kind: str = "percent"


def format_duration(seconds: float | None) -> str:
    """Seconds as ``h:mm:ss``; None as ``n/a``."""
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _cell(row: dict[str, Any], column: Column, digits: int) -> str:
    value = row.get(column.key)
    if column.kind == "text":
        return str(value)
    if column.kind == "duration":
        return format_duration(value)
    number = _number(value)
    if number is None:
        return "failed" if row.get("status") == "failed" else "n/a"
    if column.kind == "count":
        return str(int(number))
    return f"{100 * number if column.kind == 'percent' else number:.{digits}f}"


def mean_and_sd(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1, like the paper's "St. Dev.") of the finite values; None when
    there are too few (none for the mean, fewer than two for the SD)."""
    numbers = [v for v in map(_number, values) if v is not None]
    mean = statistics.fmean(numbers) if numbers else None
    return mean, statistics.stdev(numbers) if len(numbers) >= 2 else None


def results_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[Column], digits: int = 2, mean_row: str | None = None
) -> str:
    """
    A markdown table with one line per row; percent columns show ``100 × value``.

    Args:
        rows: flat dicts (see :func:`result_row`).
        columns: what to show.
        digits: decimals of percent and pixel values.
        mean_row: when given, the label of a last line holding mean ± sample SD of each percent and pixel column.
    """
    lines = ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row, c, digits) for c in columns) + " |" for row in rows]
    if mean_row is not None:
        cells = []
        for column in columns:
            mean, sd = mean_and_sd(row.get(column.key) for row in rows)
            scale = 100 if column.kind == "percent" else 1
            if column.kind not in ("percent", "pixels"):
                cells.append(mean_row if column is columns[0] else "")
            elif mean is None:
                cells.append("n/a")
            else:
                cells.append(f"{scale * mean:.{digits}f} ± " + ("n/a" if sd is None else f"{scale * sd:.{digits}f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def result_row(result: RunResult, noisy: bool = False) -> dict[str, Any]:
    """A flat row: name, backbone, loss, status, train_seconds, ``<resolution>_<metric>`` (clean), with ``noisy``
    also ``noisy_<resolution>_<metric>``, then run_dir and failure. Metrics are fractions (IoU 0.85), HD95 in
    pixels; None where the run failed."""
    row: dict[str, Any] = {
        "name": result.spec.name,
        "network": network_label(result.spec.network, result.spec.rfe),
        "seed": result.spec.seed,
        "backbone": result.spec.backbone,
        "loss": result.spec.loss,
        "status": result.status,
        "train_seconds": result.train_seconds,
    }
    for kind, prefix in (("clean", ""), ("noisy", "noisy_"))[: 2 if noisy else 1]:
        summary = result.metrics.get(kind, {})
        for resolution in RESOLUTIONS:
            for key in METRIC_KEYS:
                row[f"{prefix}{resolution}_{key}"] = summary.get(resolution, {}).get(key)
    row.update(run_dir=str(result.run_dir), failure=result.failure)
    return row


def network_label(network: str, rfe: bool) -> str:
    """The :data:`NETWORKS` label of a (network_name, rfe) pair."""
    return next(label for label, value in NETWORKS.items() if value == (network, bool(rfe)))


def _epochs(max_epochs: int) -> str:
    return f"{max_epochs} epoch{'' if int(max_epochs) == 1 else 's'}"


def _noise_columns(noise_std: float) -> list[Column]:
    if noise_std <= 0:
        return []
    return [
        Column(f"mIoU (σ={noise_std:g})", "noisy_working_mIoU"),
        Column(f"mDice (σ={noise_std:g})", "noisy_working_mDice"),
    ]


@dataclass
class ExperimentReport:
    """The outcome of a recipe: each run's result, the markdown written to ``results.md``, and where it went."""

    results: list[RunResult]
    markdown: str
    out: Path

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if r.status == "failed"]


def _report(
    out: Path,
    results: list[RunResult],
    title: str,
    note: str,
    columns: Sequence[Column],
    options: dict[str, Any],
    digits: int = 2,
    mean_row: str | None = None,
) -> ExperimentReport:
    """Print the table to stdout, write ``results.md/.json/.csv`` in ``out``, list failures on stderr."""
    rows = [result_row(r, noisy=bool(options["noise_std"])) for r in results]
    note += " Training time: wall-clock of the training process."
    markdown = f"# {title}\n\n{results_table(rows, columns, digits, mean_row)}\n{note}\n"
    print(markdown, end="", flush=True)
    content: dict[str, Any] = {"title": title, "options": options, "rows": rows}
    if mean_row is not None:
        stats = {c.key: mean_and_sd(row.get(c.key) for row in rows) for c in columns if c.kind in ("percent", "pixels")}
        content["mean"] = {key: mean for key, (mean, _) in stats.items()}
        content["sd"] = {key: sd for key, (_, sd) in stats.items()}
    write_text_atomically(out / "results.md", markdown)
    write_text_atomically(out / "results.json", json.dumps(content, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(out / "results.csv", buffer.getvalue())
    report = ExperimentReport(results, markdown, out)
    _say(f"wrote {out / 'results.md'}, results.json, results.csv")
    if report.failed:
        _say(f"{len(report.failed)} of {len(results)} runs failed:")
        for failed in report.failed:
            _say(failed.failure or "")
    return report


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


# ------------------------------------------------------------------------------------------------------- commands


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
    common = {
        **_recipe(root, datalist_path, max_epochs, image_size, batch_size, num_workers, extra),
        "seed": int(seed),
    }
    specs = [
        RunSpec(
            name=f"{backbone}_{loss}" if label == "rfeunet" else f"{label}-{backbone}_{loss}",
            backbone=backbone,
            loss=loss,
            network=NETWORKS[label][0],
            rfe=NETWORKS[label][1],
            **common,
        )
        for label in network_labels
        for backbone in backbone_names
        for loss in loss_names
    ]
    out_dir = Path(str(out)).expanduser().resolve()
    results = run_all(specs, out_dir, float(noise_std), bool(force))
    columns = [
        *([Column("Network", "network", "text")] if network_labels != ["rfeunet"] else []),
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
        *_noise_columns(float(noise_std)),
        Column("Training time", "train_seconds", "duration"),
    ]
    title = (
        f"Loss ablation: RFE U-Net on {root} ({Path(datalist_path).name if datalist_path else 'default datalist'}, "
        f"test split), {_epochs(max_epochs)}, {image_size}×{image_size}, batch {batch_size}, seed {seed}"
    )
    options = {
        **{k: v for k, v in common.items() if k != "extra"},
        "extra": list(common["extra"]),
        "losses": loss_names,
        "backbones": backbone_names,
        "networks": network_labels,
        "noise_std": float(noise_std),
    }
    note = (
        "mIoU to HD95 at the working resolution (image_size × image_size), then mIoU and mDice at each "
        "photograph's own size"
        + (" and, with noise, at the working resolution" if noise_std > 0 else "")
        + "; overlap scores in %, HD95 in pixels."
    )
    return _report(out_dir, results, title, note, columns, options)


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
    common = {
        "backbone": backbone_name,
        "loss": loss_name,
        "eval_key": str(eval_key),
        "max_epochs": int(max_epochs),
        "image_size": int(image_size),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "num_workers": _workers(num_workers),
        "extra": _extra_args(extra),
    }
    splits = tuple(dict.fromkeys(("training", "validation", str(eval_key))))
    specs = []
    for path in files:
        root, datalist_path = _dataset(dataset_dir, str(path), splits)
        specs.append(RunSpec(name=path.stem, dataset_dir=root, datalist=datalist_path, **common))
    out_dir = Path(str(out)).expanduser().resolve()
    results = run_all(specs, out_dir, float(noise_std), bool(force))
    columns = [
        Column("Fold", "name", "text"),
        Column("n", "working_n_images", "count"),
        Column("mIoU", "working_mIoU"),
        Column("mDice", "working_mDice"),
        Column("mIoU (original)", "original_mIoU"),
        Column("mDice (original)", "original_mDice"),
        *_noise_columns(float(noise_std)),
        Column("Training time", "train_seconds", "duration"),
    ]
    title = (
        f"{len(specs)}-fold cross-validation: RFE U-Net ({backbone_name}, {loss_name}) on {specs[0].dataset_dir} "
        f"({eval_key!r} split of each fold), {_epochs(max_epochs)}, {image_size}×{image_size}, batch {batch_size}, "
        f"seed {seed}"
    )
    options = {
        **{k: v for k, v in common.items() if k != "extra"},
        "extra": list(common["extra"]),
        "dataset_dir": specs[0].dataset_dir,
        "datalists": [s.datalist for s in specs],
        "noise_std": float(noise_std),
    }
    note = (
        "mIoU and mDice in % on each fold's held-out images, at the working resolution (image_size × image_size)"
        " and at each photograph's own size; Mean ± SD: over the folds, sample SD (n − 1)."
    )
    return _report(out_dir, results, title, note, columns, options, digits=3, mean_row="Mean ± SD")


def _seeds(value: int | str | Sequence[int]) -> list[int]:
    items = [value] if isinstance(value, int) else value.split(",") if isinstance(value, str) else list(value)
    try:
        seeds = list(dict.fromkeys(int(str(item).strip()) for item in items if str(item).strip()))
    except ValueError:
        raise ValueError(f"seeds must be integers, e.g. 0,1,2; got {value!r}.") from None
    if not seeds:
        raise ValueError("no seed given, e.g. --seeds 0,1,2.")
    return seeds


def _per_image(result: RunResult, resolution: str, metric: str) -> dict[str, float]:
    """Image name -> ``metric`` (``iou``/``dice``) of the run's clean evaluation at ``resolution``."""
    report = _read_json(result.run_dir / "eval" / "metrics.json")
    return {row["name"]: float(row[metric]) for row in report["per_image"][resolution]}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired comparison of per-image scores ``a`` and ``b`` (same images, same order): mean of a − b, its 95%
    confidence interval (Student t), the Wilcoxon signed-rank p-value (two-sided), and how many images are better
    and worse in ``a``."""
    from scipy import stats

    diff = [x - y for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(diff)
    half = 0.0
    if len(diff) > 1 and statistics.stdev(diff) > 0:
        half = float(stats.t.ppf(0.975, len(diff) - 1)) * statistics.stdev(diff) / math.sqrt(len(diff))
    nonzero = [d for d in diff if d != 0]
    p_value = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) >= 2 else 1.0
    return {
        "n_images": len(diff),
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "wilcoxon_p": p_value,
        "better": sum(d > 0 for d in diff),
        "worse": sum(d < 0 for d in diff),
    }


def _group_rows(results: Sequence[RunResult], resolution: str) -> list[dict[str, Any]]:
    """One row per (network, loss): the seeds' mean ± SD of each metric, and the runs behind it."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        groups.setdefault((network_label(result.spec.network, result.spec.rfe), result.spec.loss), []).append(result)
    rows = []
    for (label, loss), members in groups.items():
        done = [m for m in members if m.status != "failed"]
        row: dict[str, Any] = {
            "network": label,
            "loss": loss,
            "backbone": members[0].spec.backbone,
            "seeds": [m.spec.seed for m in done],
            "n_failed": len(members) - len(done),
        }
        for res in RESOLUTIONS:
            for key in METRIC_KEYS[1:]:
                mean, sd = mean_and_sd(m.metrics["clean"][res].get(key) for m in done)
                row[f"{res}_{key}"], row[f"{res}_{key}_sd"] = mean, sd
        row["train_seconds"], _ = mean_and_sd(m.train_seconds for m in done)
        row["runs"] = done
        rows.append(row)
    rows.sort(key=lambda r: -(r[f"{resolution}_mIoU"] if r[f"{resolution}_mIoU"] is not None else -1.0))
    return rows


def _mean_sd_cell(row: dict[str, Any], key: str, percent: bool = True) -> str:
    mean, sd = row.get(key), row.get(f"{key}_sd")
    if mean is None:
        return "failed"
    scale = 100.0 if percent else 1.0
    return f"{scale * mean:.2f} ± {'n/a' if sd is None else f'{scale * sd:.2f}'}"


def _seed_averaged(row: dict[str, Any], resolution: str) -> dict[str, float]:
    """Image name -> IoU averaged over the row's seeds (the images every seed scored)."""
    per_seed = [_per_image(run, resolution, "iou") for run in row["runs"]]
    names = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    return {name: statistics.fmean(p[name] for p in per_seed) for name in names}


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
    specs = []
    for seed in seed_list:  # seed-major, so that a partial run already covers every configuration once
        for label in network_labels:
            for loss in loss_names:
                encoder = "" if label == "basicunet" else f"-{backbone_name}"
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
    out_dir = Path(str(out)).expanduser().resolve()
    results = run_all(specs, out_dir, 0.0, bool(force))
    groups = _group_rows(results, resolution)
    metric_columns = [
        ("mIoU", "mIoU"),
        ("mDice", "mDice"),
        ("mIoU*", "IoU_star"),
        ("mDice*", "Dice_star"),
        ("TJ", "thresholded_jaccard"),
    ]
    headers = (
        ["Network", "Loss", "Seeds"]
        + [f"{h} ({resolution})" for h, _ in metric_columns]
        + [
            f"HD95 px ({resolution})",
            "mIoU (working)" if resolution == "original" else "mIoU (original)",
            "Training time",
        ]
    )
    other = "working" if resolution == "original" else "original"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in groups:
        cells = [
            row["network"],
            row["loss"],
            str(len(row["seeds"])) + (f" ({row['n_failed']} failed)" if row["n_failed"] else ""),
        ]
        cells += [_mean_sd_cell(row, f"{resolution}_{key}") for _, key in metric_columns]
        cells += [
            _mean_sd_cell(row, f"{resolution}_HD95", percent=False),
            _mean_sd_cell(row, f"{other}_mIoU"),
            format_duration(row["train_seconds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    paired: list[dict[str, Any]] = []
    scored = [row for row in groups if row["runs"]]
    if len(scored) > 1:
        best = _seed_averaged(scored[0], resolution)
        lines += [
            "",
            f"Paired per-image IoU differences ({resolution} size) against the best row, "
            f"{scored[0]['network']} + {scored[0]['loss']} (IoU averaged over seeds per image; "
            "negative = worse than the best):",
            "",
            "| Network | Loss | mean ΔIoU (pp) | 95% CI (pp) | Wilcoxon p | images better / worse |",
            "|---|---|---|---|---|---|",
        ]
        for row in scored[1:]:
            scores = _seed_averaged(row, resolution)
            names = sorted(set(best) & set(scores))
            d = paired_difference([scores[n] for n in names], [best[n] for n in names])
            paired.append({"network": row["network"], "loss": row["loss"], **d})
            lines.append(
                f"| {row['network']} | {row['loss']} | {100 * d['mean']:+.2f} | "
                f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}] | {d['wilcoxon_p']:.3g} | "
                f"{d['better']} / {d['worse']} |"
            )
    title = (
        f"Comparison on {root} ({Path(datalist_path).name if datalist_path else 'default datalist'}, test split): "
        f"{backbone_name} encoders, {_epochs(max_epochs)}, {image_size}×{image_size}, batch {batch_size}, "
        f"seeds {', '.join(map(str, seed_list))}"
    )
    note = (
        f"Mean ± sample SD (n − 1) over the seeds; overlap scores in %, HD95 in pixels, at the {resolution} size"
        f"{' (each photo as stored)' if resolution == 'original' else ''}; training time: mean wall-clock per run."
    )
    markdown = f"# {title}\n\n" + "\n".join(lines) + f"\n\n{note}\n"
    print(markdown, end="", flush=True)
    options = {
        **{k: v for k, v in common.items() if k != "extra"},
        "extra": list(common["extra"]),
        "networks": network_labels,
        "losses": loss_names,
        "seeds": seed_list,
        "resolution": resolution,
    }
    summary_rows = [{k: v for k, v in row.items() if k != "runs"} for row in groups]
    run_rows = [result_row(r) for r in results]
    content = {"title": title, "options": options, "groups": summary_rows, "paired": paired, "runs": run_rows}
    stem = str(report)
    write_text_atomically(out_dir / f"{stem}.md", markdown)
    write_text_atomically(out_dir / f"{stem}.json", json.dumps(content, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(run_rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(run_rows)
    write_text_atomically(out_dir / f"{stem}.csv", buffer.getvalue())
    outcome = ExperimentReport(results, markdown, out_dir)
    _say(f"wrote {out_dir / stem}.md, .json, .csv")
    for failed in outcome.failed:
        _say(failed.failure or "")
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
