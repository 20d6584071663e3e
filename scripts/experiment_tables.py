"""The experiments' tables: one row per run (or per group of seeds), markdown for stdout and ``results.md``, and the
same rows as JSON and CSV.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle.files import write_text_atomically
from scripts.experiment_runs import METRIC_KEYS, RESOLUTIONS, RunResult, format_duration
from scripts.experiment_stats import mean_and_sd, network_label, number, paired_difference, seed_averaged


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` of the row, shown as ``kind`` (text, count, percent, pixels or duration)."""

    header: str
    key: str
    kind: str = "percent"


def _cell(row: dict[str, Any], column: Column, digits: int) -> str:
    value = row.get(column.key)
    if column.kind == "text":
        return str(value)
    if column.kind == "duration":
        return format_duration(value)
    found = number(value)
    if found is None:
        return "failed" if row.get("status") == "failed" else "n/a"
    if column.kind == "count":
        return str(int(found))
    return f"{100 * found if column.kind == 'percent' else found:.{digits}f}"


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


def epochs_text(max_epochs: int) -> str:
    return f"{max_epochs} epoch{'' if int(max_epochs) == 1 else 's'}"


def noise_columns(noise_std: float) -> list[Column]:
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


def write_report(out: Path, stem: str, markdown: str, content: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """Write ``<out>/<stem>.md`` (``markdown``), ``.json`` (``content``) and ``.csv`` (``rows``), each whole or not
    at all."""
    write_text_atomically(out / f"{stem}.md", markdown)
    write_text_atomically(out / f"{stem}.json", json.dumps(content, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(out / f"{stem}.csv", buffer.getvalue())
    _say(f"wrote {out / stem}.md, .json, .csv")


def _say_failures(report: ExperimentReport) -> None:
    if report.failed:
        _say(f"{len(report.failed)} of {len(report.results)} runs failed:")
        for failed in report.failed:
            _say(failed.failure or "")


def runs_report(
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
    write_report(out, "results", markdown, content, rows)
    outcome = ExperimentReport(results, markdown, out)
    _say_failures(outcome)
    return outcome


def _mean_sd_cell(row: dict[str, Any], key: str, percent: bool = True) -> str:
    mean, sd = row.get(key), row.get(f"{key}_sd")
    if mean is None:
        return "failed"
    scale = 100.0 if percent else 1.0
    return f"{scale * mean:.2f} ± {'n/a' if sd is None else f'{scale * sd:.2f}'}"


COMPARED_METRICS = (("mIoU", "mIoU"), ("mDice", "mDice"), ("mIoU*", "IoU_star"), ("mDice*", "Dice_star"),
                    ("TJ", "thresholded_jaccard"))  # fmt: skip


def comparison_lines(groups: Sequence[dict[str, Any]], resolution: str) -> list[str]:
    """The comparison's table: one line per (network, loss), the seeds' mean ± SD of each metric at
    ``resolution``, HD95, mIoU at the other resolution and the training time."""
    other = "working" if resolution == "original" else "original"
    headers = [
        *("Network", "Loss", "Seeds", *(f"{h} ({resolution})" for h, _ in COMPARED_METRICS)),
        *(f"HD95 px ({resolution})", f"mIoU ({other})", "Training time"),
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in groups:
        seeds = str(len(row["seeds"])) + (f" ({row['n_failed']} failed)" if row["n_failed"] else "")
        cells = [row["network"], row["loss"], seeds]
        cells += [_mean_sd_cell(row, f"{resolution}_{key}") for _, key in COMPARED_METRICS]
        cells += [
            _mean_sd_cell(row, f"{resolution}_HD95", percent=False),
            _mean_sd_cell(row, f"{other}_mIoU"),
            format_duration(row["train_seconds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_lines(groups: Sequence[dict[str, Any]], resolution: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The paired per-image IoU differences of every scored row against the best one (IoU averaged over seeds
    per image): the table's lines and the differences; nothing when fewer than two rows were scored."""
    scored = [row for row in groups if row["runs"]]
    if len(scored) < 2:
        return [], []
    best = seed_averaged(scored[0], resolution)
    lines = [
        "",
        f"Paired per-image IoU differences ({resolution} size) against the best row, "
        f"{scored[0]['network']} + {scored[0]['loss']} (IoU averaged over seeds per image; "
        "negative = worse than the best):",
        "",
        "| Network | Loss | mean ΔIoU (pp) | 95% CI (pp) | Wilcoxon p | images better / worse |",
        "|---|---|---|---|---|---|",
    ]
    paired = []
    for row in scored[1:]:
        scores = seed_averaged(row, resolution)
        names = sorted(set(best) & set(scores))
        d = paired_difference([scores[n] for n in names], [best[n] for n in names])
        paired.append({"network": row["network"], "loss": row["loss"], **d})
        lines.append(
            f"| {row['network']} | {row['loss']} | {100 * d['mean']:+.2f} | "
            f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}] | {d['wilcoxon_p']:.3g} | "
            f"{d['better']} / {d['worse']} |"
        )
    return lines, paired
