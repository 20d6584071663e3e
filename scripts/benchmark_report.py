"""The benchmark's report: the targets of issue 11 judged on the measurements, and the markdown tables of
docs/performance.md's generated block (between :data:`BEGIN` and :data:`END`), one renderer per section.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.benchmark_tools import FAST_PATH_OPTIONS, FULL_RESOLUTION, PHOTO, network_label

BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
GPU_NOTE = (
    "Not measured: no GPU was lent to this run; the GPU rows (training images/s with AMP, "
    "inference latency, peak GPU memory) are left empty rather than estimated."
)


def _target(text: str, measured: float | None, limit: float, at_least: bool, unit: str = "×") -> dict[str, Any]:
    met = None if measured is None else (measured >= limit if at_least else measured <= limit)
    return {"target": text, "measured": measured, "limit": limit, "at_least": at_least, "unit": unit, "met": met}


def evaluate_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets, each with the measured value it is judged on (None: not measured in this run)."""
    targets = []
    rows = results.get("networks", {}).get("rows", {})
    for backbone in ("resnet101", "resnet34"):
        row = rows.get(network_label("rfeunet", backbone), {})
        targets.append(
            _target(
                f"RFE U-Net {backbone} MAC/s ≥ 0.8× FlexibleUNet {backbone}'s", row.get("vs_flexibleunet"), 0.8, True
            )
        )
    e2e = {Path(r["photo"]).name: r for r in results.get("end_to_end", {}).get("rows", []) if "skipped" not in r}
    small, large = e2e.get(PHOTO.name, {}), e2e.get(FULL_RESOLUTION.name, {})
    targets.append(
        _target("end to end, 1024×683 photo ≤ 1.25× the forward pass", small.get("end_to_end_vs_forward"), 1.25, False)
    )
    targets.append(
        _target("end to end, 4288×2848 photo ≤ 2× the forward pass", large.get("end_to_end_vs_forward"), 2.0, False)
    )
    targets.append(_target("peak memory, 4288×2848 photo < 2 GB", large.get("peak_rss_mb"), 2048, False, " MiB"))
    targets.append(
        _target(
            "batch inference ≥ 0.8× forward-only throughput",
            results.get("batch", {}).get("batch_vs_forward"),
            0.8,
            True,
        )
    )
    targets.append(
        _target(
            "cached training loader ≥ 3× the training step's images/s",
            results.get("training", {}).get("loader_vs_step"),
            3.0,
            True,
        )
    )
    for row in results.get("fast_path", {}).get("rows", []):
        default = row["options"].get(row["default"] or "", {})
        targets.append(
            _target(
                f"fast path ≥ 1.3× eager, {row['network']} {row['image_size']} px (the bundle's default: "
                f"{row['default']}; fastest here: {row['best']})",
                default.get("speedup"),
                1.3,
                True,
            )
        )
    return targets


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ms(entry: Mapping[str, Any] | None) -> str:
    return "—" if not entry else f"{entry['median_s'] * 1000:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += [
        "| " + " | ".join(_fmt(cell) if not isinstance(cell, str) else cell for cell in row) + " |" for row in rows
    ]
    return lines + [""]


def _header_lines(results: Mapping[str, Any]) -> list[str]:
    """The machine, the versions and how the medians were taken; then the targets and their verdicts."""
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    gpu = "GPU: not measured — no GPU was available to this run." if not machine["gpu"] else f"GPU: {machine['gpu']}."
    out = [
        f"Measured {machine['date']} with `{machine['command'].strip()}`: {machine['cpu']} "
        f"({machine['logical_cpus']} logical CPUs, allowed {machine['cpus_allowed']}), **{machine['threads']} "
        f"thread(s)**, CPU flags {', '.join(machine['cpu_flags']) or 'none of note'}; {versions}. "
        f"Medians of {machine['settings']['repeats']} timed calls after {machine['settings']['warmup']} warm-up "
        "call(s), taken round-robin over the cases compared. " + gpu,
        "",
        "### Targets (issue 11)",
        "",
    ]
    verdicts = [
        [
            t["target"],
            _fmt(t["measured"]) + (t["unit"] if t["measured"] is not None else ""),
            "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**"),
        ]
        for t in results["targets"]
    ]
    return out + _table(["target", "measured", "met"], verdicts)


