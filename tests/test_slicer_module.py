"""Static checks of the Slicer extension (Slicer itself cannot run here): widgets the code uses exist in the .ui,
every file compiles, nothing imports torch or MONAI when Slicer loads the module, and CMake ships every file."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXTENSION = REPO / "slicer_extension"
MODULE = EXTENSION / "SkinLesionSegmentation"
MODULE_FILE = MODULE / "SkinLesionSegmentation.py"
UI_FILE = MODULE / "Resources" / "UI" / "SkinLesionSegmentation.ui"
LIBRARY = MODULE / "SkinLesionSegmentationLib"
sys.path.insert(0, str(MODULE))


def python_files() -> list[Path]:
    return sorted(p for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts)


def ui_widget_names() -> set[str]:
    return {w.get("name") for w in ET.parse(UI_FILE).getroot().iter("widget")}


def test_every_widget_the_module_uses_is_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert len(used) > 20
    assert sorted(used - ui_widget_names()) == []


# Widget classes Slicer's parameterNodeWrapper can bind (slicer/parameterNodeWrapper/guiConnectors.py): floats to
# QDoubleSpinBox or ctkSliderWidget (exact classes), MRML nodes to qMRMLNodeComboBox.
BINDABLE = {"float": {"QDoubleSpinBox", "ctkSliderWidget"}, "node": {"qMRMLNodeComboBox"}}


def test_ui_parameter_names_are_fields_of_the_parameter_node_on_bindable_widgets():
    tree = ast.parse(MODULE_FILE.read_text())
    (node_class,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode")]
    fields = {
        n.target.id: "float" if "float" in ast.unparse(n.annotation) else "node"
        for n in node_class.body
        if isinstance(n, ast.AnnAssign)
    }
    bound = {}
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert set(bound) == set(fields)
    assert all(bound[name] in BINDABLE[kind] for name, kind in fields.items()), bound


def test_mrml_widgets_get_the_scene():
    root = ET.parse(UI_FILE).getroot()
    mrml = {
        w.get("name")
        for w in root.iter("widget")
        if w.get("class") in ("qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget")
    }
    receivers = {
        c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml and mrml == receivers


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(MODULE)))
def test_module_file_compiles(path):
    compile(path.read_text(encoding="utf-8"), str(path), "exec")


def top_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported when the file is imported: module-level statements, including inside if/try blocks."""
    names, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try)):
            todo.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            todo.extend(h for handler in getattr(node, "handlers", []) for h in handler.body)
    return names


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(MODULE)))
def test_no_module_file_imports_torch_or_monai_at_load(path):
    assert not top_level_imports(ast.parse(path.read_text())) & {"torch", "monai", "bundle", "ignite"}


