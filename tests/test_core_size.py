"""The engine stays in small pieces: no file in core/ over 500 lines, no class over 300."""

import ast
from pathlib import Path

import napari_dinoloc.core as core

CORE = Path(core.__file__).parent


def test_no_engine_file_over_500_lines_and_no_class_over_300():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 20
    long_files = [f"{p.relative_to(CORE)}: {n}" for p in files if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500]
    long_classes = [
        f"{p.relative_to(CORE)}:{node.name}: {node.end_lineno - node.lineno + 1}"
        for p in files for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 300
    ]
    assert long_files == [] and long_classes == []
