"""The layout rules of docs/architecture.md, checked: small modules, short functions (or a reason
given), and one home for the ONNX version pins and the format's decode."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY_SOURCES = sorted([*ROOT.glob("micronet_onnx/**/*.py"), *ROOT.glob("export/*.py")])
CPP_SOURCES = sorted(p for p in ROOT.glob("runtime_ops/**/*") if p.suffix in (".cc", ".h", ".inc")
                     and "build" not in p.parts and "third_party" not in p.parts)
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
REASON = "Why long:"  # a docstring (or, in C++, a comment above the function) that says why it is long


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.mark.parametrize("path", PY_SOURCES + CPP_SOURCES, ids=_rel)
def test_module_size(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{_rel(path)} has {lines} lines (at most {MAX_MODULE_LINES}): split it"


@pytest.mark.parametrize("path", PY_SOURCES, ids=_rel)
def test_function_length(path):
    tree = ast.parse(path.read_text())
    long = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and REASON not in (ast.get_docstring(node) or ""):
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{_rel(path)}: functions over {MAX_FUNCTION_LINES} lines without '{REASON}': {long}"


def test_onnx_pins_live_in_versions_py():
    """Opset and IR literals of the default domain appear only in micronet_onnx/format/versions.py."""
    pattern = re.compile(r"make_opsetid\(\s*[\"']{2}\s*,\s*\d+|ir_version\s*=\s*\d+")
    home = ROOT / "micronet_onnx" / "format" / "versions.py"
    offenders = [f"{_rel(p)}:{i}" for p in PY_SOURCES if p != home
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, f"ONNX version literals outside {_rel(home)}: {offenders}"


def test_bits_are_unpacked_in_one_place():
    """Only the format spec unpacks the mask and sign bits (np.unpackbits): one decoder."""
    home = ROOT / "micronet_onnx" / "format" / "spec.py"
    offenders = [_rel(p) for p in PY_SOURCES if p != home and "unpackbits" in p.read_text()]
    assert not offenders, f"bit unpacking outside {_rel(home)}: {offenders}"


def test_every_subpackage_is_packaged():
    """A subpackage missing from pyproject.toml's list works in the editable checkout but is absent
    from a built wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"micronet_onnx." + p.parent.name for p in ROOT.glob("micronet_onnx/*/__init__.py")}
    found |= {"micronet_onnx", "micronet_onnx.export"}
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