def all_imports(path: Path) -> set[str]:
    """Every absolute module name the file imports, at any depth (``from a.b import c`` gives ``a.b``)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
    return imported


@pytest.mark.parametrize("path", sorted(LIBRARY.glob("*.py")), ids=lambda p: p.name)
def test_library_is_free_of_qt_and_only_the_headless_logic_uses_mrml(path):
    top = {name.split(".")[0] for name in all_imports(path)}
    assert not top & {"qt", "ctk", "PythonQt"}  # headless: Slicer Core runs it
    if path.name != "logic.py":
        assert not top & {"slicer", "vtk"}  # plain Python, tested outside Slicer


# The Slicer version the README and the extension's metadata state as the minimum, and the modules each Slicer
# release gives a scripted module (tests/fixtures/slicer_releases.json, made from Slicer's source by
# tests/fixtures/make_slicer_releases.py).
MINIMUM_SLICER = "5.4"
SLICER_RELEASES = json.loads((REPO / "tests" / "fixtures" / "slicer_releases.json").read_text())["releases"]
# Imported only inside ``try: ... except ModuleNotFoundError`` with a message for the user.
OPTIONAL = {"PyTorchUtils"}


def imports_slicer_lacks(slicer_version: str) -> list[str]:
    """Modules that the module file and the library it runs inside Slicer import and that Slicer lacks."""
    available = set(SLICER_RELEASES[slicer_version]["modules"])
    missing = set()
    for path in [MODULE_FILE, *sorted(LIBRARY.glob("*.py"))]:
        if path.name == "worker.py":
            continue  # runs in the worker's Python, with torch and MONAI (tested against the install plan)
        for name in all_imports(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "SkinLesionSegmentationLib" or top in OPTIONAL:
                continue
            if name not in available and not (top != "slicer" and top in available):
                missing.add(name)
    return sorted(missing)


def test_the_module_imports_only_what_the_minimum_slicer_ships():
    assert SLICER_RELEASES[MINIMUM_SLICER]["python"] == "3.9.10"
    for version in ("5.4", "5.6", "5.8", "5.10", "5.12"):
        assert imports_slicer_lacks(version) == [], version
    # Slicer 5.2 lacks the parameter node wrapper: that is why 5.4 is the minimum.
    assert imports_slicer_lacks("5.2") == ["slicer.parameterNodeWrapper"]
    text = (EXTENSION / "CMakeLists.txt").read_text()
    assert f"find_package(Slicer {MINIMUM_SLICER} REQUIRED)" in text
    assert f"Requires 3D Slicer {MINIMUM_SLICER} or later." in text
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## 3D Slicer extension") :]
    assert f"3D Slicer {MINIMUM_SLICER} or later" in section[: section.index("\n## ", 5)]


TYPE_NAMES = {"str", "int", "float", "bool", "bytes", "dict", "list", "tuple", "None", "Path", "os.PathLike", "type"}
GENERICS = {
    "Mapping",
    "Sequence",
    "Iterable",
    "Iterator",
    "Callable",
    "dict",
    "list",
    "tuple",
    "set",
    "type",
    "Optional",
}


def is_type(node: ast.expr) -> bool:
    if isinstance(node, ast.Subscript):
        return ast.unparse(node.value).split(".")[-1] in GENERICS
    return ast.unparse(node) in TYPE_NAMES


def runtime_unions(tree: ast.Module) -> list[str]:
    """``X | Y`` of types that run when the file is imported or called (aliases, ``isinstance``), and annotations
    too unless ``from __future__ import annotations`` keeps them strings: a TypeError on Python 3.9."""
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body)
    annotations = set()
    if future:
        for node in ast.walk(tree):
            if isinstance(node, (ast.AnnAssign, ast.arg)) and node.annotation is not None:
                annotations.update(id(n) for n in ast.walk(node.annotation))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
                annotations.update(id(n) for n in ast.walk(node.returns))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in annotations:
            if any(is_type(side) for side in (node.left, node.right)):
                found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize(
    "path",
    [MODULE_FILE, *sorted(LIBRARY.glob("*.py")), *sorted((REPO / "bundle").rglob("*.py"))],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_code_that_runs_in_slicers_python_parses_and_imports_on_python_3_9(path):
    """Slicer 5.4-5.8 run Python 3.9: the module, its library and (in the worker, when it runs in Slicer's Python)
    the bundle must parse with 3.9's grammar and evaluate no ``X | Y`` of types."""
    assert runtime_unions(ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9))) == []


def test_runtime_union_check_finds_what_python_3_9_refuses():
    assert runtime_unions(ast.parse("Item = Mapping[str, Any] | str\nx = isinstance(y, int | None)")) == [
        "Mapping[str, Any] | str",
        "int | None",
    ]
    assert (
        runtime_unions(ast.parse("from __future__ import annotations\ndef f(x: int | None) -> str | None: ...")) == []
    )


def test_bundle_selector_picks_folders_and_zips():
    root = ET.parse(UI_FILE).getroot()
    (selector,) = [w for w in root.iter("widget") if w.get("name") == "bundlePathLineEdit"]
    filters = selector.find("property[@name='filters']/set").text
    # ctkPathLineEdit opens a file dialog when Files is among its filters; a folder is the main case.
    assert "Dirs" in filters and "Files" not in filters
    assert "bundleZipButton" in ui_widget_names() and "self.ui.bundleZipButton" in MODULE_FILE.read_text()
    assert {"bundleUrlLineEdit", "bundleSha256LineEdit", "downloadBundleButton"} <= ui_widget_names()


