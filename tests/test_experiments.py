"""scripts/experiments.py: the ablation, comparison and cross-validation recipes end to end on the embedded sample
(real bundle processes), and their tables, reuse, failure reports and input checks."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.data import kfold, load_datalist, write_datalist
from scripts.experiments import (
    DEFAULT_LOSSES,
    Column,
    _extra_args,
    _join_extra,
    ablation,
    fold_datalists,
    folds,
    main,
    mean_and_sd,
    paired_difference,
    results_table,
)

from .conftest import REPO

SAMPLE = REPO / "sample_data"
FAST = ("--max_epochs", "1", "--image_size", "64", "--num_workers", "0")


def run_experiments(*args: str, cwd: Path = REPO, module: bool = False) -> subprocess.CompletedProcess:
    """``python -m scripts.experiments <args>`` in a real process, from ``cwd`` (from another folder than the
    repository's root, with the root on PYTHONPATH; ``module`` is kept for the callers that name the form)."""
    entry = ["-m", "scripts.experiments"]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, *entry, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"},
    )


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of the markdown table's body lines (header and rule left out)."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def percent(value: float, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}"


def first_train_loss(log: Path) -> float:
    return float(re.search(r"train_loss: ([0-9.]+)", log.read_text()).group(1))


# ------------------------------------------------------------------------------------------------------ ablation


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    """The five-loss ablation on the sample, started from a foreign folder with a relative --out."""
    cwd = tmp_path_factory.mktemp("user_cwd")
    proc = run_experiments(
        "ablation",
        "--dataset_dir",
        str(SAMPLE),
        "--out",
        "ablation",
        "--backbones",
        "resnet34",
        "--losses",
        ",".join(DEFAULT_LOSSES),
        *FAST,
        cwd=cwd,
    )
    out = cwd / "ablation"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_ablation_prints_one_table_with_a_row_per_loss(ablation_run):
    proc, out, results = ablation_run
    assert proc.stdout.count("| Backbone | Loss |") == 1
    rows = table_rows(proc.stdout)
    assert [(row[0], row[1]) for row in rows] == [("resnet34", loss) for loss in DEFAULT_LOSSES]
    assert (out / "results.md").read_text() == proc.stdout
    assert [row["name"] for row in results["rows"]] == [f"resnet34_{loss}" for loss in DEFAULT_LOSSES]
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(DEFAULT_LOSSES)
    for row, cells in zip(results["rows"], rows, strict=True):
        assert row["status"] == "trained" and row["failure"] is None
        report = json.loads((out / row["name"] / "eval" / "metrics.json").read_text())
        working, original = report["summary"]["working"], report["summary"]["original"]
        assert working["n_images"] == 4  # the sample's test split
        assert cells[2:10] == [
            percent(working["mIoU"]),
            percent(working["mDice"]),
            percent(working["IoU_star"]),
            percent(working["Dice_star"]),
            percent(working["thresholded_jaccard"]),
            f"{working['HD95']:.2f}",
            percent(original["mIoU"]),
            percent(original["mDice"]),
        ]
        assert row["working_mDice"] == working["mDice"] and 0 <= row["working_mDice"] <= 1
        assert row["train_seconds"] > 0 and re.fullmatch(r"\d+:\d\d:\d\d", cells[-1])
        assert (out / row["name"] / "train.log").is_file() and (out / row["name"] / "eval.log").is_file()
        assert (out / row["name"] / "models" / "model.pt").is_file()
        assert not list((out / row["name"] / "models").glob("last_checkpoint_*.pt"))
    # each run really trained with its own loss
    losses = [first_train_loss(out / row["name"] / "train.log") for row in results["rows"]]
    assert len(set(losses)) == len(losses)


