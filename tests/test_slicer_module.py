"""Static checks of the Slicer extension (Slicer itself cannot run here): widgets the code uses exist in the .ui,
every file compiles, nothing imports torch or MONAI when Slicer loads the module, and CMake ships every file."""

from __future__ import annotations

import ast
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


@pytest.mark.parametrize("path", sorted(LIBRARY.glob("*.py")), ids=lambda p: p.name)
def test_library_is_free_of_slicer_qt_vtk_ctk(path):
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"slicer", "qt", "vtk", "ctk", "PythonQt"}


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
        assert base in {b.id for b in node.bases if isinstance(b, ast.Name)}
    decorators = [d.id for d in classes["SkinLesionSegmentationParameterNode"].decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    assert set(classes) == {f"SkinLesionSegmentation{s}" for s in ("", "Widget", "Logic", "Test", "ParameterNode")}
