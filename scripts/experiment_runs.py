"""One configuration of the bundle, trained and evaluated in its own run folder: what ``scripts/experiments.py``'s
recipes (and ``scripts/recipes.py``) run, each in a ``python -m monai.bundle`` process started from the repository
root, reusing what an earlier call left in the folder (see ``scripts/experiments.py`` for the folder's files).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bundle.files import write_text_atomically
from bundle.networks.registry import NETWORK_NAMES

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = "configs/train.json"
EVALUATE_CONFIGS = "['configs/train.json','configs/evaluate.json']"
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


def format_duration(seconds: float | None) -> str:
    """Seconds as ``h:mm:ss``; None as ``n/a``."""
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _run_record(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """The run folder's ``run.json`` (written now for a new folder).

    Raises:
        ValueError: it cannot be read, or records other options than ``spec``'s (one line, suggesting --force).
    """
    record_path = run_dir / RUN_RECORD
    try:
        record = _read_json(record_path) if record_path.is_file() else {"options": spec.identity()}
    except ValueError as error:
        raise ValueError(f"{error}; pass --force to redo the run.") from None
    changed = _changed_options(record.get("options", {}), spec.identity())
    if changed:
        raise ValueError(f"{run_dir} was made with other options: {'; '.join(changed)}. Pass --force to redo it.")
    if not record_path.is_file():
        write_text_atomically(record_path, json.dumps(record, indent=2) + "\n")
    return record


def _train(spec: RunSpec, run_dir: Path, record: dict[str, Any], say) -> float:
    """Train (or resume) the configuration in ``run_dir``; record and return its seconds.

    Raises:
        RuntimeError: the training failed or wrote no model (one line naming its log).
    """
    log = run_dir / "train.log"
    resume = any((run_dir / "models").glob("last_checkpoint_*.pt"))
    say(f"{'resuming' if resume else 'training'} ({spec.max_epochs} epochs), log {log}")
    args = ["run", "training", "--config_file", TRAIN_CONFIG, *spec.overrides(run_dir)]
    code, seconds = _run_bundle(args + (["--resume", "True"] if resume else []), log)
    if code != 0:
        raise RuntimeError(f"training exited with status {code} ({_log_tail(log)}); log {log}")
    if not (run_dir / "models" / "model.pt").is_file():
        raise RuntimeError(f"training finished without writing models/model.pt; log {log}")
    # The last checkpoint (optimizer state included) is 3x the best model and only serves to resume.
    for checkpoint in (run_dir / "models").glob("last_checkpoint_*.pt"):
        checkpoint.unlink()
    # A resumed training's time covers only the epochs run in this attempt.
    record.update(train_seconds=round(seconds, 1), resumed=resume)
    write_text_atomically(run_dir / RUN_RECORD, json.dumps(record, indent=2) + "\n")
    say(f"trained in {format_duration(seconds)}")
    return record["train_seconds"]


def _evaluate(spec: RunSpec, run_dir: Path, stem: str, sigma: float, say) -> None:
    """Evaluate the run's best checkpoint on ``spec.eval_key`` into ``run_dir/stem`` (noise σ ``sigma``).

    Raises:
        RuntimeError: the evaluation failed or wrote no report (one line naming its log).
    """
    log = run_dir / f"{stem}.log"
    say(f"evaluating on {spec.eval_key!r}{f' with noise σ={sigma:g}' if sigma else ''}, log {log}")
    args = [
        *("run", "--config_file", EVALUATE_CONFIGS, *spec.overrides(run_dir), "--eval_key", spec.eval_key),
        *("--eval_dir", str(run_dir / stem), "--noise_std", str(sigma), "--save_overlays", "False"),
    ]
    code, _ = _run_bundle(args, log)
    if code != 0:
        raise RuntimeError(f"evaluation exited with status {code} ({_log_tail(log)}); log {log}")
    if not (run_dir / stem / "metrics.json").is_file():
        raise RuntimeError(f"evaluation wrote no {run_dir / stem / 'metrics.json'}; log {log}")


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

    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    evaluations = _evaluations(noise_std)
    pending = [(stem, sigma) for _, stem, sigma in evaluations if not (run_dir / stem / "metrics.json").is_file()]
    try:
        record = _run_record(spec, run_dir)
        result.train_seconds = record.get("train_seconds")
        if pending and result.train_seconds is not None:
            say("reusing the finished training")
        if pending and result.train_seconds is None:
            result.train_seconds, result.status = _train(spec, run_dir, record, say), "trained"
        for stem, sigma in pending:
            _evaluate(spec, run_dir, stem, sigma, say)
            result.status = "trained" if result.status == "trained" else "evaluated"
        for kind, stem, _ in evaluations:
            report = run_dir / stem / "metrics.json"
            try:
                result.metrics[kind] = _read_json(report)["summary"]
            except (ValueError, KeyError) as error:
                raise ValueError(f"{report} is not an evaluation report ({error}); pass --force.") from None
    except (ValueError, RuntimeError) as error:
        result.status, result.failure = "failed", f"FAILED {spec.name}: {error}"
        _say(result.failure)
        return result
    if not pending:
        say(f"reused {run_dir / 'eval' / 'metrics.json'}")
    return result


def run_all(specs: Sequence[RunSpec], out: Path, noise_std: float, force: bool) -> list[RunResult]:
    """:func:`train_and_evaluate` each configuration in turn, in ``out/<name>``; one failure does not stop the rest."""
    return [
        train_and_evaluate(spec, out / spec.name, noise_std, force, prefix=f"[{i}/{len(specs)}]")
        for i, spec in enumerate(specs, 1)
    ]


def _per_image(result: RunResult, resolution: str, metric: str) -> dict[str, float]:
    """Image name -> ``metric`` (``iou``/``dice``) of the run's clean evaluation at ``resolution``."""
    report = _read_json(result.run_dir / "eval" / "metrics.json")
    return {row["name"]: float(row[metric]) for row in report["per_image"][resolution]}