@pytest.mark.slow
def test_rerunning_the_ablation_reuses_every_run(ablation_run):
    proc, out, _ = ablation_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()}
    again = run_experiments(
        "ablation",
        "--dataset_dir",
        str(SAMPLE),
        "--out",
        str(out),
        "--backbones",
        "resnet34",
        "--losses",
        ",".join(DEFAULT_LOSSES),
        *FAST,
        module=True,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count(": reused") == len(DEFAULT_LOSSES)
    assert "training (" not in again.stderr and "evaluating" not in again.stderr
    assert table_rows(again.stdout) == table_rows(proc.stdout)  # training times come from run.json
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()} == before
    assert {row["status"] for row in json.loads((out / "results.json").read_text())["rows"]} == {"reused"}


@pytest.mark.slow
def test_noise_adds_an_evaluation_without_retraining(ablation_run, tmp_path):
    _, out, _ = ablation_run
    shutil.copytree(out / "resnet34_adaptexp", tmp_path / "resnet34_adaptexp")
    proc = run_experiments(
        "ablation",
        "--dataset_dir",
        str(SAMPLE),
        "--out",
        str(tmp_path),
        "--backbones",
        "resnet34",
        "--losses",
        "adaptexp",
        "--noise_std",
        "0.5",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reusing the finished training" in proc.stderr and "training (" not in proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| Backbone"))
    assert "mIoU (σ=0.5)" in header and "mDice (σ=0.5)" in header
    report = json.loads((tmp_path / "resnet34_adaptexp" / "eval_noise0.5" / "metrics.json").read_text())
    assert report["noise_std"] == 0.5
    (row,) = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert row["noisy_working_mIoU"] == report["summary"]["working"]["mIoU"]
    assert (tmp_path / "resnet34_adaptexp" / "eval_noise0.5.log").is_file()


@pytest.mark.slow
def test_a_failing_run_is_reported_and_the_others_go_on(ablation_run, tmp_path):
    _, out, _ = ablation_run
    shutil.copytree(out / "resnet34_bce", tmp_path / "resnet34_bce", ignore=shutil.ignore_patterns("*.pt"))
    broken = tmp_path / "resnet34_dice"
    (broken / "models").mkdir(parents=True)
    shutil.copy(out / "resnet34_dice" / "run.json", broken / "run.json")  # training recorded as finished
    (broken / "models" / "model.pt").write_bytes(b"not a checkpoint")
    proc = run_experiments(
        "ablation",
        "--dataset_dir",
        str(SAMPLE),
        "--out",
        str(tmp_path),
        "--backbones",
        "resnet34",
        "--losses",
        "dice,bce",
        *FAST,
    )
    assert proc.returncode == 1
    failures = [line for line in proc.stderr.splitlines() if line.startswith("FAILED resnet34_dice")]
    assert failures and f"log {broken / 'eval.log'}" in failures[0]
    assert "resnet34_bce: reused" in proc.stderr
    rows = table_rows(proc.stdout)
    assert rows[0][:3] == ["resnet34", "dice", "failed"] and rows[1][2] != "failed"


@pytest.mark.slow
def test_a_run_made_with_other_options_is_refused(ablation_run, tmp_path):
    _, out, _ = ablation_run
    shutil.copytree(out / "resnet34_bce", tmp_path / "resnet34_bce", ignore=shutil.ignore_patterns("*.pt"))
    metrics = tmp_path / "resnet34_bce" / "eval" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    proc = run_experiments(
        "ablation",
        "--dataset_dir",
        str(SAMPLE),
        "--out",
        str(tmp_path),
        "--backbones",
        "resnet34",
        "--losses",
        "bce",
        "--max_epochs",
        "2",
        "--image_size",
        "64",
        "--num_workers",
        "0",
    )
    assert proc.returncode == 1
    assert "max_epochs 1 (now 2)" in proc.stderr and "--force" in proc.stderr
    assert metrics.stat().st_mtime_ns == stamp and "training (" not in proc.stderr


# --------------------------------------------------------------------------------------------------------- folds


