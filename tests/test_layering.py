"""How the code is laid out, read from the source: no import cycle in ``bundle/``, only the CLI layer prints or exits,
scripts import packages instead of editing ``sys.path``, files and functions short enough to read, and the configs
wiring rather than logic (the count of their ``"$"`` expressions)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

BUNDLE = REPO / "bundle"
SCRIPTS = REPO / "scripts"
CLI_LAYER = {BUNDLE / "cli.py"}
MAX_SCRIPT_LINES = 600
MAX_FUNCTION_LINES = 80
# issue 21: at most 60 % of the 135 "$" expressions the configs held when it was filed
MAX_CONFIG_EXPRESSIONS = 81


def _modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` (a package is named by its ``__init__``)."""
    modules = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports, at any level of the file (function-level imports count:
    they run too), and the packages a module's import runs first (importing ``a.b.c`` runs ``a/b/__init__``)."""
    modules = _modules(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                parts = target.split(".")
                for end in range(1, len(parts) + 1):  # the packages on the way, then the module
                    prefix = ".".join(parts[:end])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as its modules in order (first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state and (cycle := visit(other, [*path, other])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_package_init(tmp_path):
    """The checks below are only as good as the graph: a cycle through a package's ``__init__`` is one."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub.leaf import X\n")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.heavy import Y\n")
    (package / "sub" / "heavy.py").write_text("import pkg.a\n")
    (package / "sub" / "leaf.py").write_text("X = 1\n")
    cycle = find_cycle(import_graph(package))
    assert cycle is not None and cycle[0] == cycle[-1] and {"pkg.a", "pkg.sub"} <= set(cycle)
    (package / "sub" / "__init__.py").write_text("")
    assert find_cycle(import_graph(package)) is None


def test_no_import_cycle_in_the_bundle_package():
    graph = import_graph(BUNDLE)
    assert "bundle.networks.registry" in graph["bundle.checkpoint"]  # the graph sees the real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_network_registry_is_a_leaf():
    assert import_graph(BUNDLE)["bundle.networks.registry"] == set()


def _calls(path: Path) -> list[tuple[int, str]]:
    """(line, what) of each print, sys.exit, exit/quit and raise SystemExit in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("print", "exit", "quit"):
                found.append((node.lineno, func.id))
            elif (
                isinstance(func, ast.Attribute)
                and func.attr in ("exit", "_exit")
                and ast.unparse(func.value)
                in (
                    "sys",
                    "os",
                )
            ):
                found.append((node.lineno, ast.unparse(func)))
        elif isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc):
            found.append((node.lineno, "raise SystemExit"))
    return found


def test_only_the_cli_layer_prints_or_exits():
    offenders = [
        f"{path.relative_to(REPO)}:{line} {what}"
        for path in sorted(BUNDLE.rglob("*.py"))
        if path not in CLI_LAYER
        for line, what in _calls(path)
    ]
    assert offenders == [], offenders
    assert {what for _, what in _calls(BUNDLE / "cli.py")} >= {"print", "raise SystemExit"}  # the finder sees them


def _sys_path_edits(source: str) -> list[int]:
    """Lines that change ``sys.path``: a call of one of its methods that modify it, or an assignment to it."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if ast.unparse(node.func.value) == "sys.path" and node.func.attr in (
                *("insert", "append", "extend", "remove", "pop", "clear"),
            ):
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(ast.unparse(t).startswith("sys.path") for t in targets):
                lines.append(node.lineno)
    return sorted(lines)


def test_the_sys_path_finder_sees_every_kind_of_edit():
    edits = "import sys\nsys.path.insert(0, 'x')\nsys.path[0] = 'y'\nsys.path += ['z']\nprint(sys.path)\n"
    assert _sys_path_edits(edits) == [2, 3, 4]
    assert _sys_path_edits('text = "sys.path.insert(0, here)"\n') == []  # a string that tells a user is no edit


def test_scripts_do_not_edit_sys_path():
    offenders = {
        path.name: lines for path in sorted(SCRIPTS.glob("*.py")) if (lines := _sys_path_edits(path.read_text()))
    }
    assert offenders == {}


@pytest.mark.parametrize("script", sorted(p.stem for p in SCRIPTS.glob("*.py") if p.stem != "__init__"))
def test_every_script_imports_as_a_module_of_the_repository(script):
    """``python -m scripts.<name>`` from the repository root, as the README writes it: ``scripts`` and ``bundle``
    import from the working directory, nothing else on the path."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import scripts.{script}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def _long_functions(path: Path) -> list[str]:
    return [
        f"{path.parent.name}/{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_files_and_functions_short_enough_to_read(tmp_path):
    long_scripts = [
        f"{path.name} ({count} lines)"
        for path in sorted(SCRIPTS.glob("*.py"))
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_SCRIPT_LINES
    ]
    assert long_scripts == []
    long_functions = [line for root in (BUNDLE, SCRIPTS) for path in sorted(root.rglob("*.py")) for line in
                      _long_functions(path)]  # fmt: skip
    assert long_functions == []
    (tmp_path / "probe.py").write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert len(_long_functions(tmp_path / "probe.py")) == 1  # one line over: found


def test_configs_are_wiring():
    """``grep -c '"\\$' configs/*.json``, summed: the configs' Python expressions (imports included)."""
    count = sum(
        len(re.findall(r'"\$', line)) > 0
        for path in sorted((REPO / "configs").glob("*.json"))
        for line in path.read_text(encoding="utf-8").splitlines()
    )
    assert 0 < count <= MAX_CONFIG_EXPRESSIONS, count
    for name in ("train.json", "evaluate.json", "inference.json"):
        text = (REPO / "configs" / name).read_text(encoding="utf-8")
        assert "import glob" not in text and "import ignite" not in text  # nothing imported that nothing uses
    assert "print(" not in (REPO / "configs" / "multi_gpu_inference.json").read_text()