def ceiling_lines(c: Mapping[str, Any]) -> list[str]:
    """The convolution's MAC/s and the max-pool comparison."""
    return [
        "### Machine ceiling",
        "",
        f"One 3×3 convolution {c['shape']} → {c['shape'][1]} channels: {c['macs'] / 1e9:.2f} GMAC in "
        f"{c['median_s'] * 1000:.1f} ms = **{c['gmacs_per_s']:.1f} GMAC/s**. The RFE U-Net's 5×5 stride-1 "
        f"max-pool of {c['max_pool']['shape']}: torch's kernel {_ms(c['max_pool']['torch'])} ms, the shifted "
        f"maxima of `bundle.networks.blocks.MaxPool2d` {_ms(c['max_pool']['shifted_maxima'])} ms "
        f"({c['max_pool']['speedup']:.1f}× faster, the same values).",
        "",
    ]


def networks_lines(n: Mapping[str, Any]) -> list[str]:
    """One row per network, then where each one's batch-1 time goes."""
    b = n["batch_size"]
    out = [f"### Networks ({n['image_size']}×{n['image_size']}, float32, eager, `torch.inference_mode`)", ""]
    header = [
        *("network", "parameters (M)", "GMAC", "batch 1 (ms)", "GMAC/s", "of ceiling", "vs FlexibleUNet"),
        *(f"batch {b} (images/s)", "time in conv", "conv GMAC/s"),
    ]
    rows = [
        [
            label,
            r["parameters"] / 1e6,
            r["macs"] / 1e9,
            _ms(r["batch1"]),
            _fmt(r["gmacs_per_s"], 1),
            _fmt(r["of_ceiling"]),
            _fmt(r.get("vs_flexibleunet")),
            _fmt(r["images_per_s"]),
            f"{r['convolution_time_share'] * 100:.0f}%",
            _fmt(r["convolution_gmacs_per_s"], 1),
        ]
        for label, r in n["rows"].items()
    ]
    out += _table(header, rows)
    out += [
        "Where the batch-1 time goes (torch.profiler, own CPU time of the largest operators; "
        "`_slow_conv2d_forward` is PyTorch's im2col path, which it picks over oneDNN for 1×1 convolutions on one "
        "thread and for small batch-1 feature maps):",
        "",
    ]
    out += [
        f"- {label}: " + ", ".join(f"`{op}` {share * 100:.0f}%" for op, share in r["top_operators"].items())
        for label, r in n["rows"].items()
    ]
    return out + [""]


def _fast_path_cell(o: Mapping[str, Any]) -> str:
    if "skipped" in o:
        return f"skipped: {o['skipped']}"
    return f"{o['median_s'] * 1000:.1f} ms, **{o['speedup']:.2f}×**, Δ {o['max_abs_logit_difference']:.1e}"


def fast_path_lines(fast_path: Mapping[str, Any]) -> list[str]:
    """One row per option, one column per network and size; then the one-off preparation times."""
    rows = fast_path["rows"]
    out = ["### Fast inference path (RFE U-Net, batch 1; speed-up over plain eager float32)", ""]
    header = ["option"] + [f"{r['network']} {r['image_size']} px" for r in rows]
    default = {r["default"] for r in rows}
    lines = [
        [f"`{option}`" + (" (the bundle's default)" if option in default else "")]
        + [_fast_path_cell(r["options"][option]) for r in rows]
        for option in FAST_PATH_OPTIONS
    ]
    out += _table(header, lines)
    prep = [
        f"{r['network']} {r['image_size']} px: "
        + ", ".join(f"{k} {v['preparation_s']:.1f} s" for k, v in r["options"].items() if v.get("preparation_s"))
        for r in rows
    ]
    scales = ", ".join(f"{r['logit_scale']:.2f}" for r in rows)
    out += [
        f"Δ: largest absolute logit difference from eager (logits of random weights, scale {scales}). "
        f"One-off preparation: {'; '.join(prep)}.",
        "",
    ]
    return out


def training_lines(t: Mapping[str, Any]) -> list[str]:
    """The training step against its loader, and the loader with other worker settings."""
    out = [f"### Training ({t['network']}, {t['image_size']} px, batch {t['batch_size']}, configs/train.json)", ""]
    loader = (
        f"cached loader alone ({t['items']} items of {t['data']}, {t['num_workers']} workers, "
        f"persistent: {_fmt(t['persistent_workers'])})"
    )
    out += _table(
        ["measure", "value"],
        [
            ["one step (forward, loss, backward, Adam), median", f"{t['step']['median_s']:.2f} s"],
            ["step throughput", f"{t['step_images_per_s']:.2f} images/s"],
            [loader, f"{_fmt(t['loader_images_per_s'], 1)} images/s"],
            ["loader ÷ step", f"{_fmt(t['loader_vs_step'], 1)}×"],
            ["loader's first batch of an epoch (worker start)", f"{_fmt(t['loader_first_batch_s'])} s"],
            ["cache fill (decode + resize, once)", f"{t['cache_fill_s']:.1f} s"],
        ],
    )
    header = [
        *("loader over the same cached items", "images/s after the first batch", "first batch (s)"),
        "images/s over whole epochs",
    ]
    variants = [
        [name, _fmt(v["images_per_s"], 1), _fmt(v["first_batch_s"]), _fmt(v["epoch_images_per_s"], 1)]
        for name, v in {"as configured": t["loader"], **t["loader_variants"]}.items()
    ]
    return out + _table(header, variants)