def test_points_are_observed_for_moves_and_the_end_of_a_drag():
    tree = ast.parse((LIBRARY / "logic.py").read_text())
    constants = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.startswith("POINT")
    }
    events = {*constants["POINT_EVENTS"], constants["POINT_MOVED_EVENT"]}
    assert {
        "PointModifiedEvent",
        "PointEndInteractionEvent",
        "PointPositionDefinedEvent",
        "PointRemovedEvent",
    } <= events
    # Exercised on a real markups node by tests/test_slicer_core_logic.py.


def test_terminology_comes_from_the_shipped_term_json():
    from SkinLesionSegmentationLib import results

    term = json.loads(
        (MODULE / "Resources" / "SegmentationCategoryTypeModifier-SkinLesionSegmentation.term.json").read_text()
    )
    assert term["SegmentationCategoryTypeContextName"] == results.TERMINOLOGY_CONTEXT
    (category,) = term["SegmentationCodes"]["Category"]
    (kind,) = category["Type"]
    context, category_code, type_code = results.SKIN_LESION.terminology.split("~")[:3]
    assert context == results.TERMINOLOGY_CONTEXT
    assert category_code == f"SCT^{category['CodeValue']}^{category['CodeMeaning']}"
    assert type_code == f"SCT^{kind['CodeValue']}^{kind['CodeMeaning']}"
    assert [round(c / 255, 3) for c in kind["recommendedDisplayRGBValue"]] == list(results.SKIN_LESION.color)
    # The module loads it into Slicer's Terminologies logic when Slicer has started.
    source = MODULE_FILE.read_text()
    assert 'slicer.app.connect("startupCompleted()", self.loadTerminology)' in source
    assert "logic.load_terminology(slicer.modules.terminologies.logic())" in source


def test_loading_the_library_imports_no_torch():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import SkinLesionSegmentationLib.client, SkinLesionSegmentationLib.bundles, SkinLesionSegmentationLib.imaging,"
        " SkinLesionSegmentationLib.measurements, SkinLesionSegmentationLib.results;"
        "print(sorted(m for m in ('torch', 'monai', 'bundle') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(MODULE)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    return match.group(1).split() if match else []


def test_cmake_lists_every_file_the_module_ships():
    text = (MODULE / "CMakeLists.txt").read_text()
    listed = [
        entry.replace("${MODULE_NAME}", "SkinLesionSegmentation")
        for entry in cmake_list(text, "MODULE_PYTHON_SCRIPTS") + cmake_list(text, "MODULE_PYTHON_RESOURCES")
    ]
    present = sorted(
        str(p.relative_to(MODULE))
        for p in MODULE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
    )
    assert sorted(listed) == present
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text and "add_subdirectory(Testing)" in text
    assert "add_subdirectory(Python)" in (MODULE / "Testing" / "CMakeLists.txt").read_text()
    assert (MODULE / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_extension_metadata():
    text = (EXTENSION / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(Slicer\w+\)", text, re.M)
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "add_subdirectory(SkinLesionSegmentation)" in text
    for name in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
    ):
        assert f"set({name} " in text
    for icon in (EXTENSION / "SlicerSkinLesionSegmentation.png", MODULE / "Resources/Icons/SkinLesionSegmentation.png"):
        with Image.open(icon) as image:
            assert image.format == "PNG" and image.size == (128, 128)


def test_module_has_the_four_classes_and_a_parameter_node():
    tree = ast.parse(MODULE_FILE.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for suffix, base in (
        ("", "ScriptedLoadableModule"),
        ("Widget", "ScriptedLoadableModuleWidget"),
        ("Logic", "ScriptedLoadableModuleLogic"),
        ("Test", "ScriptedLoadableModuleTest"),
    ):
        node = classes[f"SkinLesionSegmentation{suffix}"]
        assert base in {ast.unparse(b) for b in node.bases}
    # The Logic is the headless one (tested on Slicer Core) plus Slicer's parameter node and Python.
    assert "logic.SkinLesionSegmentationLogic" in {ast.unparse(b) for b in classes["SkinLesionSegmentationLogic"].bases}
    # Only the Widget reads Slicer's settings.
    for name, node in classes.items():
        assert ("QSettings" in ast.unparse(node)) == (name == "SkinLesionSegmentationWidget"), name
    decorators = [d.id for d in classes["SkinLesionSegmentationParameterNode"].decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    assert set(classes) == {f"SkinLesionSegmentation{s}" for s in ("", "Widget", "Logic", "Test", "ParameterNode")}
