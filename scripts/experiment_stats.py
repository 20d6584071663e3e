"""The statistics of the experiments' tables: mean and sample SD over runs, seeds averaged per image, and the paired
per-image difference of two rows (mean, 95 % confidence interval, Wilcoxon signed-rank test).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from scripts.experiment_runs import METRIC_KEYS, NETWORKS, RESOLUTIONS, RunResult, _per_image


def number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def mean_and_sd(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1, like the paper's "St. Dev.") of the finite values; None when
    there are too few (none for the mean, fewer than two for the SD)."""
    numbers = [v for v in map(number, values) if v is not None]
    mean = statistics.fmean(numbers) if numbers else None
    return mean, statistics.stdev(numbers) if len(numbers) >= 2 else None


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


def network_label(network: str, rfe: bool) -> str:
    """The :data:`~scripts.experiment_runs.NETWORKS` label of a (network_name, rfe) pair."""
    return next(label for label, value in NETWORKS.items() if value == (network, bool(rfe)))


def seed_groups(results: Sequence[RunResult], resolution: str) -> list[dict[str, Any]]:
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


def seed_averaged(row: dict[str, Any], resolution: str) -> dict[str, float]:
    """Image name -> IoU averaged over the row's seeds (the images every seed scored)."""
    per_seed = [_per_image(run, resolution, "iou") for run in row["runs"]]
    names = sorted(set.intersection(*(set(p) for p in per_seed))) if per_seed else []
    return {name: statistics.fmean(p[name] for p in per_seed) for name in names}