def end_to_end_lines(end_to_end: Mapping[str, Any]) -> list[str]:
    """One row per photograph, with the time of each stage and the peak memory."""
    rows = [r for r in end_to_end["rows"] if "skipped" not in r]
    out = ["### One photograph end to end (`LesionSegmenter.segment`, a fresh process per photo)", ""]
    if rows:
        s = rows[0]["settings"]
        out += [
            f"Network: {s.get('network_name')} {s.get('backbone')} at {s.get('image_size')} px, "
            f"trained weights: {_fmt(s.get('has_weights'))}.",
            "",
        ]
    header = [
        *("photo (W×H)", "end to end (ms)", "forward alone (ms)", "ratio", "decode + preprocess (ms)"),
        *("forward + postprocess (ms)", "write PNG (ms)", "peak RSS (MiB)", "first photo (ms)"),
    ]
    table = [
        [
            f"{Path(r['photo']).name} ({r['photo_size'][0]}×{r['photo_size'][1]})",
            _ms(r["end_to_end"]),
            _ms(r["forward"]),
            f"{r['end_to_end_vs_forward']:.2f}×",
            _ms(r["decode_preprocess"]),
            _ms(r["forward_postprocess"]),
            _ms(r["write"]),
            _fmt(r["peak_rss_mb"], 0),
            f"{r['first_photo_s'] * 1000:.0f}",
        ]
        for r in rows
    ]
    out += _table(header, table)
    return out + [f"Skipped: {r['photo']}: {r['skipped']}" for r in end_to_end["rows"] if "skipped" in r]


def batch_lines(b: Mapping[str, Any]) -> list[str]:
    """The folder's photos/s against forward-only throughput."""
    out = ["### Batch inference over a folder (`SegmentationRunner.run`)", ""]
    if "skipped" in b:
        return out + [f"Skipped: {b['skipped']}", ""]
    row = [b["photos"], b["photos_per_s"], b["forward_photos_per_s"], f"{b['batch_vs_forward']:.2f}×"]
    return out + _table(["photos", "photos/s", "forward-only photos/s (batch 1)", "ratio"], [row])


def slicer_worker_lines(w: Mapping[str, Any]) -> list[str]:
    """The worker's start and requests against the bundle's cold start."""
    out = ["### 3D Slicer worker", ""]
    if "skipped" in w:
        return out + [f"Skipped: {w['skipped']}", ""]
    rows = [
        ["bundle cold start (`monai.bundle run`, one photo, fresh process)", w["bundle_cold_start_s"]],
        ["worker start (load the bundle)", w["worker_start_s"]],
        ["worker, first request", w["worker_first_request_s"]],
        ["worker, warm request (second photo), median", w["worker_warm_request"]["median_s"]],
        ["warm request ÷ cold start", w["warm_vs_cold"]],
    ]
    return out + _table(["measure", "seconds"], rows)


def render_markdown(results: Mapping[str, Any], renderers: Mapping[str, Callable[[Mapping], list[str]]]) -> str:
    """The tables of docs/performance.md's generated block: the header and targets, then each section of
    ``renderers`` (name → the lines of its result) that ran, in that order, and the sections that failed."""
    out = _header_lines(results)
    for name, render in renderers.items():
        if name in results and "error" not in results[name]:
            out += render(results[name])
    out += [
        f"Section {name} failed: {results[name]['error']}" for name in renderers if "error" in results.get(name, {})
    ]
    out += ["### GPU", "", GPU_NOTE, ""]
    return "\n".join(out).rstrip() + "\n"


def write_markdown(path: Path, block: str) -> None:
    """Replace the generated block of ``path`` (between BEGIN and END), or write a file holding only it."""
    from bundle.files import write_text_atomically

    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    generated = f"{BEGIN}\n{block}{END}\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + generated + ("\n" + after if after else "")
    else:
        text = "# Performance\n\n" + generated
    write_text_atomically(path, text)
