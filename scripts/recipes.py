"""Training recipes side by side, one change at a time: which part of a recipe costs or gains accuracy.

Each row of a rows file is one training of the bundle (a network, a datalist and extra bundle options over a common
budget); every row is trained once in ``<out>/<row>`` and evaluated on the test split, and the table compares each
row with the reference row photo by photo (paired IoU differences: mean, 95 % CI, Wilcoxon p, images better /
worse), as ``scripts/experiments.py compare`` does for networks and losses. Runs are reused when their options are
unchanged, so the table can be rebuilt and extended. Example (the model card's diagnosis)::

    python -m scripts.recipes --rows docs/diagnosis_rows.json --dataset_dir data/isic2017_256 \\
        --out runs/diagnosis --report diagnosis

A rows file::

    {"common": {"backbone": "resnet34", "loss": "dicece", "max_epochs": 8, "image_size": 128, "batch_size": 8,
                "seed": 0},
     "reference": "plain",
     "rows": {"plain": {"change": "the plain loop's recipe", "datalist": "datalist_all2000.json",
                        "extra": "--augment flips --model_selection last"},
              "plain_rotate": {"change": "+ rotations", "datalist": "datalist_all2000.json",
                               "extra": "--augment flips,rotate --model_selection last"}}}

Datalists are relative to ``--dataset_dir``; ``network`` is a label of ``scripts/experiments.py``'s networks; a row
may set its own value of a ``common`` key (e.g. ``"max_epochs": 8``) when that is the change it measures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import fire

from bundle.files import write_text_atomically
from scripts.experiments import (
    NETWORKS,
    RunSpec,
    _extra_args,
    _per_image,
    format_duration,
    paired_difference,
    train_and_evaluate,
)

COMMON_KEYS = ("backbone", "loss", "max_epochs", "image_size", "batch_size", "seed")
METRICS = (("mIoU", "mIoU"), ("mDice", "mDice"), ("TJ", "thresholded_jaccard"))


def _specs(rows_file: str, dataset_dir: str, num_workers: int) -> tuple[dict[str, Any], dict[str, RunSpec]]:
    plan = json.loads(Path(rows_file).read_text(encoding="utf-8"))
    common = {key: plan["common"][key] for key in COMMON_KEYS}
    root = Path(dataset_dir).expanduser().resolve()
    specs = {}
    for name, row in plan["rows"].items():
        label = row.get("network", "rfeunet")
        if label not in NETWORKS:
            raise ValueError(f"row {name}: unknown network {label!r}; choose from {', '.join(NETWORKS)}.")
        datalist = str((root / row["datalist"]).resolve()) if row.get("datalist") else ""
        settings = {**common, **{key: row[key] for key in COMMON_KEYS if key in row}}  # a row may change one
        specs[name] = RunSpec(
            name=name,
            dataset_dir=str(root),
            datalist=datalist,
            eval_key="test",
            num_workers=int(num_workers),
            extra=_extra_args(row.get("extra", "")),
            network=NETWORKS[label][0],
            rfe=NETWORKS[label][1],
            **settings,
        )
    if plan["reference"] not in specs:
        raise ValueError(f"the reference row {plan['reference']!r} is not one of the rows.")
    return plan, specs


def main(
    rows: str,
    dataset_dir: str,
    out: str = "runs/recipes",
    report: str = "recipes",
    num_workers: int = 0,
    resolution: str = "original",
    only: str = "",
) -> int:
    """Train and evaluate every row of ``rows`` (or those named in ``only``, comma-separated), then write
    ``<out>/<report>.md`` and ``.json`` with the rows that have results.

    Args:
        rows: the rows file (see the module's docstring).
        dataset_dir: the data folder the rows' datalists are relative to.
        out: the experiment folder (one sub-folder per row).
        report: file stem of the table.
        num_workers: DataLoader workers of each training (speed only).
        resolution: ``original`` (each photo's stored size) or ``working``.
        only: train only these rows now; the table still shows every row already evaluated.
    """
    plan, specs = _specs(rows, dataset_dir, num_workers)
    out_dir = Path(out).expanduser().resolve()
    names = only.split(",") if isinstance(only, str) else list(only)  # fire turns "a,b" into a tuple
    wanted = [str(n).strip() for n in names if str(n).strip()] or list(specs)
    for name in wanted:
        train_and_evaluate(specs[name], out_dir / name, prefix=f"[{name}]")
    done = {name: spec for name, spec in specs.items() if (out_dir / name / "eval" / "metrics.json").is_file()}
    results = {name: train_and_evaluate(spec, out_dir / name) for name, spec in done.items()}  # reused: reads
    reference = plan["reference"]
    lines = [
        "| Row | Change | " + " | ".join(f"{h} ({resolution})" for h, _ in METRICS) + " | ΔIoU vs "
        f"{reference} (pp) | 95% CI | Wilcoxon p | better / worse | Training time |",
        "|---|---|" + "---|" * (len(METRICS) + 5),
    ]
    base = _per_image(results[reference], resolution, "iou") if reference in results else {}
    table = []
    for name, result in results.items():
        summary = result.metrics["clean"][resolution]
        cells = [f"{100 * summary[key]:.2f}" for _, key in METRICS]
        row = {"row": name, "change": plan["rows"][name].get("change", ""), "summary": summary}
        if base and name != reference:
            scores = _per_image(result, resolution, "iou")
            names = sorted(set(base) & set(scores))
            d = paired_difference([scores[n] for n in names], [base[n] for n in names])
            row["paired"] = d
            cells += [
                f"{100 * d['mean']:+.2f}",
                f"[{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]",
                f"{d['wilcoxon_p']:.3g}",
                f"{d['better']} / {d['worse']}",
            ]
        else:
            cells += ["(reference)" if name == reference else "n/a", "", "", ""]
        cells.append(format_duration(result.train_seconds))
        lines.append(f"| {name} | {row['change']} | " + " | ".join(cells) + " |")
        table.append(row)
    common = ", ".join(f"{k} {plan['common'][k]}" for k in COMMON_KEYS)
    markdown = f"# Recipes on {dataset_dir}, test split ({common})\n\n" + "\n".join(lines) + "\n"
    write_text_atomically(out_dir / f"{report}.md", markdown)
    write_text_atomically(out_dir / f"{report}.json", json.dumps({"plan": plan, "rows": table}, indent=2) + "\n")
    print(markdown, end="", flush=True)
    failed = [r for r in results.values() if r.failure]
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(fire.Fire(main, serialize=lambda _: None))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