@pytest.mark.slow
def test_folds_give_a_per_fold_table_with_mean_and_sample_sd(tmp_path):
    items = [item for key in ("training", "validation", "test") for item in load_datalist(SAMPLE, key=key)]
    for i, (training, held_out) in enumerate(kfold(items, k=3, seed=0)):
        fold = {"training": training, "validation": held_out, "test": held_out}  # as prepare_data --folds writes
        write_datalist(tmp_path / f"datalist_fold{i}.json", fold, SAMPLE)
    out = tmp_path / "folds"
    proc = run_experiments(
        "folds",
        "--dataset_dir",
        str(SAMPLE),
        "--datalists",
        str(tmp_path / "datalist_fold*.json"),
        "--out",
        str(out),
        "--backbone",
        "resnet34",
        "--eval_key",
        "validation",
        *FAST,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table_rows(proc.stdout)
    assert [row[0] for row in rows] == ["datalist_fold0", "datalist_fold1", "datalist_fold2", "Mean ± SD"]
    assert [row[1] for row in rows[:3]] == ["8", "8", "8"]
    per_fold = [json.loads((out / f"datalist_fold{i}" / "eval" / "metrics.json").read_text()) for i in range(3)]
    results = json.loads((out / "results.json").read_text())
    for column, key in ((2, "mIoU"), (3, "mDice")):
        values = [report["summary"]["working"][key] for report in per_fold]
        mean, sd = statistics.mean(values), statistics.stdev(values)
        assert results["mean"][f"working_{key}"] == pytest.approx(mean)
        assert results["sd"][f"working_{key}"] == pytest.approx(sd)
        assert rows[3][column] == f"{percent(mean, 3)} ± {percent(sd, 3)}"
    assert json.loads((out / "datalist_fold1" / "run.json").read_text())["options"]["eval_key"] == "validation"


# ------------------------------------------------------------------------------------------ tables, options, input


def test_mean_and_sample_sd_reproduce_table_11():
    miou = [93.099, 93.118, 93.138, 93.149, 93.162]
    mdice = [95.724, 96.182, 95.683, 96.215, 96.303]
    # The paper's St. Dev. row is the sample SD (the population SD would be 0.022 and 0.263); its fold values are
    # rounded, so the last digit may differ.
    assert mean_and_sd(miou) == (pytest.approx(93.133, abs=1e-3), pytest.approx(0.025, abs=1e-3))
    assert mean_and_sd(mdice) == (pytest.approx(96.021, abs=1e-3), pytest.approx(0.293, abs=1e-3))
    assert mean_and_sd([0.5, float("nan")]) == (0.5, None)


def test_results_table_marks_failed_runs_and_adds_the_mean_row():
    rows = [
        {"name": "a", "status": "trained", "iou": 0.80, "hd": 3.0, "seconds": 3725},
        {"name": "b", "status": "trained", "iou": 0.90, "hd": 5.0, "seconds": 10},
        {"name": "c", "status": "failed", "iou": None, "hd": None, "seconds": None},
    ]
    columns = [
        Column("Run", "name", "text"),
        Column("IoU", "iou"),
        Column("HD95", "hd", "pixels"),
        Column("Time", "seconds", "duration"),
    ]
    lines = results_table(rows, columns, digits=1, mean_row="Mean ± SD").splitlines()
    assert lines[2] == "| a | 80.0 | 3.0 | 1:02:05 |"
    assert lines[4] == "| c | failed | failed | n/a |"
    assert lines[5] == f"| Mean ± SD | 85.0 ± {100 * math.sqrt(0.005):.1f} | 4.0 ± {math.sqrt(2):.1f} |  |"


def test_fold_datalists_are_sorted_naturally_and_checked(tmp_path):
    for i in (0, 2, 10):
        (tmp_path / f"datalist_fold{i}.json").write_text("{}")
    names = [p.name for p in fold_datalists(str(tmp_path / "datalist_fold*.json"))]
    assert names == ["datalist_fold0.json", "datalist_fold2.json", "datalist_fold10.json"]
    with pytest.raises(ValueError, match="no fold datalist file matches"):
        fold_datalists(str(tmp_path / "missing_*.json"))
    with pytest.raises(ValueError, match="at least 2"):
        fold_datalists(str(tmp_path / "datalist_fold10.json"))


def test_extra_overrides_are_split_and_may_not_replace_recipe_options():
    assert _extra_args("--learning_rate 0.001 --poly_power 1.0") == ("--learning_rate", "0.001", "--poly_power", "1.0")
    with pytest.raises(ValueError, match="--loss"):
        _extra_args("--loss dice")
    assert _join_extra(["ablation", "--extra", "--learning_rate 0.01", "--force"]) == [
        "ablation",
        "--extra=--learning_rate 0.01",
        "--force",
    ]


def test_recipe_defaults_are_the_training_config_defaults(tmp_path):
    config = json.loads((REPO / "configs" / "train.json").read_text())
    # the network options are computed (a resumed or fine-tuned training takes the checkpoint's): their defaults
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.json"))
    parser["bundle_root"] = str(tmp_path)
    settings = parser.get_parsed_content("network_settings")
    config.update(image_size=settings["image_size"], backbone=settings["backbone"])
    for recipe in (ablation, folds):
        defaults = {name: p.default for name, p in inspect.signature(recipe).parameters.items()}
        for key in ("max_epochs", "image_size", "batch_size", "seed"):
            assert defaults[key] == config[key], (recipe.__name__, key)
        # None: the bundle's own machine-sized default, the expression train.json uses
        assert defaults["num_workers"] is None and config["num_workers"] == {"_target_": "bundle.data.loader_workers"}
    assert inspect.signature(folds).parameters["loss"].default == config["loss"]
    assert inspect.signature(folds).parameters["backbone"].default == config["backbone"]


def test_bad_input_is_one_error_line_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["ablation", "--dataset_dir", str(SAMPLE), "--losses", "bce,hinge", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown loss 'hinge'; choose from ") and err.count("\n") == 1
    assert main(["ablation", "--dataset_dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    assert f"dataset_dir {tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err
    assert main(["ablation", "--dataset_dir", str(SAMPLE), "--datalist", "missing.json", "--out", str(out)]) == 1
    assert f"datalist file {SAMPLE / 'missing.json'} does not exist" in capsys.readouterr().err
    assert main(["ablation", "--dataset_dir", str(SAMPLE), "--image_size", "100", "--out", str(out)]) == 1
    assert "multiple of 32" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    """Two networks (one a stock MONAI peer) x one loss x two seeds on the sample."""
    out = tmp_path_factory.mktemp("compare")
    proc = run_experiments(
        "compare",
        "--dataset_dir",
        str(SAMPLE),
        "--out",
        str(out),
        "--networks",
        "rfeunet,basicunet",
        "--losses",
        "adaptlog",
        "--seeds",
        "0,1",
        "--report",
        "networks",
        *FAST,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out, json.loads((out / "networks.json").read_text())


def per_image_iou(run_dir: Path) -> dict[str, float]:
    report = json.loads((run_dir / "eval" / "metrics.json").read_text())
    return {row["name"]: row["iou"] for row in report["per_image"]["original"]}


@pytest.mark.slow
def test_compare_reports_mean_and_sd_over_seeds_per_configuration(compare_run):
    proc, out, results = compare_run
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == [
        "basicunet_adaptlog_seed0",
        "basicunet_adaptlog_seed1",
        "rfeunet-resnet34_adaptlog_seed0",
        "rfeunet-resnet34_adaptlog_seed1",
    ]
    # each run trained the network it names: the recorded options and the network's own log differ
    options = {n: json.loads((out / n / "run.json").read_text())["options"] for n in names}
    assert {o["network"] for o in options.values()} == {"rfeunet", "basicunet"}
    assert {o["seed"] for o in options.values()} == {0, 1}
    assert (out / "networks.md").read_text().startswith("# Comparison on ")
    rows = table_rows(proc.stdout)
    groups = {(g["network"], g["loss"]): g for g in results["groups"]}
    assert set(groups) == {("rfeunet", "adaptlog"), ("basicunet", "adaptlog")}
    for (network, loss), group in groups.items():
        runs = [n for n in names if n.startswith(network + ("-" if network == "rfeunet" else "_"))]
        values = [
            json.loads((out / n / "eval" / "metrics.json").read_text())["summary"]["original"]["mIoU"] for n in runs
        ]
        assert group["original_mIoU"] == pytest.approx(statistics.mean(values))
        assert group["original_mIoU_sd"] == pytest.approx(statistics.stdev(values))
        row = next(r for r in rows if r[:2] == [network, loss])
        assert row[2] == "2"
        assert row[3] == f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"
    # rows are ranked by mIoU at the photos' own size
    ranked = [g["original_mIoU"] for g in results["groups"]]
    assert ranked == sorted(ranked, reverse=True)


@pytest.mark.slow
def test_compare_pairs_per_image_differences_against_the_best_row(compare_run):
    _, out, results = compare_run
    best, other = results["groups"]
    prefix = {"rfeunet": "rfeunet-resnet34", "basicunet": "basicunet"}

    def seed_mean(network: str) -> dict[str, float]:
        seeds = [per_image_iou(out / f"{prefix[network]}_adaptlog_seed{s}") for s in (0, 1)]
        return {name: (seeds[0][name] + seeds[1][name]) / 2 for name in seeds[0]}

    a, b = seed_mean(other["network"]), seed_mean(best["network"])
    diffs = [a[name] - b[name] for name in sorted(a)]
    (paired,) = results["paired"]
    assert (paired["network"], paired["loss"]) == (other["network"], "adaptlog")
    assert paired["n_images"] == len(diffs) == 4
    assert paired["mean"] == pytest.approx(statistics.mean(diffs))
    assert paired["better"] == sum(d > 0 for d in diffs) and paired["worse"] == sum(d < 0 for d in diffs)
    assert paired["ci_low"] <= paired["mean"] <= paired["ci_high"]


@pytest.mark.slow
def test_a_second_comparison_in_the_same_folder_reuses_the_shared_runs(compare_run):
    _, out, _ = compare_run
    proc = run_experiments(
        "compare",
        "--dataset_dir",
        str(SAMPLE),
        "--out",
        str(out),
        "--networks",
        "rfeunet",
        "--losses",
        "adaptlog",
        "--seeds",
        "0,1",
        "--report",
        "losses",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(": reused") == 2 and "training (" not in proc.stderr
    assert (out / "losses.md").is_file() and (out / "networks.md").is_file()
    assert json.loads((out / "losses.json").read_text())["paired"] == []


def test_paired_difference_matches_a_hand_computation():
    a, b = [0.9, 0.8, 0.7, 0.6, 0.95], [0.85, 0.82, 0.6, 0.5, 0.95]
    result = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=False)]
    mean = statistics.mean(diffs)
    # t(0.975, 4) = 2.776445105...
    half = 2.7764451051977987 * statistics.stdev(diffs) / math.sqrt(5)
    assert result["mean"] == pytest.approx(mean)
    assert (result["ci_low"], result["ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert (result["better"], result["worse"], result["n_images"]) == (3, 1, 5)
    # the zero difference is left out of the signed-rank test: ranks of |d| 0.02, 0.05, 0.1, 0.1 -> W- = 1
    assert 0.1 < result["wilcoxon_p"] < 1  # four differences can never be significant at 5 %


def test_compare_rejects_unknown_networks_and_bad_seeds(capsys):
    assert main(["compare", "--dataset_dir", str(SAMPLE), "--networks", "unetr"]) == 1
    assert (
        "unknown network 'unetr'; choose from rfeunet, rfeunet-norfe, flexibleunet, basicunet"
        in capsys.readouterr().err
    )
    assert main(["compare", "--dataset_dir", str(SAMPLE), "--seeds", "a,b"]) == 1
    assert "seeds must be integers" in capsys.readouterr().err
