"""What a researcher reads before running anything: ``--help`` of the bundle runner and of every script, and how to
cite the software."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from monai.bundle import ConfigParser

from bundle.cli import OPTION_HELP, help_text

from .conftest import REPO, run_bundle

CONFIGS = {
    "training": "configs/train.json",
    "inference": "configs/inference.json",
    "evaluation": "['configs/train.json','configs/evaluate.json']",
}
SCRIPTS = [
    ("prepare_data.py",),
    ("export_bundle.py",),
    ("benchmark.py",),
    ("experiments.py", "ablation"),
    ("experiments.py", "folds"),
    ("experiments.py", "compare"),
    ("make_sample_data.py",),
    ("make_demo_checkpoint.py",),
    ("loss_gradients.py",),
]


def test_every_option_the_help_explains_is_a_key_of_the_configs():
    keys = set()
    for name in ("train.json", "inference.json", "evaluate.json"):
        keys |= set(ConfigParser.load_config_file(str(REPO / "configs" / name)))
    assert set(OPTION_HELP) <= keys, sorted(set(OPTION_HELP) - keys)


@pytest.mark.slow
@pytest.mark.parametrize("purpose", CONFIGS)
def test_runner_help_is_one_screen_of_options_with_their_defaults(purpose):
    run_id = ("training",) if purpose == "training" else ()
    proc = run_bundle("run", *run_id, "--config_file", CONFIGS[purpose], "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERROR" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    screen = proc.stdout[proc.stdout.index(f"{purpose.capitalize()} with this bundle") :].rstrip().splitlines()
    assert len(screen) <= 40 and max(len(line) for line in screen) <= 120, screen
    options = {line.split()[0][2:]: line for line in screen if line.startswith("  --")}
    assert set(options) <= set(OPTION_HELP) and "device" in options and "dataset_dir" in options
    if purpose == "training":  # defaults read from the config, also where the config computes them
        assert options["max_epochs"].split()[1] == "50" and options["backbone"].split()[1] == "resnet101"
        assert options["device"].split()[1] == "auto" and options["output_dir"].split()[1] == "runs"
    if purpose == "evaluation":
        assert options["output_dir"].split()[1] == options["eval_dir"].split()[1] == "eval"


def test_help_without_config_files_says_which_to_give():
    assert "give --config_file configs/train.json" in help_text([])


def _entries(help_screen: str) -> dict[str, list[str]]:
    """The flags and positional arguments of a fire help screen, each with its indented lines."""
    entries: dict[str, list[str]] = {}
    current = None
    section = ""
    for line in re.sub(r"\x1b\[[0-9;]*m", "", help_screen).splitlines():  # fire's bold headings
        if line and not line.startswith(" "):
            section, current = line.strip(), None
            continue
        if section not in ("FLAGS", "POSITIONAL ARGUMENTS"):
            continue
        if line.startswith("    ") and not line.startswith("        ") and line.strip():
            current = line.strip()
            entries[current] = []
        elif current and line.strip():
            entries[current].append(line.strip())
    return entries


@pytest.mark.slow
@pytest.mark.parametrize("command", SCRIPTS, ids=[" ".join(c) for c in SCRIPTS])
def test_script_help_describes_every_option_whole(command):
    script, *subcommand = command
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={"PAGER": "cat", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    entries = _entries(proc.stdout + proc.stderr)  # fire writes its help to stderr when not on a terminal
    assert entries, proc.stdout + proc.stderr
    names = {re.sub(r"^-\w, ", "", flag).split("=")[0].lstrip("-").lower() for flag in entries}
    for flag, lines in entries.items():
        described = [line for line in lines if not line.startswith(("Type:", "Default:"))]
        assert described, f"{script} {' '.join(subcommand)}: {flag} has no description"
        default = [line for line in lines if line.startswith("Default:")]
        assert not (default and default[0].endswith("...")), f"{flag}: the default is cut off: {default[0]}"
        # a docstring line naming several arguments ends up as a fragment after the previous one's text
        tail = re.split(r"[.:;)] ", described[-1])[-1]
        fragment = [word.strip(" .") for word in tail.split(",")]
        assert not (len(fragment) > 1 and set(fragment) <= names), f"{flag}: stray fragment {tail!r}"


def test_citation_file_names_this_version_and_the_paper():
    text = (REPO / "CITATION.cff").read_text(encoding="utf-8")
    metadata = json.loads((REPO / "configs" / "metadata.json").read_text())
    assert re.search(r"^cff-version: 1\.2\.0$", text, re.MULTILINE)
    assert re.search(rf'^version: "{re.escape(metadata["version"])}"$', text, re.MULTILINE)
    (doi,) = re.findall(r"DOI:(\S+)", " ".join(metadata["references"]))
    assert f'doi: "{doi}"' in text and "preferred-citation:" in text
    assert "license: Apache-2.0" in text and "Apache License" in (REPO / "LICENSE").read_text()
